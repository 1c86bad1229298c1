"""Which distribution each client's DP noise is drawn from: the name alone, importing nothing,
so that the settings (and the command line's ``--dp-mechanism``) can offer it without loading
the samplers (``secagg.dp.noise``)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Mechanism"]


class Mechanism(StrEnum):
    """The distribution each client's noise is drawn from."""

    SKELLAM = "skellam"
    DISCRETE_GAUSSIAN = "discrete-gaussian"
