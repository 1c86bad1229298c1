"""A CKKS deployment's settings: what its ``[round]`` and ``[ckks]`` sections fix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from secagg.checks import is_int
from secagg.errors import ConfigurationError
from secagg.hazmat import ckks
from secagg.hazmat.randomness import Randomness
from secagg.knobs import knob
from secagg.schemes.ckks.scheme import CkksScheme, simulated_keys
from secagg.schemes.registry import SchemeKind

if TYPE_CHECKING:
    from secagg.dp.calibrate import DpPlan
    from secagg.hazmat.prg import ApplyMasks

__all__ = ["CkksSettings"]


@dataclass(frozen=True)
class CkksSettings:
    """The round parameters of a CKKS deployment: what ``[round]`` and ``[ckks]`` fix.

    ``dim``, ``max_clients``, ``clip``, ``max_weight`` and ``min_cohort`` mean what they mean
    for masking (``secagg.schemes.masking.parameters.Params``); ``params`` are the CKKS
    parameters (NVFlare's by default) and ``key_holders`` how many clients of each cohort are
    asked to decrypt the sum (any one suffices). Refused on construction (``ConfigurationError``
    naming the knob): a cohort of ``max_clients`` whose weighted sum would overflow the
    parameters' headroom or whose total weight would not decrypt exactly.
    """

    dim: int = knob(section="round", flag="--dim", help="The length of a model update.")
    max_clients: int = knob(
        section="round", flag="--clients", help="The largest cohort (it sizes the headroom)."
    )
    clip: float = knob(
        section="round", flag="--clip", help="Each value is clipped to [-clip, clip].", default=1.0
    )
    max_weight: int = knob(
        section="round",
        flag="--max-weight",
        help="The largest integer weight a client may give its update (1: a plain mean).",
        default=1,
    )
    min_cohort: int = knob(
        section="round",
        flag="--min-cohort",
        help="The fewest inputs a key holder accepts in a sum.",
        default=1,
    )
    params: ckks.CkksParameters = field(default_factory=ckks.CkksParameters)
    key_holders: int = knob(
        section="ckks", help="Clients asked to decrypt each sum (any one suffices).", default=2
    )
    error_bound: float = field(init=False)

    def __post_init__(self) -> None:
        if not is_int(self.dim) or not 1 <= self.dim < 2**32 - 1:
            raise ConfigurationError("dim must be a positive integer")
        if not is_int(self.max_clients) or not 3 <= self.max_clients < 2**32:
            raise ConfigurationError("max_clients must be an integer in [3, 2**32)")
        if not is_int(self.max_weight) or not 1 <= self.max_weight < 2**31:
            raise ConfigurationError("max_weight must be an integer in [1, 2**31)")
        if (
            isinstance(self.clip, bool)
            or not isinstance(self.clip, int | float)
            or not math.isfinite(self.clip)
            or self.clip <= 0
        ):
            raise ConfigurationError(f"clip must be finite and positive, got {self.clip!r}")
        if not is_int(self.min_cohort) or not 1 <= self.min_cohort <= self.max_clients:
            raise ConfigurationError(
                f"min_cohort must be an integer in [1, max_clients = {self.max_clients}]"
            )
        if not is_int(self.key_holders) or not 1 <= self.key_holders <= self.max_clients:
            raise ConfigurationError(
                f"key_holders must be an integer in [1, max_clients = {self.max_clients}]"
            )
        if not isinstance(self.params, ckks.CkksParameters):
            raise ConfigurationError("params must be CkksParameters")
        # The largest cohort must fit the parameters (this raises, naming what to lower).
        bound = ckks.error_bound(self.params, self.max_clients, float(self.clip), self.max_weight)
        object.__setattr__(self, "error_bound", bound)

    @classmethod
    def of(cls, settings: object, what: str) -> CkksSettings:
        """``settings`` as this scheme's, for code that runs this scheme only (``what``
        names it): a ``ConfigurationError`` for another scheme's settings."""
        if not isinstance(settings, cls):
            kind = getattr(settings, "kind", type(settings).__name__)
            raise ConfigurationError(f"{what} runs {SchemeKind.CKKS.value}, not {kind}")
        return settings

    @property
    def kind(self) -> SchemeKind:
        return SchemeKind.CKKS

    @property
    def dp_plan(self) -> DpPlan | None:
        return None  # CKKS adds no noise

    def largest_message_bytes(self) -> int:
        # An upload (or the encrypted sum sent to a key holder, with the ids it includes) is
        # one ciphertext per ``slots`` values; a key holder's answer is the mean as float64.
        ids = 4 * self.max_clients
        ciphertexts = self.params.ciphertexts_for(self.dim) * (4 + self.params.max_ciphertext_bytes)
        return max(ciphertexts + 64 + ids, 8 * self.dim, self.opening_message_bytes())

    def opening_message_bytes(self) -> int:
        return 2 * 4 * self.max_clients  # the cohort and the key holders

    def check_min_clients(self, clients: int) -> None:
        del clients  # any cohort of at least min_cohort runs (checked on construction)

    def simulated(
        self, client_ids: Sequence[int], rng: Randomness, *, apply_masks: ApplyMasks | None = None
    ) -> CkksScheme:
        """The scheme holding both contexts, from a dealer's keys made for this run (SEAL
        draws its own randomness: ``rng`` is not used)."""
        del rng, apply_masks  # SEAL draws its own; no masks
        client, server = simulated_keys(self.params)
        return self.scheme(
            client_context=client, server_context=server, allowed=frozenset(client_ids)
        )

    def scheme(
        self,
        *,
        client_context: ckks.ClientContext | None = None,
        server_context: ckks.ServerContext | None = None,
        allowed: frozenset[int] | None = None,
    ) -> CkksScheme:
        """The deployment's scheme, holding the context of the side that runs it."""
        return CkksScheme(
            dim=self.dim,
            max_weight=self.max_weight,
            clip=float(self.clip),
            min_cohort=self.min_cohort,
            params=self.params,
            client_context=client_context,
            server_context=server_context,
            allowed=allowed,
            key_holders=self.key_holders,
        )
