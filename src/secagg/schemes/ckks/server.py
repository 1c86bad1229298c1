"""The CKKS server's state machine: it adds the ciphertexts and asks a key holder for the mean."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from secagg.errors import (
    DecodeError,
    DropReason,
    RoundAborted,
    UsageError,
)
from secagg.hazmat import ckks
from secagg.protocol.codec import Message
from secagg.protocol.runner import Aggregate
from secagg.protocol.stages import Stage
from secagg.schemes.ckks.messages import CkksConfig, CkksResult, CkksSumRequest, CkksUpload
from secagg.schemes.upload import UploadServer

if TYPE_CHECKING:
    pass

__all__ = ["CkksServer"]


class CkksServer(UploadServer):
    """Adds ciphertexts with the evaluation context; asks the key holders to decrypt."""

    EXPECTED: ClassVar = {Stage.UPLOAD: CkksUpload, Stage.DECRYPT: CkksResult}

    def __init__(self, config: CkksConfig, context: ckks.ServerContext) -> None:
        super().__init__(config)
        self.config: CkksConfig = config
        self._sum: ckks.CiphertextSum | None = ckks.CiphertextSum(context, config.dim)
        self._included: tuple[int, ...] = ()
        self._results: dict[int, CkksResult] = {}
        self._aggregate: Aggregate | None = None
        self._bound = ckks.error_bound(
            config.params, len(config.client_ids), config.clip, config.max_weight
        )

    def _take(self, sender: int, message: Message) -> Message | None:
        if isinstance(message, CkksUpload):
            assert self._sum is not None
            try:
                self._sum.add(message.update)
            except DecodeError as exc:
                self.drop(sender, DropReason.MALFORMED, str(exc))
                return None
            # The ciphertext is in the sum; keep only that it arrived.
            return CkksUpload(message.config_id, sender, b"")
        assert isinstance(message, CkksResult)
        mean = np.frombuffer(message.mean, dtype="<f8") if len(message.mean) % 8 == 0 else None
        if mean is None or mean.shape != (self.config.dim,) or not np.all(np.isfinite(mean)):
            self.drop(sender, DropReason.BAD_DECRYPTION, "not dim finite values")
            return None
        return message

    def _close(self, live: set[int]) -> dict[int, Message]:
        if self._stage is Stage.UPLOAD:
            return self._close_upload(live)
        return self._close_decrypt(live)

    def _close_upload(self, live: set[int]) -> dict[int, Message]:
        if len(live) < self.config.min_cohort:
            raise RoundAborted(
                Stage.UPLOAD,
                f"{len(live)} updates; no sum of fewer than {self.config.min_cohort} is revealed",
            )
        holders = [u for u in self.config.key_holders if u in live and u not in self._drops]
        if not holders:
            raise RoundAborted(Stage.UPLOAD, "no key holder is left to decrypt the sum")
        assert self._sum is not None
        self._included = tuple(sorted(live))
        total = self._sum.encode()
        self._sum = None
        cid = self.config.config_id
        outgoing: dict[int, Message] = {
            u: CkksSumRequest(cid, u, self._included, total) for u in holders
        }
        self._advance(Stage.DECRYPT, set(holders))
        return outgoing

    def _close_decrypt(self, live: set[int]) -> dict[int, Message]:
        results = [m for _, m in sorted(self._received.items()) if isinstance(m, CkksResult)]
        if not results:
            raise RoundAborted(Stage.DECRYPT, "no key holder returned the decrypted sum")
        means = [np.frombuffer(r.mean, dtype="<f8") for r in results]
        weights = {r.total_weight for r in results}
        spread = max(float(np.max(np.abs(m - means[0]))) for m in means)
        if len(weights) > 1 or spread > 2 * self._bound:
            raise RoundAborted(Stage.DECRYPT, "the key holders' decryptions disagree")
        self._aggregate = Aggregate(
            self._included, float(results[0].total_weight), means[0].copy(), self._bound
        )
        self._stage = Stage.COMPLETED
        self._expected = set()
        return {}

    def _forget(self) -> None:
        self._sum = None
        self._results.clear()

    def aggregate(self) -> Aggregate:
        if self._aggregate is None:
            raise UsageError(f"no result: the round is at stage {self._stage.value}")
        return self._aggregate
