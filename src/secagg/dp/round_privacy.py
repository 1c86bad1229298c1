"""The server's privacy accounting: what each revealed sum of a DP deployment cost, and what
its rounds have spent together.

A deployment's rounds are grouped by their series, the digest of the public DP configuration
that calibrated their noise (``dp_series``): rounds of one series compose (RDP) into one
``epsilon_spent``, and rounds under another configuration, or none, belong to another
deployment and are accounted apart. ``round_privacy`` turns a round's number of inputs and
those of the earlier rounds of its series into the round's ``RoundPrivacy``, the record the
round ledger keeps (``secagg.ledger``, which reads the earlier rounds and calls this; nothing
here reads the ledger). A client holds itself to its own budget (``secagg.dp.budget``).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsIndex

import numpy as np

from secagg.dp.calibrate import DpPlan, achieved_epsilon, epsilon_spent
from secagg.errors import UsageError
from secagg.hazmat.kdf import encode_fields

__all__ = ["SERIES_BYTES", "RoundPrivacy", "dp_series", "round_privacy"]

SERIES_BYTES = 32  # a SHA-256 digest
# The ledger keeps the target rounds in an SQLite INTEGER.
_MAX_TARGET_ROUNDS = 2**63 - 1


@dataclass(frozen=True)
class RoundPrivacy:
    """The distributed-DP guarantee of a completed round's revealed sum, and the privacy
    spent so far (all at ``delta``).

    ``epsilon`` is the guarantee of this round's sum, for the number of inputs it actually
    held; ``epsilon_spent`` composes (RDP) this round with every earlier completed round of
    the same ``series``, the digest of the public DP configuration that calibrated the
    noise (``dp_series``): rounds under another configuration, or none, belong to another
    deployment and are accounted apart. ``epsilon_target`` is the plan's epsilon over
    ``target_rounds`` rounds at the minimum cohort (the target, when one was given): spent
    stays at or below it for as many rounds, and passes it after more.
    """

    series: bytes
    mechanism: str
    delta: float
    epsilon: float
    epsilon_spent: float
    epsilon_target: float
    target_rounds: int

    def __post_init__(self) -> None:
        if not isinstance(self.series, bytes) or len(self.series) != SERIES_BYTES:
            raise UsageError(f"a DP series must be {SERIES_BYTES} bytes")
        if not isinstance(self.mechanism, str) or not self.mechanism:
            raise UsageError("the DP mechanism must be a non-empty str")
        if isinstance(self.delta, bool) or not (
            isinstance(self.delta, int | float) and 0.0 < self.delta < 1.0
        ):
            raise UsageError(f"delta must be in (0, 1), got {self.delta!r}")
        for name in ("epsilon", "epsilon_spent", "epsilon_target"):
            _check_amount(getattr(self, name), name)
        # Composition never spends less than its last round alone (to rounding).
        if self.epsilon_spent < self.epsilon * (1 - 1e-9):
            raise UsageError(
                f"epsilon spent {self.epsilon_spent!r} is below the round's {self.epsilon!r}"
            )
        _check_target_rounds(self.target_rounds)


def _check_amount(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise UsageError(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise UsageError(f"{what} must be finite and non-negative, got {number}")


def _check_target_rounds(value: object) -> None:
    if isinstance(value, bool):
        raise UsageError(f"target rounds must be an int, got {value!r}")
    # SupportsIndex: Python and numpy integers, never a float that happens to be whole.
    if not isinstance(value, SupportsIndex):
        raise UsageError(f"target rounds must be an int, got {type(value).__name__}")
    number = operator.index(value)
    if not 1 <= number <= _MAX_TARGET_ROUNDS:
        raise UsageError(f"target rounds must be in [1, 2**63), got {number}")


def dp_series(plan: DpPlan) -> bytes:
    """The digest of what a DP deployment's privacy accounting depends on: the mechanism,
    the clip in scaled units, the padded dimension, the rounding, each client's noise, the
    sampling rate and delta. Rounds of one series compose into one ``epsilon_spent``."""
    c = plan.config
    # Removable noise layers change what each round spends (docs/XNOISE.md X7): such a
    # deployment is a series of its own. Without them the fields, and every digest already
    # in a ledger, are what they were.
    layers = c.layers
    layered = () if layers is None else ("noise-layers", layers.honest_min, layers.honest_max)
    return hashlib.sha256(
        encode_fields(
            # The label predates this module: ledgers hold series digested under it.
            "secagg/v1/ledger/dp-series",
            plan.mechanism.value,
            plan.padded_dim,
            repr(float(plan.scaled_clip)),
            repr(float(c.beta)),
            repr(float(plan.local_noise)),
            repr(float(c.sampling_rate)),
            repr(float(c.delta)),
            *layered,
        )
    ).digest()


def round_privacy(plan: DpPlan, inputs: int, *, earlier: Sequence[int]) -> RoundPrivacy:
    """The privacy record of a round of ``plan``'s deployment whose revealed sum held
    ``inputs`` inputs, after completed rounds of the same series (``dp_series(plan)``) that
    held ``earlier`` inputs each: its own epsilon, and the epsilon spent by it and them
    together (``secagg.dp.epsilon_spent``)."""
    return RoundPrivacy(
        series=dp_series(plan),
        mechanism=plan.mechanism.value,
        delta=plan.config.delta,
        epsilon=achieved_epsilon(plan, inputs),
        epsilon_spent=epsilon_spent(plan, [*earlier, inputs]),
        epsilon_target=plan.epsilon_total,
        target_rounds=plan.config.rounds,
    )
