"""Validated parameters of a secure-aggregation deployment.

A ``Params`` object is fixed before any round: it decides how values are quantised, how wide
the ring must be so that no sum can wrap, and how the SecAgg+ graph degree and threshold
follow from the cohort size and the tolerated adversarial and dropout rates. Everything that
could go wrong with a configuration is refused here, up front, with a ``ConfigurationError``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from secagg.dp.calibrate import DpConfig, DpPlan, calibrate
from secagg.dp.encoding import dp_round
from secagg.errors import ConfigurationError
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.quantize import Quantizer
from secagg.hazmat.randomness import Randomness, forked
from secagg.hazmat.ring import Ring
from secagg.knobs import knob
from secagg.schemes.masking.graph import (
    GraphParameters,
    ServerModel,
    SurvivorRule,
    corrupt_clients,
    find_secagg_plus_parameters,
    full_graph_threshold,
    survivor_rule,
)
from secagg.schemes.masking.messages import CIPHERTEXT_BYTES, KEY_BYTES, RoundConfig
from secagg.schemes.registry import SchemeKind

if TYPE_CHECKING:
    from secagg.hazmat.prg import ApplyMasks
    from secagg.schemes.masking.scheme import MaskingScheme

__all__ = ["MAX_RING_BITS", "Params", "Protocol", "ServerModel", "check_round_config"]

MAX_RING_BITS = 62


class Protocol(StrEnum):
    """Which neighbour graph the round uses."""

    SECAGG = "secagg"  # complete graph (Bonawitz et al. 2017)
    SECAGG_PLUS = "secagg+"  # random Harary graph of logarithmic degree (Bell et al. 2020)


@dataclass(frozen=True)
class Params:
    """Everything a deployment fixes before its first round.

    ``dim`` is the length of a model update; ``max_clients`` bounds any cohort (and so the
    ring's width); each value is clipped to ``[-clip, clip]`` and stochastically rounded to
    one of ``2**value_bits`` levels; ``max_weight`` bounds the integer weight a client may
    give its update (1 for a plain mean). ``adversarial_rate`` and ``dropout_rate`` are the
    fractions of the cohort that may be corrupt and that may drop out; with the server model
    and the statistical parameters ``sigma``/``eta`` they fix the graph degree and threshold.
    ``degree`` and ``threshold`` override the derived values (checked all the same).
    ``server_model=SEMI_MALICIOUS`` is active mode: signed keys, a consistency round and the
    thresholds of the semi-malicious model. ``min_cohort`` is the fewest inputs any revealed
    sum may contain (clients check it in active mode).

    ``dp`` turns on distributed differential privacy (``secagg.dp``): every client adds
    discrete noise calibrated (``dp_plan``) so that the guarantee holds for a sum of
    ``min_cohort`` inputs, the ring is the plan's, and the mean is unweighted (``max_weight``
    1). The DP configuration's ``dim``, ``min_clients`` and ``max_clients`` must be this
    deployment's ``dim``, ``min_cohort`` and ``max_clients``.
    """

    dim: int = knob(section="round", flag="--dim", help="The length of a model update.")
    max_clients: int = knob(
        section="round", flag="--clients", help="The largest cohort (it sizes the ring)."
    )
    protocol: Protocol = knob(
        section="round",
        flag="--protocol",
        help="The neighbour graph: secagg (complete) or secagg+ (logarithmic degree).",
        default=Protocol.SECAGG_PLUS,
    )
    clip: float = knob(
        section="round", flag="--clip", help="Each value is clipped to [-clip, clip].", default=1.0
    )
    value_bits: int = knob(
        section="round",
        flag="--value-bits",
        help="Each clipped value is rounded to one of 2**value_bits levels.",
        default=16,
    )
    max_weight: int = knob(
        section="round",
        flag="--max-weight",
        help="The largest integer weight a client may give its update (1: a plain mean).",
        default=1,
    )
    adversarial_rate: float = knob(
        section="round",
        flag="--adversarial-rate",
        help="The fraction of the cohort that may be corrupt.",
        default=0.05,
    )
    dropout_rate: float = knob(
        section="round", help="The fraction of the cohort that may drop out.", default=0.33
    )
    server_model: ServerModel = knob(
        section="round",
        flag="--server-model",
        help="semi-honest, or semi-malicious (active mode: signed keys, a consistency round).",
        default=ServerModel.SEMI_HONEST,
    )
    sigma: int = 40
    eta: int = 20
    degree: int | None = None
    threshold: int | None = None
    min_cohort: int = knob(
        section="round",
        flag="--min-cohort",
        help="The fewest inputs any revealed sum may contain.",
        default=1,
    )
    dp: DpConfig | None = None
    ring_bits: int = field(init=False)
    dp_plan: DpPlan | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require(isinstance(self.dim, int) and self.dim >= 1, "dim must be a positive integer")
        _require(
            isinstance(self.max_clients, int) and 3 <= self.max_clients < 2**32,
            "max_clients must be an integer in [3, 2**32)",
        )
        _require(
            isinstance(self.max_weight, int) and 1 <= self.max_weight < 2**31,
            "max_weight must be an integer in [1, 2**31)",
        )
        _require(math.isfinite(self.clip) and self.clip > 0, "clip must be finite and positive")
        _require(1 <= self.value_bits <= 31, "value_bits must be in 1..31")
        for name in ("adversarial_rate", "dropout_rate"):
            rate = getattr(self, name)
            _require(0.0 <= rate < 1.0, f"{name} must be in [0, 1)")
        _require(
            isinstance(self.min_cohort, int) and 1 <= self.min_cohort <= self.max_clients,
            "min_cohort must be an integer in [1, max_clients]",
        )
        object.__setattr__(self, "protocol", Protocol(self.protocol))
        object.__setattr__(self, "server_model", ServerModel(self.server_model))
        # The largest possible sum: every client at the top level with the largest weight.
        # The weight column's sum (max_clients * max_weight) is smaller, so it fits too.
        largest_sum = self.max_clients * self.max_weight * (2**self.value_bits - 1)
        bits = max(2, largest_sum.bit_length())
        if bits > MAX_RING_BITS:
            raise ConfigurationError(
                f"a sum of {self.max_clients} clients x weight {self.max_weight} x "
                f"{self.value_bits}-bit values needs a {bits}-bit ring; at most "
                f"{MAX_RING_BITS} bits are supported: lower value_bits, max_weight or "
                "max_clients"
            )
        object.__setattr__(self, "ring_bits", bits)
        object.__setattr__(self, "dp_plan", None)
        if self.dp is not None:
            self._plan_dp(self.dp)
        if self.degree is not None or self.threshold is not None:
            self.graph(self.max_clients)  # validate overrides against the largest cohort now

    def _plan_dp(self, dp: DpConfig) -> None:
        for ours, theirs, name in (
            (self.dim, dp.dim, "dim"),
            (self.min_cohort, dp.min_clients, "min_cohort (the DP min_clients)"),
            (self.max_clients, dp.max_clients, "max_clients"),
        ):
            _require(
                ours == theirs,
                f"the DP configuration's {name} is {theirs}, the deployment's {ours}: "
                "they must agree (the guarantee holds from the minimum cohort up)",
            )
        _require(self.max_weight == 1, "with distributed DP max_weight must be 1 (unweighted)")
        plan = calibrate(dp)
        _require(
            self.max_clients < 2**plan.ring_bits,
            f"a {plan.ring_bits}-bit ring cannot count {self.max_clients} inputs: raise bits",
        )
        object.__setattr__(self, "dp_plan", plan)
        object.__setattr__(self, "ring_bits", plan.ring_bits)

    @classmethod
    def of(cls, settings: object, what: str) -> Params:
        """``settings`` as this scheme's, for code that runs this scheme only (``what``
        names it): a ``ConfigurationError`` for another scheme's settings."""
        if not isinstance(settings, cls):
            kind = getattr(settings, "kind", type(settings).__name__)
            raise ConfigurationError(f"{what} runs {SchemeKind.MASKING.value}, not {kind}")
        return settings

    @property
    def kind(self) -> SchemeKind:
        return SchemeKind.MASKING

    def largest_message_bytes(self) -> int:
        ids = 4 * self.max_clients
        masked_input = self.ring.packed_size(self.vector_length) + ids
        peer_messages = self.max_clients * (4 + max(2 * KEY_BYTES, CIPHERTEXT_BYTES))
        return max(masked_input, peer_messages, self.opening_message_bytes())

    def opening_message_bytes(self) -> int:
        return 4 * self.max_clients  # the cohort's ids; the rest is a few fixed fields

    def check_min_clients(self, clients: int) -> None:
        self.graph(clients)  # the graph and threshold of the smallest cohort must exist

    def simulated(
        self, client_ids: Sequence[int], rng: Randomness, *, apply_masks: ApplyMasks | None = None
    ) -> MaskingScheme:
        """Masking for an in-process run: in active mode every client's identity (each from
        its own fork of ``rng``) and the PKI."""
        from secagg.schemes.masking.scheme import MaskingScheme  # the scheme builds on Params

        identities = (
            {i: Ed25519SigningKey.generate(forked(rng, f"identity/{i}")) for i in client_ids}
            if self.active
            else {}
        )
        scheme = MaskingScheme(
            self,
            identities=identities,
            pki={i: key.public for i, key in identities.items()} if self.active else None,
            allowed=frozenset(client_ids),
        )
        if apply_masks is None:
            return scheme
        return dataclasses.replace(scheme, apply_masks=apply_masks)

    @property
    def active(self) -> bool:
        """Active mode: defends against a server that deviates from the protocol."""
        return self.server_model is ServerModel.SEMI_MALICIOUS

    @property
    def ring(self) -> Ring:
        return Ring(self.ring_bits)

    @property
    def quantizer(self) -> Quantizer:
        return Quantizer(clip=self.clip, bits=self.value_bits)

    @property
    def vector_length(self) -> int:
        """Ring elements a client sends: the weighted (or DP: rotated, padded) update and,
        last, its weight."""
        return (self.dim if self.dp_plan is None else self.dp_plan.padded_dim) + 1

    def graph(self, n: int) -> GraphParameters:
        """Degree and threshold for a cohort of ``n`` clients."""
        if not 3 <= n <= self.max_clients:
            raise ConfigurationError(
                f"a cohort needs between 3 and max_clients={self.max_clients} clients, got {n}"
            )
        derived = self._derived_graph(n)
        degree = derived.degree if self.degree is None else min(self.degree, n - 1)
        complete = degree == n - 1
        if not complete and (degree < 2 or degree % 2):
            raise ConfigurationError(
                f"degree must be even and at least 2 (or n - 1 for the complete graph); "
                f"got {degree}"
            )
        threshold = derived.threshold if self.threshold is None else self.threshold
        if self.threshold is None and degree != derived.degree:
            threshold = min(threshold, degree)
        if not 2 <= threshold <= degree:
            # t = 1 would hand every neighbour the secrets themselves.
            raise ConfigurationError(
                f"threshold must be between 2 and the degree {degree}; got {threshold}"
            )
        if complete and threshold <= math.floor(self.adversarial_rate * n):
            # Corrupt clients hold shares of both kinds: t of them must not exist.
            raise ConfigurationError(
                f"threshold {threshold} is not above the {math.floor(self.adversarial_rate * n)} "
                f"corrupt clients tolerated at adversarial_rate={self.adversarial_rate}"
            )
        if self.server_model is ServerModel.SEMI_MALICIOUS and complete:
            # A server that can show different views must not reach t with two disjoint sets.
            need = math.floor((n + self.adversarial_rate * n) / 2) + 1
            if threshold < need:
                raise ConfigurationError(
                    f"against a semi-malicious server the complete graph needs a threshold "
                    f"t > (n + adversarial*n)/2, i.e. t >= {need}; got {threshold}"
                )
        return GraphParameters(n=n, degree=degree, threshold=threshold, complete=complete)

    def corrupt(self, n: int) -> int:
        """A, the corrupt clients a cohort of ``n`` may hold (the finder's count): the one
        bound the survivor rule, the signer's count floor and noise removal subtract."""
        return corrupt_clients(n, self.adversarial_rate)

    def survivor_rule(self, n: int, degree: int) -> SurvivorRule:
        """What this deployment's clients require of an active round's survivor set, for a
        cohort of ``n`` on a graph of ``degree`` (docs/SURVIVOR_CERTIFICATE.md)."""
        return survivor_rule(n, degree, self.adversarial_rate, self.sigma)

    def round_config(
        self,
        cohort: Sequence[int],
        *,
        nonce: bytes,
        round_id: int = 0,
        task_hash: bytes = bytes(32),
    ) -> RoundConfig:
        """The configuration a server fixes for one round of this deployment: the graph for
        this cohort's size, the ring, the quantiser, the task it is bound to."""
        graph = self.graph(len(cohort))
        return RoundConfig(
            round_id=round_id,
            nonce=nonce,
            protocol=self.protocol.value,
            server_model=self.server_model.value,
            client_ids=tuple(sorted(cohort)),
            degree=graph.degree,
            threshold=graph.threshold,
            ring_bits=self.ring_bits,
            dim=self.dim,
            clip=self.clip,
            value_bits=self.value_bits,
            max_weight=self.max_weight,
            task_hash=task_hash,
            min_cohort=self.min_cohort,
            dp=None if self.dp_plan is None else dp_round(self.dp_plan),
        )

    def _derived_graph(self, n: int) -> GraphParameters:
        if self.protocol is Protocol.SECAGG:
            t = full_graph_threshold(
                n,
                adversarial_rate=self.adversarial_rate,
                dropout_rate=self.dropout_rate,
                server_model=self.server_model,
            )
            return GraphParameters(n=n, degree=n - 1, threshold=t, complete=True)
        return find_secagg_plus_parameters(
            n,
            adversarial_rate=self.adversarial_rate,
            dropout_rate=self.dropout_rate,
            server_model=self.server_model,
            sigma=self.sigma,
            eta=self.eta,
        )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


