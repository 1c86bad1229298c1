"""Plaintext FedAvg: every client sends its update as float32 and its weight. The baseline
every other scheme is measured against, and the one that protects nothing: the server sees
each update. It runs in process only (``secagg simulate``, ``secagg compare``); the service's
wire schema has no frame for it and its client never runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    AbortReason,
    ClientAbort,
    DropReason,
    InputError,
    RoundAborted,
    UsageError,
)
from secagg.hazmat.randomness import Randomness
from secagg.protocol.codec import Direction, Message, Reader, Writer
from secagg.protocol.runner import Aggregate
from secagg.protocol.stages import Stage
from secagg.schemes.base import Disclosure, RoundOpening, Scheme, SchemeFacts
from secagg.schemes.registry import SchemeKind
from secagg.schemes.upload import CohortConfig, UploadServer

if TYPE_CHECKING:
    from secagg.dp.calibrate import DpPlan
    from secagg.hazmat.keys import Ed25519SigningKey
    from secagg.hazmat.prg import ApplyMasks

__all__ = ["PlainConfig", "PlainUpdate", "PlaintextScheme"]


@dataclass(frozen=True)
class PlainConfig(Message, CohortConfig):
    """A plaintext round: the cohort and the dimension."""

    TAG: ClassVar[int] = 24
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.UPLOAD
    OPENS_ROUND: ClassVar[bool] = True
    SCHEME_LABEL: ClassVar[bytes] = b"plaintext"

    def _write(self, w: Writer) -> None:
        self._write_common(w)

    @classmethod
    def _read(cls, r: Reader) -> PlainConfig:
        return cls(*cls._read_common(r))


@dataclass(frozen=True)
class PlainUpdate(Message):
    """A client's update as it is: float32 values and the weight."""

    TAG: ClassVar[int] = 25
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.UPLOAD

    config_id: bytes = field(repr=False)
    client_id: int
    weight: int
    values: bytes = field(repr=False)  # float32, little-endian

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, 32)
        w.u32(self.client_id)
        w.u32(self.weight)
        w.blob(self.values)

    @classmethod
    def _read(cls, r: Reader) -> PlainUpdate:
        return cls(r.fixed(32), r.u32(), r.u32(), r.blob())


class PlaintextClient:
    def __init__(self, config: PlainConfig, client_id: int) -> None:
        if client_id not in config.cohort:
            raise UsageError(f"client {client_id} is not in the round's cohort")
        self.config = config
        self.client_id = client_id
        self._input: tuple[NDArray[np.float32], int] | None = None
        self._sent = False

    @property
    def clipped(self) -> int:
        return 0  # nothing is clipped: the baseline is the exact mean

    def set_input(self, values: NDArray[np.floating], weight: int = 1) -> None:
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (self.config.dim,) or not np.all(np.isfinite(array)):
            raise InputError(f"the update must be {self.config.dim} finite values")
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise InputError("the weight must be an int")
        if not 0 <= weight <= self.config.max_weight:
            raise InputError(f"the weight {weight} is outside [0, {self.config.max_weight}]")
        self._input = (array.astype("<f4"), int(weight))

    def needs_input(self, message: Message) -> bool:
        return isinstance(message, PlainConfig)

    def receive(self, message: Message | bytes) -> Message | None:
        if message != self.config or self._sent:
            raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, "a plaintext client only uploads")
        if self._input is None:
            raise UsageError("set_input must be called before the upload")
        values, weight = self._input
        self._input = None  # sent: a process running thousands of clients must not keep it
        self._sent = True
        return PlainUpdate(self.config.config_id, self.client_id, weight, values.tobytes())


