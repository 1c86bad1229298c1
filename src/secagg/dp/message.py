"""DP's round message: the distributed-DP block of masking's round configuration.

``DpRound`` says what every client's encoding uses (``secagg.dp.encoding``); masking's
``RoundConfig`` (``secagg.schemes.masking.messages``) carries it after a flag byte (``flag``:
1, or 2 when it has removable noise layers, whose structure then follows its other fields, so
that a round binds it and a block without layers keeps its bytes). It has no tag of its own:
it travels only inside that message, written with the codec's ``Writer`` and read with its
``Reader``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from secagg.dp.layers import NoiseLayers
from secagg.errors import ConfigurationError, DecodeError, UsageError
from secagg.protocol.codec import MAX_ID, Reader, Writer

__all__ = ["MECHANISM_CODES", "DpRound"]

MECHANISM_CODES = {"skellam": 0, "discrete-gaussian": 1}


@dataclass(frozen=True)
class DpRound:
    """The distributed-DP part of a round configuration: what every client's encoding uses
    (``secagg.dp``). A client runs only the noise its own deployment calibrated: its policy
    compares this block with its own, field for field."""

    mechanism: str
    padded_dim: int  # the rotated length (a power of two at least dim)
    l2_clip: float
    scale: float
    local_noise: float  # Skellam mu or discrete Gaussian sigma per client, in scaled units
    beta: float  # conditional rounding (0: plain randomised rounding)
    # Removable noise (docs/XNOISE.md): the structure every client adds and the server may
    # take off; None: no layers.
    layers: NoiseLayers | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISM_CODES:
            raise UsageError(f"unknown DP mechanism {self.mechanism!r}")
        if not 1 <= self.padded_dim <= MAX_ID - 1 or self.padded_dim & (self.padded_dim - 1):
            raise UsageError("padded_dim must be a power of two in u32")
        for name in ("l2_clip", "scale", "local_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be finite and positive")
        if not (math.isfinite(self.beta) and 0.0 <= self.beta < 1.0):
            raise UsageError("beta must be in [0, 1)")
        if self.layers is not None:
            if not isinstance(self.layers, NoiseLayers):
                raise UsageError("layers must be NoiseLayers")
            if self.mechanism != "skellam":
                raise UsageError("noise layers are Skellam only")

    @property
    def flag(self) -> int:
        """The byte that announces this block in a round configuration."""
        return 1 if self.layers is None else 2

    def write(self, w: Writer) -> None:
        w.u8(MECHANISM_CODES[self.mechanism])
        w.u32(self.padded_dim)
        w.f64(self.l2_clip)
        w.f64(self.scale)
        w.f64(self.local_noise)
        w.f64(self.beta)
        if self.layers is not None:
            w.u32(self.layers.honest_min)
            w.u32(self.layers.honest_max)
            w.u8(self.layers.bits)

    @classmethod
    def read(cls, r: Reader, flag: int = 1) -> DpRound:
        if flag not in (1, 2):
            raise DecodeError(f"a DP block flag is 1 or 2, not {flag}")
        fields = (_mechanism(r.u8()), r.u32(), r.f64(), r.f64(), r.f64(), r.f64())
        layers = None
        if flag == 2:
            honest_min, honest_max, bits = r.u32(), r.u32(), r.u8()
            try:
                layers = NoiseLayers(honest_min, honest_max, bits)
            except ConfigurationError as exc:
                raise DecodeError(str(exc)) from None
        return cls(*fields, layers=layers)


def _mechanism(code: int) -> str:
    for name, value in MECHANISM_CODES.items():
        if value == code:
            return name
    raise DecodeError(f"unknown DP mechanism code {code}")
