"""A client's own privacy budget: what its journal's charges have spent, by its own accountant.

The server says how many inputs a revealed sum held; a client cannot check it. So every
masked input a client sends under distributed DP is charged at the deployment's minimum cohort
(the most one revealed sum can cost it: more inputs carry more noise), and without sampling
amplification (the server picks every cohort: a client cannot check that it was sampled at
random, and a server that puts it in every round would otherwise spend several times the
budget), and the client refuses
a round whose charge would take the composition of its charges past the deployment's target
epsilon (or, where the deployment gives a noise multiplier, past the epsilon it was calibrated
to spend over its rounds). The charges outlive the process: they are rows of its journal,
keyed by the fingerprint of the deployment's DP configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from secagg.dp.calibrate import DpPlan, epsilon_spent

__all__ = ["ClientBudget"]

# Accountant round-off: a run of exactly the planned rounds must not be refused.
_SLACK = 1e-9


@dataclass(frozen=True)
class ClientBudget:
    """The budget of one DP deployment, as a client holds itself to it."""

    plan: DpPlan = field(repr=False)
    fingerprint: bytes = field(init=False, repr=False)
    limit: float = field(init=False)
    charge: int = field(init=False)  # the revealed-sum size every round is charged at

    def __post_init__(self) -> None:
        config = self.plan.config
        fields = dataclasses.asdict(config)
        text = ";".join(f"{name}={fields[name]!r}" for name in sorted(fields))
        object.__setattr__(
            self, "fingerprint", hashlib.sha256(f"secagg/v1/dp-budget;{text}".encode()).digest()
        )
        target = config.target_epsilon
        object.__setattr__(self, "limit", self.plan.epsilon_total if target is None else target)
        object.__setattr__(self, "charge", config.min_clients)

    def spent(self, charges: list[int]) -> float:
        """Epsilon of the rounds charged so far (composed by the project's accountant, each
        round counted as if this client were in it for certain)."""
        unsampled = dataclasses.replace(
            self.plan, config=dataclasses.replace(self.plan.config, sampling_rate=1.0)
        )
        return epsilon_spent(unsampled, charges)

    def allows(self, charges: list[int]) -> bool:
        """Whether one more round fits in the budget."""
        return self.spent([*charges, self.charge]) <= self.limit * (1 + _SLACK)
