"""What the plaintext and CKKS schemes share: a round in which each client uploads one
message, on a configuration that names the cohort.

``CohortConfig`` is the common part of their configurations (round id, nonce, cohort,
dimension, weight bound, minimum cohort, task hash; its hash is the ``config_id`` every later
message carries). ``UploadServer`` keeps the bookkeeping both servers need, as masking's
server does: who is expected, who answered, who was dropped when and why, and it never raises
because of a client.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, cast

from secagg.errors import DecodeError, DropReason, RoundAborted, UsageError
from secagg.protocol.codec import DIGEST_BYTES, MAX_ID, NONCE_BYTES, Message, Reader, Writer, decode
from secagg.protocol.stages import Drop, Stage, missed

__all__ = ["CohortConfig", "UploadServer"]


@dataclass(frozen=True)
class CohortConfig:
    """The fields every upload-scheme configuration starts with. A concrete configuration is
    ``class XConfig(Message, CohortConfig)`` with its own ``TAG`` (listed in the codec's
    ``TAGS``), ``DIRECTION``, ``STAGE`` and ``_write``."""

    SCHEME_LABEL: ClassVar[bytes] = b""
    # A concrete configuration declares OPENS_ROUND = True itself: Message comes first in its
    # bases, so a value here would be hidden by Message's.

    def terms(self) -> str:
        """What a client agrees to by running this round, in the words of its audit."""
        return (
            f"{self._scheme_terms()}, cohort {len(self.client_ids)}, min cohort {self.min_cohort}"
        )

    def _scheme_terms(self) -> str:
        return self.SCHEME_LABEL.decode()

    round_id: int
    nonce: bytes
    client_ids: tuple[int, ...]
    dim: int
    max_weight: int
    min_cohort: int
    task_hash: bytes
    config_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = tuple(self.client_ids)
        object.__setattr__(self, "client_ids", ids)
        if any(b <= a for a, b in itertools.pairwise(ids)) or not ids:
            raise UsageError("client ids must be strictly increasing and not empty")
        if any(not 0 <= i <= MAX_ID for i in ids):
            raise UsageError("client ids must be u32")
        if not 0 <= self.round_id < 2**64:
            raise UsageError("round_id must be a u64")
        if len(self.nonce) != NONCE_BYTES or len(self.task_hash) != DIGEST_BYTES:
            raise UsageError("nonce must be 16 bytes and task_hash 32 bytes")
        if not 1 <= self.dim <= MAX_ID - 1 or not 1 <= self.max_weight < 2**31:
            raise UsageError("dim or max_weight out of range")
        if not 1 <= self.min_cohort <= len(ids):
            raise UsageError(f"min_cohort must be in 1..{len(ids)}")
        object.__setattr__(
            self,
            "config_id",
            hashlib.sha256(
                b"secagg/v1/config/" + self.SCHEME_LABEL + b"\x00" + cast(Message, self).encode()
            ).digest(),
        )

    @property
    def cohort(self) -> frozenset[int]:
        return frozenset(self.client_ids)

    def _write_common(self, w: Writer) -> None:
        w.u64(self.round_id)
        w.fixed(self.nonce, NONCE_BYTES)
        w.ids(self.client_ids)
        w.u32(self.dim)
        w.u32(self.max_weight)
        w.u32(self.min_cohort)
        w.fixed(self.task_hash, DIGEST_BYTES)

    @staticmethod
    def _read_common(r: Reader) -> tuple[int, bytes, tuple[int, ...], int, int, int, bytes]:
        """The common fields, in the order of the constructor's first arguments."""
        return (
            r.u64(),
            r.fixed(NONCE_BYTES),
            r.ids(),
            r.u32(),
            r.u32(),
            r.u32(),
            r.fixed(DIGEST_BYTES),
        )


class UploadServer:
    """Bookkeeping of a round of upload stages; subclasses take messages and close stages."""

    EXPECTED: ClassVar[Mapping[Stage, type[Message]]] = {}

    def __init__(self, config: CohortConfig) -> None:
        self.config = config
        self._stage = Stage.UPLOAD
        self._expected: set[int] = set(config.client_ids)
        self._received: dict[int, Message] = {}
        self._drops: dict[int, Drop] = {}
        self._abort: RoundAborted | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stage={self._stage.value})"

    @property
    def stage(self) -> Stage:
        return self._stage

    @property
    def done(self) -> bool:
        return self._stage in (Stage.COMPLETED, Stage.ABORTED)

    @property
    def drops(self) -> Mapping[int, Drop]:
        return dict(self._drops)

    @property
    def abort_reason(self) -> RoundAborted | None:
        return self._abort

    def start(self) -> dict[int, Message]:
        return dict.fromkeys(self.config.client_ids, cast(Message, self.config))

    def waiting_for(self) -> frozenset[int]:
        return frozenset(self._expected - self._received.keys() - self._drops.keys())

    def drop(self, client_id: int, reason: DropReason, detail: str = "") -> None:
        if client_id in self._drops or client_id not in self.config.cohort or self.done:
            return
        self._drops[client_id] = Drop(client_id, self._stage, reason, detail)

    def receive(self, sender: int, data: Message | bytes) -> None:
        """Take one message from ``sender`` (an authenticated id); never raises for bad input."""
        if sender not in self._expected or sender in self._drops or self.done:
            return
        try:
            message = data if isinstance(data, Message) else decode(data)
        except DecodeError as exc:
            self.drop(sender, DropReason.MALFORMED, str(exc))
            return
        expected = self.EXPECTED[self._stage]
        if not isinstance(message, expected):
            self.drop(sender, DropReason.WRONG_STAGE, f"sent {type(message).__name__}")
            return
        if getattr(message, "config_id", None) != self.config.config_id:
            self.drop(sender, DropReason.WRONG_SESSION, "message from another round")
            return
        if getattr(message, "client_id", None) != sender:
            self.drop(sender, DropReason.MALFORMED, "message claims another sender id")
            return
        if sender in self._received:
            return  # the first one counts; the scheme has already used it
        kept = self._take(sender, message)
        if kept is not None:
            self._received[sender] = kept

    @property
    def attempt(self) -> int | None:
        return None  # one upload: nothing to agree on first

    @property
    def threshold_margin(self) -> int | None:
        return None  # no secret is shared: no threshold

    def close_stage(self) -> dict[int, Message]:
        if self.done:
            raise UsageError(f"the round has already ended ({self._stage.value})")
        for u in self.waiting_for():
            self.drop(u, missed(self._stage))
        # A client dropped after its upload arrived (say, it disconnected) is in the sum.
        live = set(self._received)
        try:
            return self._close(live)
        except RoundAborted as exc:
            self._stage = Stage.ABORTED
            self._abort = exc
            self._forget()
            raise

    def _advance(self, stage: Stage, expected: set[int]) -> None:
        self._stage = stage
        self._expected = expected
        self._received = {}

    def _take(self, sender: int, message: Message) -> Message | None:
        """Use ``message`` and return what to keep of it until the stage closes, or None when
        its sender was dropped. Keep no payload already used: a stage of thousands of uploads
        must not hold them all."""
        raise NotImplementedError

    def _close(self, live: set[int]) -> dict[int, Message]:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop whatever was accumulated: an aborted round reveals nothing."""
