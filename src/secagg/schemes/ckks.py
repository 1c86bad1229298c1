"""CKKS homomorphic encryption as a scheme (TenSEAL, the ``[he]`` extra), beside masking.

A round has two stages::

    upload    every client encrypts its clipped, weighted update    -> the server adds the
              (``CkksUpload``)                                         ciphertexts, no key
    decrypt   the server sends the encrypted sum to the round's key  -> a key holder decrypts
              holders (``CkksSumRequest``)                             and returns the mean
                                                                       (``CkksResult``)

Every client holds the one secret key (provisioned by a trusted dealer, as NVFlare does); the
server holds an evaluation context with parameters only. What that means, plainly: the server
together with any one client sees every update; a key holder cannot check that what it
decrypts is a sum over many updates (it checks the count the server claims against its own
minimum cohort, nothing more); the arithmetic is approximate (``error_bound``). See
``secagg.hazmat.ckks`` and docs/THREAT_MODEL.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    AbortReason,
    ClientAbort,
    ConfigurationError,
    CryptoError,
    DecodeError,
    DropReason,
    InputError,
    RoundAborted,
    UsageError,
)
from secagg.hazmat import ckks
from secagg.hazmat.randomness import Randomness
from secagg.protocol.codec import MAX_ID, Direction, Message, Reader, Writer, decode
from secagg.protocol.runner import Aggregate
from secagg.protocol.stages import Stage
from secagg.schemes.base import Disclosure, SchemeKind
from secagg.schemes.upload import CohortConfig, UploadServer

__all__ = ["CkksConfig", "CkksResult", "CkksScheme", "CkksSumRequest", "CkksUpload"]

_ID = 32  # config id bytes


@dataclass(frozen=True)
class CkksConfig(Message, CohortConfig):
    """A CKKS round: the cohort, the clip, the CKKS parameters and who decrypts."""

    TAG: ClassVar[int] = 20
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.UPLOAD
    SCHEME_LABEL: ClassVar[bytes] = b"ckks"

    clip: float
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    key_holders: tuple[int, ...]  # the clients asked to decrypt the sum

    def __post_init__(self) -> None:
        object.__setattr__(self, "coeff_mod_bit_sizes", tuple(self.coeff_mod_bit_sizes))
        object.__setattr__(self, "key_holders", tuple(self.key_holders))
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise UsageError("clip must be finite and positive")
        try:
            self.params  # noqa: B018  (validates the CKKS parameters)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        holders = self.key_holders
        if not holders or list(holders) != sorted(set(holders)):
            raise UsageError("key holders must be sorted, unique and not empty")
        if not set(holders) <= set(self.client_ids):
            raise UsageError("key holders must belong to the cohort")
        super().__post_init__()

    @property
    def params(self) -> ckks.CkksParameters:
        return ckks.CkksParameters(
            self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits
        )

    def _write(self, w: Writer) -> None:
        self._write_common(w)
        w.f64(self.clip)
        w.u32(self.poly_modulus_degree)
        w.u8(self.scale_bits)
        w.u8(len(self.coeff_mod_bit_sizes))
        for bits in self.coeff_mod_bit_sizes:
            w.u8(bits)
        w.ids(self.key_holders)

    @classmethod
    def _read(cls, r: Reader) -> CkksConfig:
        common = cls._read_common(r)
        clip, degree, scale_bits = r.f64(), r.u32(), r.u8()
        sizes = tuple(r.u8() for _ in range(r.u8()))
        return cls(
            *common,
            clip=clip,
            poly_modulus_degree=degree,
            coeff_mod_bit_sizes=sizes,
            scale_bits=scale_bits,
            key_holders=r.ids(),
        )


@dataclass(frozen=True)
class CkksUpload(Message):
    """A client's encrypted update (``secagg.hazmat.ckks.EncryptedUpdate`` bytes)."""

    TAG: ClassVar[int] = 21
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.UPLOAD

    config_id: bytes = field(repr=False)
    client_id: int
    update: bytes = field(repr=False)

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, _ID)
        w.u32(self.client_id)
        w.blob(self.update)

    @classmethod
    def _read(cls, r: Reader) -> CkksUpload:
        return cls(r.fixed(_ID), r.u32(), r.blob())


@dataclass(frozen=True)
class CkksSumRequest(Message):
    """The encrypted sum of the ``included`` clients' updates, for a key holder to decrypt."""

    TAG: ClassVar[int] = 22
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.DECRYPT

    config_id: bytes = field(repr=False)
    recipient: int
    included: tuple[int, ...]
    total: bytes = field(repr=False)  # EncryptedSum bytes

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, _ID)
        w.u32(self.recipient)
        w.ids(self.included)
        w.blob(self.total)

    @classmethod
    def _read(cls, r: Reader) -> CkksSumRequest:
        return cls(r.fixed(_ID), r.u32(), r.ids(), r.blob())


@dataclass(frozen=True)
class CkksResult(Message):
    """A key holder's decryption: the weighted mean (float64) and the total weight."""

    TAG: ClassVar[int] = 23
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.DECRYPT

    config_id: bytes = field(repr=False)
    client_id: int
    total_weight: int
    mean: bytes = field(repr=False)  # float64, little-endian

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, _ID)
        w.u32(self.client_id)
        w.u64(self.total_weight)
        w.blob(self.mean)

    @classmethod
    def _read(cls, r: Reader) -> CkksResult:
        return cls(r.fixed(_ID), r.u32(), r.u64(), r.blob())


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


