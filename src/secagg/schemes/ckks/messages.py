"""CKKS's messages: the round configuration, an upload, the key holders' request and answer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from secagg.errors import (
    ConfigurationError,
    UsageError,
)
from secagg.hazmat import ckks
from secagg.protocol.codec import Direction, Message, Reader, Writer
from secagg.protocol.stages import Stage
from secagg.schemes.upload import CohortConfig

if TYPE_CHECKING:
    pass

__all__ = ["CONFIG_ID_BYTES", "CkksConfig", "CkksResult", "CkksSumRequest", "CkksUpload"]

CONFIG_ID_BYTES = 32
_ID = CONFIG_ID_BYTES


@dataclass(frozen=True)
class CkksConfig(Message, CohortConfig):
    """A CKKS round: the cohort, the clip, the CKKS parameters and who decrypts."""

    TAG: ClassVar[int] = 20
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.UPLOAD
    OPENS_ROUND: ClassVar[bool] = True
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

    def _scheme_terms(self) -> str:
        return (
            f"ckks N={self.poly_modulus_degree} moduli {list(self.coeff_mod_bit_sizes)} "
            f"scale 2^{self.scale_bits}, {len(self.key_holders)} key holder(s)"
        )

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

    def audit_note(self, request: bytes) -> str:
        del request
        return "encrypted"

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
