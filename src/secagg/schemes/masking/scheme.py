"""Masking (SecAgg and SecAgg+) as a scheme, semi-honest or active."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.dp.calibrate import DpPlan, achieved_epsilon
from secagg.dp.encoding import DpEncoding
from secagg.errors import AbortReason, ClientAbort, ConfigurationError, UsageError
from secagg.hazmat import prg
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import Randomness
from secagg.protocol.stages import Stage
from secagg.schemes.base import Disclosure, DpFacts, RoundOpening, SchemeFacts
from secagg.schemes.masking.client import Client
from secagg.schemes.masking.encoding import InputEncoding, QuantizedEncoding
from secagg.schemes.masking.graph import SurvivorRule
from secagg.schemes.masking.messages import RoundConfig
from secagg.schemes.masking.parameters import Params, check_round_config
from secagg.schemes.masking.policy import ClientPolicy
from secagg.schemes.masking.removal import NoiseRemoval
from secagg.schemes.masking.server import Server
from secagg.schemes.masking.session.client import SessionClient
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import SessionTerms
from secagg.schemes.registry import SchemeKind

__all__ = ["MaskingScheme"]


@dataclass(frozen=True)
class MaskingScheme:
    """SecAgg / SecAgg+ under ``params``.

    ``identities`` are the long-term signing keys of the clients this side runs (every client
    in a simulation, one on a device); ``pki`` every allow-listed client's public key; both are
    needed in active mode. ``allowed`` is the allow-list the client's policy checks cohorts
    against (None: any id, for simulations). ``apply_masks`` is how the server regenerates
    masks (e.g. on every core).
    """

    params: Params
    identities: Mapping[int, Ed25519SigningKey] = field(default_factory=dict, repr=False)
    pki: Mapping[int, bytes] | None = field(default=None, repr=False)
    allowed: frozenset[int] | None = None
    apply_masks: prg.ApplyMasks = field(default=prg.apply_masks, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.params.active and self.pki is None:
            raise UsageError("active mode needs every client's identity public key (pki)")

    @property
    def kind(self) -> SchemeKind:
        return SchemeKind.MASKING

    @property
    def dim(self) -> int:
        return self.params.dim

    @property
    def encoding(self) -> InputEncoding:
        """How updates become ring vectors: quantised, or distributed DP."""
        plan = self.params.dp_plan
        return QuantizedEncoding(self.params.quantizer) if plan is None else DpEncoding(plan)

    @property
    def dp_plan(self) -> DpPlan | None:
        return self.params.dp_plan

    @property
    def min_cohort(self) -> int:
        return self.params.min_cohort

    def reference(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        return self.encoding.reference(values)

    def epsilon(self, included: int) -> float | None:
        """The (epsilon, delta) guarantee of a revealed sum of ``included`` inputs (DP only)."""
        plan = self.params.dp_plan
        return None if plan is None else achieved_epsilon(plan, included)

    @property
    def stages(self) -> tuple[Stage, ...]:
        stages = [Stage.COMMIT, Stage.REVEAL, Stage.ADVERTISE, Stage.SHARE, Stage.MASKED_INPUT]
        if self.params.active:
            stages.append(Stage.CONSISTENCY)
        return (*stages, Stage.UNMASK)

    def round_config(
        self,
        cohort: Sequence[int],
        *,
        nonce: bytes,
        round_id: int = 0,
        task_hash: bytes = bytes(32),
    ) -> RoundConfig:
        return self.params.round_config(cohort, nonce=nonce, round_id=round_id, task_hash=task_hash)

    def server(self, config: RoundOpening) -> Server:
        assert isinstance(config, RoundConfig)
        check_round_config(config)
        return Server(
            config,
            pki=self.pki if config.active else None,
            apply_masks=self.apply_masks,
            encoding=self.encoding,
            survivor_rule=self._survivor_rule(config),
            noise_removal=self._noise_removal(config),
        )

    def check(self, config: RoundOpening, client_id: int) -> None:
        if not isinstance(config, RoundConfig):
            raise ClientAbort(
                AbortReason.PARAMETER_MISMATCH,
                f"a {type(config).__name__}; this deployment runs masking",
            )
        ClientPolicy(self.params, self.allowed).check(config, client_id)

    def client(self, config: RoundOpening, client_id: int, rng: Randomness) -> Client:
        assert isinstance(config, RoundConfig)
        check_round_config(config)
        return Client(
            config,
            client_id,
            rng,
            identity=self.identities.get(client_id),
            pki=self.pki if config.active else None,
            encoding=self.encoding,
            survivor_rule=self._survivor_rule(config),
            noise_removal=self._noise_removal(config),
        )

    def session_server(self, terms: SessionTerms) -> SessionServer:
        """The server of a session that spans rounds (docs/SESSIONS.md) under this
        deployment: its encoding, its identity keys and survivor rule in active mode."""
        check_round_config(terms.config)
        self._refuse_layers_in_sessions()
        return SessionServer(
            terms,
            pki=self.pki if terms.config.active else None,
            apply_masks=self.apply_masks,
            encoding=self.encoding,
            survivor_rule=self._survivor_rule(terms.config),
            max_departures=math.floor(self.params.dropout_rate * len(terms.config.client_ids)),
        )

    def session_client(
        self, terms: SessionTerms, client_id: int, rng: Randomness | None = None
    ) -> SessionClient:
        """A client's side of a session under this deployment (``rng`` None: the operating
        system's, as a deployment must use; a seeded one only to reproduce a simulation)."""
        check_round_config(terms.config)
        self._refuse_layers_in_sessions()
        return SessionClient(
            terms,
            client_id,
            rng,
            identity=self.identities.get(client_id),
            pki=self.pki if terms.config.active else None,
            encoding=self.encoding,
            survivor_rule=self._survivor_rule(terms.config),
        )

    def _survivor_rule(self, config: RoundConfig) -> SurvivorRule | None:
        """What an active round's survivor set must satisfy, from this deployment's own
        parameters (never from the configuration the server sends)."""
        if not config.active:
            return None
        return self.params.survivor_rule(len(config.client_ids), config.degree)

    def _refuse_layers_in_sessions(self) -> None:
        plan = self.params.dp_plan
        if plan is not None and plan.config.layers is not None:
            raise ConfigurationError(
                "removable noise layers run in one-shot rounds only (not yet in sessions)"
            )

    def _noise_removal(self, config: RoundConfig) -> NoiseRemoval | None:
        """Removable noise, from this deployment's own DP block and the finder's A for the
        round's cohort (docs/XNOISE.md X3, X10): never from the configuration the server
        sends (the policy refuses one whose layers differ)."""
        return NoiseRemoval.of(self.params.dp_plan, self.params.corrupt(len(config.client_ids)))

    def error_bound(self, clients: int) -> float:
        return self.encoding.error_bound(clients)

    def disclosure(self, clients: int) -> Disclosure:
        graph = self.params.graph(clients)
        tolerated = clients - graph.threshold  # every secret needs t surviving holders
        to_see = (
            f"the server and {graph.threshold} of the client's {graph.degree} neighbours"
            if not self.params.active
            else f"the server and {graph.threshold} of the client's {graph.degree} "
            "neighbours (and no inconsistent views)"
        )
        return Disclosure(
            server_learns="the sum",
            to_see_one_update=to_see,
            tolerates=f"up to {tolerated} of {clients} ({math.floor(100 * tolerated / clients)}%)"
            if graph.complete
            else f"{self.params.dropout_rate:.0%} by design (sigma={self.params.sigma}, "
            f"eta={self.params.eta})",
        )

    def facts(self, clients: int) -> SchemeFacts:
        graph = self.params.graph(clients)
        plan = self.params.dp_plan
        dp = None
        if plan is not None:
            dp = DpFacts(
                mechanism=plan.mechanism.value,
                epsilon_target=plan.epsilon_per_round,
                delta=plan.config.delta,
                l2_clip=plan.config.l2_clip,
                noise_multiplier=plan.noise_multiplier,
                wrap_probability_bound=plan.wrap_probability_bound,
            )
        return SchemeFacts(
            protocol=self.params.protocol.value,
            title=f"{self.params.protocol.value} k={graph.degree} t={graph.threshold}, "
            f"{self.params.ring_bits}-bit ring",
            clip=self.params.clip,
            min_cohort=self.params.min_cohort,
            degree=graph.degree,
            threshold=graph.threshold,
            ring_bits=self.params.ring_bits,
            dp=dp,
            parameters={
                "protocol": self.params.protocol.value,
                "server_model": self.params.server_model.value,
                "degree": graph.degree,
                "threshold": graph.threshold,
                "ring_bits": self.params.ring_bits,
                "value_bits": self.params.value_bits,
                "clip": self.params.clip,
            },
        )

    def signing_as(
        self, client_id: int, signing_key: Ed25519SigningKey, pki: Mapping[int, bytes]
    ) -> MaskingScheme:
        return dataclasses.replace(self, identities={client_id: signing_key}, pki=pki)

    def wrapping_masks(self, wrap: Callable[[prg.ApplyMasks], prg.ApplyMasks]) -> MaskingScheme:
        return dataclasses.replace(self, apply_masks=wrap(self.apply_masks))
