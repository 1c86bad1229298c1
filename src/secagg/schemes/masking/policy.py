"""What a client accepts: its own deployment, never what the server says.

A client is provisioned with a deployment (the parameters, the threat model, the allow-list,
the minimum cohort). Every round configuration the server sends is checked against it before
the client generates a single key, trains, or reveals anything; a configuration that differs
in any way that matters is refused with a typed ``ClientAbort``:

- the server model must be exactly the deployment's (never the weaker semi-honest one where
  the deployment says semi-malicious: that would switch off signatures);
- protocol, dimension, clip, value bits, maximum weight, ring width and minimum cohort must
  match (a different ring or quantiser could make sums wrap or leak; a smaller minimum cohort
  would reveal smaller sums);
- the degree must be the one this client computes for that cohort size and the threshold at
  least the one it computes (a higher threshold only makes shares harder to collect);
- the cohort must lie within the allow-list, hold this client, and be at least the minimum
  cohort and at most ``max_clients``.

The policy is pure: whoever drives a client (the gRPC service client, the Flower mod, the
simulator) calls ``ClientPolicy.check`` on every configuration before creating a ``Client``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from secagg.dp.encoding import dp_round
from secagg.errors import AbortReason, ClientAbort, ConfigurationError
from secagg.schemes.masking.graph import ServerModel
from secagg.schemes.masking.messages import RoundConfig
from secagg.schemes.masking.parameters import Params, check_round_config

__all__ = ["ClientPolicy"]


@functools.lru_cache(maxsize=8)
def _strangers(cohort: frozenset[int], allowed: frozenset[int]) -> int:
    """How many cohort members are not on the allow-list. Memoised on the two sets (equal
    sets, equal answer): a process that checks one configuration for each of thousands of
    its clients (the simulator) compares the cohort with the list once, not once a client. A
    set hashes once and keeps its hash; a lookup with the same two objects is then immediate,
    and with any others it compares them whole, so a changed cohort is checked afresh."""
    return len(cohort - allowed)


@dataclass(frozen=True)
class ClientPolicy:
    """A client's deployment; ``allowed`` is the allow-list (``None``: any id, for in-process
    simulations where every client is ours)."""

    params: Params
    allowed: frozenset[int] | None = None

    def check(self, config: RoundConfig, client_id: int) -> None:
        """Refuse (``ClientAbort``) a configuration this client must not run."""
        p = self.params
        try:
            check_round_config(config)
        except ConfigurationError as exc:
            raise ClientAbort(AbortReason.INVALID_CONFIG, str(exc)) from None
        if client_id not in config.cohort:
            raise ClientAbort(AbortReason.UNKNOWN_ID, "this client is not in the cohort")
        if config.server_model != p.server_model.value:
            weaker = p.server_model is ServerModel.SEMI_MALICIOUS
            raise ClientAbort(
                AbortReason.DOWNGRADE if weaker else AbortReason.PARAMETER_MISMATCH,
                f"server model {config.server_model}; the deployment requires "
                f"{p.server_model.value}",
            )
        if config.min_cohort != p.min_cohort:
            raise ClientAbort(
                AbortReason.DOWNGRADE
                if config.min_cohort < p.min_cohort
                else AbortReason.PARAMETER_MISMATCH,
                f"minimum cohort {config.min_cohort}; the deployment requires {p.min_cohort}",
            )
        mismatches: tuple[tuple[str, object, object], ...] = (
            ("protocol", config.protocol, p.protocol.value),
            ("dim", config.dim, p.dim),
            ("clip", config.clip, p.clip),
            ("value_bits", config.value_bits, p.value_bits),
            ("max_weight", config.max_weight, p.max_weight),
            ("ring_bits", config.ring_bits, p.ring_bits),
        )
        ours_dp = None if p.dp_plan is None else dp_round(p.dp_plan)
        if config.dp != ours_dp:
            weaker = (
                config.dp is None
                or ours_dp is None
                or config.dp.local_noise < ours_dp.local_noise
                or config.dp.scale > ours_dp.scale
                or config.dp.l2_clip > ours_dp.l2_clip
            )
            raise ClientAbort(
                AbortReason.DOWNGRADE
                if weaker and ours_dp is not None
                else (AbortReason.PARAMETER_MISMATCH),
                "distributed DP other than the deployment's "
                f"({'none' if config.dp is None else config.dp.mechanism} sent, "
                f"{'none' if ours_dp is None else ours_dp.mechanism} required)",
            )
        for name, theirs, ours in mismatches:
            if theirs != ours:
                raise ClientAbort(
                    AbortReason.PARAMETER_MISMATCH,
                    f"{name} {theirs}; the deployment requires {ours}",
                )
        if self.allowed is not None:
            strangers = _strangers(config.cohort, self.allowed)
            if strangers:
                raise ClientAbort(
                    AbortReason.COHORT_NOT_ALLOWED,
                    f"{strangers} cohort member(s) not on the allow-list",
                )
        n = len(config.client_ids)
        if n < p.min_cohort:
            raise ClientAbort(
                AbortReason.COHORT_TOO_SMALL,
                f"a cohort of {n}; the deployment's minimum is {p.min_cohort}",
            )
        try:
            graph = p.graph(n)
        except ConfigurationError as exc:
            raise ClientAbort(AbortReason.PARAMETER_MISMATCH, str(exc)) from None
        if config.degree != graph.degree or config.threshold < graph.threshold:
            raise ClientAbort(
                AbortReason.WEAK_GRAPH,
                f"k={config.degree}, t={config.threshold} for {n} clients; this client "
                f"computes k={graph.degree}, t>={graph.threshold}",
            )