@dataclass(frozen=True)
class CkksScheme:
    """A CKKS deployment: the round parameters, and the context this side holds (the key
    holders' ``client_context`` with the secret key, the coordinator's ``server_context``
    without it; a simulation holds both)."""

    dim: int
    max_weight: int = 1
    clip: float = 1.0
    min_cohort: int = 1
    params: ckks.CkksParameters = field(default_factory=ckks.CkksParameters)
    client_context: ckks.ClientContext | None = field(default=None, repr=False)
    server_context: ckks.ServerContext | None = field(default=None, repr=False)
    allowed: frozenset[int] | None = None
    key_holders: int = 2  # how many clients are asked to decrypt (any one suffices)

    def __post_init__(self) -> None:
        if not 1 <= self.dim <= MAX_ID - 1:
            raise ConfigurationError("dim must be a positive integer")
        if not 1 <= self.max_weight < 2**31:
            raise ConfigurationError("max_weight must be an integer in [1, 2**31)")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigurationError("clip must be finite and positive")
        if self.key_holders < 1:
            raise ConfigurationError("key_holders must be at least 1")

    @property
    def kind(self) -> SchemeKind:
        return SchemeKind.CKKS

    def reference(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        return np.clip(np.asarray(values, dtype=np.float64), -self.clip, self.clip)

    def epsilon(self, included: int) -> float | None:
        del included
        return None  # no noise: the sum is revealed as it is

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (Stage.UPLOAD, Stage.DECRYPT)

    def round_config(
        self,
        cohort: Sequence[int],
        *,
        nonce: bytes,
        round_id: int = 0,
        task_hash: bytes = bytes(32),
    ) -> CkksConfig:
        ids = tuple(sorted(cohort))
        return CkksConfig(
            round_id=round_id,
            nonce=nonce,
            client_ids=ids,
            dim=self.dim,
            max_weight=self.max_weight,
            min_cohort=self.min_cohort,
            task_hash=task_hash,
            clip=self.clip,
            poly_modulus_degree=self.params.poly_modulus_degree,
            coeff_mod_bit_sizes=self.params.coeff_mod_bit_sizes,
            scale_bits=self.params.scale_bits,
            key_holders=ids[: self.key_holders],
        )

    def server(self, config: Message) -> CkksServer:
        assert isinstance(config, CkksConfig)
        if self.server_context is None:
            raise UsageError("the coordinator side needs the server context")
        return CkksServer(config, self.server_context)

    def check(self, config: Message, client_id: int) -> None:
        if not isinstance(config, CkksConfig):
            raise ClientAbort(
                AbortReason.PARAMETER_MISMATCH,
                f"a {type(config).__name__}; this deployment runs CKKS",
            )
        mismatches: tuple[tuple[str, object, object], ...] = (
            ("dim", config.dim, self.dim),
            ("clip", config.clip, self.clip),
            ("max_weight", config.max_weight, self.max_weight),
            ("CKKS parameters", config.params, self.params),
        )
        for name, theirs, ours in mismatches:
            if theirs != ours:
                raise ClientAbort(
                    AbortReason.PARAMETER_MISMATCH, f"{name} {theirs}; the deployment has {ours}"
                )
        if config.min_cohort < self.min_cohort:
            raise ClientAbort(AbortReason.DOWNGRADE, "a smaller minimum cohort")
        if client_id not in config.cohort:
            raise ClientAbort(AbortReason.UNKNOWN_ID, "this client is not in the cohort")
        if self.allowed is not None and not config.cohort <= self.allowed:
            raise ClientAbort(AbortReason.COHORT_NOT_ALLOWED, "a cohort off the allow-list")
        if len(config.client_ids) < self.min_cohort:
            raise ClientAbort(AbortReason.COHORT_TOO_SMALL, "a cohort below the minimum")

    def client(self, config: Message, client_id: int, rng: Randomness) -> CkksClient:
        del rng  # SEAL draws its own encryption noise (secagg.hazmat.ckks says why)
        assert isinstance(config, CkksConfig)
        if self.client_context is None:
            raise UsageError("a key holder needs the client context")
        return CkksClient(config, client_id, self.client_context, self.min_cohort)

    def error_bound(self, clients: int) -> float:
        return ckks.error_bound(self.params, clients, self.clip, self.max_weight)

    def disclosure(self, clients: int) -> Disclosure:
        del clients
        return Disclosure(
            server_learns="the sum (decrypted by a key holder); each update stays encrypted",
            to_see_one_update="the server and any one key holder (every client holds the key)",
            tolerates="any dropout but the last key holder's",
        )

    def describe(self, clients: int) -> dict[str, object]:
        del clients
        p = self.params
        return {
            "poly_modulus_degree": p.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
            "scale_bits": p.scale_bits,
            "clip": self.clip,
            "key_holders": self.key_holders,
        }


def simulated_keys(params: ckks.CkksParameters) -> tuple[ckks.ClientContext, ckks.ServerContext]:
    """A dealer's keys for an in-process run: the key holders' and the coordinator's."""
    keys = ckks.CkksKeys.generate(params)
    return (
        ckks.load_client_context(keys.client_context, params),
        ckks.load_server_context(keys.server_context, params),
    )
