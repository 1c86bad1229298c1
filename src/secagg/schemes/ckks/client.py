"""A CKKS key holder's state machine: it encrypts its update and, if asked, decrypts the sum."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    AbortReason,
    ClientAbort,
    CryptoError,
    DecodeError,
    InputError,
    UsageError,
)
from secagg.hazmat import ckks
from secagg.protocol.codec import Message, decode
from secagg.schemes.ckks.messages import CkksConfig, CkksResult, CkksSumRequest, CkksUpload

if TYPE_CHECKING:
    pass

__all__ = ["CkksClient"]


class CkksClient:
    """A key holder: encrypts its update; if asked, decrypts the sum."""

    def __init__(
        self, config: CkksConfig, client_id: int, context: ckks.ClientContext, min_cohort: int
    ) -> None:
        if client_id not in config.cohort:
            raise UsageError(f"client {client_id} is not in the round's cohort")
        self.config = config
        self.client_id = client_id
        self._context = context
        self._min_cohort = min_cohort
        self._input: tuple[NDArray[np.float64], int] | None = None
        self._clipped = 0
        self._uploaded = False
        self._decrypted = False

    def __repr__(self) -> str:
        return f"CkksClient(id={self.client_id})"

    @property
    def clipped(self) -> int:
        return self._clipped

    def set_input(self, values: NDArray[np.floating], weight: int = 1) -> None:
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (self.config.dim,) or not np.all(np.isfinite(array)):
            raise InputError(f"the update must be {self.config.dim} finite values")
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise InputError("the weight must be an int")
        # CKKS divides by the decrypted total weight: every update weighs at least 1.
        if not 1 <= weight <= self.config.max_weight:
            raise InputError(f"the weight {weight} is outside [1, {self.config.max_weight}]")
        self._input = (array, int(weight))

    def needs_input(self, message: Message) -> bool:
        return isinstance(message, CkksConfig)

    def receive(self, message: Message | bytes) -> Message | None:
        if isinstance(message, bytes):
            try:
                message = decode(message)
            except DecodeError as exc:
                raise ClientAbort(AbortReason.MALFORMED_MESSAGE, str(exc)) from None
        if message == self.config and not self._uploaded:
            return self._upload()
        if isinstance(message, CkksSumRequest) and self._uploaded and not self._decrypted:
            return self._decrypt(message)
        raise ClientAbort(
            AbortReason.UNEXPECTED_MESSAGE, f"{type(message).__name__} is not expected now"
        )

    def _upload(self) -> CkksUpload:
        if self._input is None:
            raise UsageError("set_input must be called before the upload")
        values, weight = self._input
        self._input = None  # the plaintext update is not kept past encryption
        update = ckks.encrypt_update(self._context, values, weight, self.config.clip)
        self._clipped = update.clipped or 0
        self._uploaded = True
        return CkksUpload(self.config.config_id, self.client_id, update.encode())

    def _decrypt(self, request: CkksSumRequest) -> CkksResult:
        self._decrypted = True
        if request.config_id != self.config.config_id or request.recipient != self.client_id:
            raise ClientAbort(AbortReason.WRONG_SESSION, "a sum of another round")
        if self.client_id not in self.config.key_holders:
            raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, "this client holds no decryption")
        included = request.included
        if list(included) != sorted(set(included)) or not set(included) <= self.config.cohort:
            raise ClientAbort(AbortReason.UNKNOWN_ID, "the sum names clients outside the cohort")
        # All a key holder can check: the server's claim of how many updates the sum holds.
        if len(included) < max(self._min_cohort, self.config.min_cohort):
            raise ClientAbort(
                AbortReason.COHORT_TOO_SMALL,
                f"a sum of {len(included)}; the minimum cohort is {self._min_cohort}",
            )
        try:
            total = ckks.EncryptedSum.decode(request.total)
            if total.updates != len(included):
                raise ClientAbort(AbortReason.MALFORMED_MESSAGE, "the count does not match")
            mean, weight = ckks.decrypt_mean(
                self._context, total, self.config.dim, clip=self.config.clip
            )
        except (DecodeError, CryptoError) as exc:
            raise ClientAbort(AbortReason.MALFORMED_MESSAGE, str(exc)) from None
        return CkksResult(
            self.config.config_id, self.client_id, weight, mean.astype("<f8").tobytes()
        )