class PlaintextServer(UploadServer):
    """Sums the updates as they arrive (O(dim) memory)."""

    EXPECTED: ClassVar = {Stage.UPLOAD: PlainUpdate}

    def __init__(self, config: PlainConfig) -> None:
        super().__init__(config)
        self._sum = np.zeros(config.dim, dtype=np.float64)
        self._weight = 0
        self._included: tuple[int, ...] = ()

    def _take(self, sender: int, message: Message) -> Message | None:
        assert isinstance(message, PlainUpdate)
        if len(message.values) != 4 * self.config.dim or message.weight > self.config.max_weight:
            self.drop(sender, DropReason.WRONG_LENGTH, "not dim float32 values and a weight")
            return None
        values = np.frombuffer(message.values, dtype="<f4").astype(np.float64)
        if not np.all(np.isfinite(values)):
            self.drop(sender, DropReason.MALFORMED, "NaN or infinity")
            return None
        self._sum += message.weight * values
        self._weight += message.weight
        # The update is in the sum; keep only that it arrived (and its weight).
        return PlainUpdate(message.config_id, sender, message.weight, b"")

    def _close(self, live: set[int]) -> dict[int, Message]:
        if len(live) < self.config.min_cohort or self._weight == 0:
            raise RoundAborted(Stage.UPLOAD, f"{len(live)} updates; the round needs a weight")
        self._included = tuple(sorted(live))
        self._stage = Stage.COMPLETED
        return {}

    def _forget(self) -> None:
        self._sum[:] = 0.0

    def aggregate(self) -> Aggregate:
        if self._stage is not Stage.COMPLETED:
            raise UsageError(f"no result: the round is at stage {self._stage.value}")
        return Aggregate(self._included, float(self._weight), self._sum / self._weight, 0.0)


@dataclass(frozen=True)
class PlaintextScheme:
    """Plaintext FedAvg over ``dim`` values, weights up to ``max_weight``."""

    dim: int
    max_weight: int = 1
    min_cohort: int = 1

    @property
    def kind(self) -> SchemeKind:
        return SchemeKind.PLAINTEXT

    def reference(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        return np.asarray(values, dtype=np.float64)  # the baseline sends the update as it is

    def epsilon(self, included: int) -> float | None:
        del included
        return None

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (Stage.UPLOAD,)

    def round_config(
        self,
        cohort: Sequence[int],
        *,
        nonce: bytes,
        round_id: int = 0,
        task_hash: bytes = bytes(32),
    ) -> PlainConfig:
        return PlainConfig(
            round_id=round_id,
            nonce=nonce,
            client_ids=tuple(sorted(cohort)),
            dim=self.dim,
            max_weight=self.max_weight,
            min_cohort=self.min_cohort,
            task_hash=task_hash,
        )

    def server(self, config: RoundOpening) -> PlaintextServer:
        assert isinstance(config, PlainConfig)
        return PlaintextServer(config)

    def check(self, config: RoundOpening, client_id: int) -> None:
        if not isinstance(config, PlainConfig) or config.dim != self.dim:
            raise ClientAbort(AbortReason.PARAMETER_MISMATCH, "not this deployment's round")
        if client_id not in config.cohort:
            raise ClientAbort(AbortReason.UNKNOWN_ID, "this client is not in the cohort")

    def client(self, config: RoundOpening, client_id: int, rng: Randomness) -> PlaintextClient:
        del rng  # nothing is random about sending one's update
        assert isinstance(config, PlainConfig)
        return PlaintextClient(config, client_id)

    def error_bound(self, clients: int) -> float:
        # The updates travel as float32, exactly as drivers hand them over, and are summed in
        # float64: the only error is float64 rounding, far below this for any cohort.
        del clients
        return 1e-9

    def disclosure(self, clients: int) -> Disclosure:
        del clients
        return Disclosure("everything", "the server alone", "any dropout")

    @property
    def dp_plan(self) -> DpPlan | None:
        return None  # no noise: the baseline sends the update as it is

    def facts(self, clients: int) -> SchemeFacts:
        del clients
        return SchemeFacts(
            protocol=SchemeKind.PLAINTEXT.value,
            title="plaintext FedAvg",
            clip=None,
            min_cohort=self.min_cohort,
        )

    def signing_as(
        self, client_id: int, signing_key: Ed25519SigningKey, pki: Mapping[int, bytes]
    ) -> Scheme:
        del client_id, signing_key, pki  # nothing of this scheme is signed
        return self

    def wrapping_masks(self, wrap: Callable[[ApplyMasks], ApplyMasks]) -> Scheme:
        del wrap  # no masks
        return self