def check_round_config(config: RoundConfig) -> None:
    """The rules any round configuration must meet before a client or a server acts on it,
    whoever made it: a cohort of at least 3, a graph that exists (the complete graph, or an
    even degree of at least 2), a threshold of at least 2 (t = 1 would hand every neighbour
    the secrets themselves) and at most the degree, and a ring wide enough that no sum of the
    cohort can wrap. (A client also holds the configuration to its own deployment's
    ``Params``: ``secagg.schemes.masking.policy``.)"""
    n = len(config.client_ids)
    _require(n >= 3, f"a cohort needs at least 3 clients, got {n}")
    complete = config.degree == n - 1
    _require(
        1 <= config.degree <= n - 1
        and (complete or (config.degree >= 2 and config.degree % 2 == 0)),
        f"degree {config.degree} is not valid for {n} clients",
    )
    _require(
        2 <= config.threshold <= config.degree,
        f"threshold {config.threshold} is not in 2..{config.degree}",
    )
    if config.dp is None:
        _require(
            n * config.max_weight * (2**config.value_bits - 1) < 2**config.ring_bits,
            f"a {config.ring_bits}-bit ring is too narrow for {n} clients: sums could wrap",
        )
    else:
        # Noisy values live modulo the ring by design (the plan bounds the wrap probability);
        # only the count of inputs in the last element must never wrap.
        _require(config.max_weight == 1, "with distributed DP every client weighs 1")
        _require(n < 2**config.ring_bits, f"a {config.ring_bits}-bit ring cannot count {n}")
