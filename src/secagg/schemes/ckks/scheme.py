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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    AbortReason,
    ClientAbort,
    ConfigurationError,
    UsageError,
)
from secagg.hazmat import ckks
from secagg.hazmat.randomness import Randomness
from secagg.protocol.codec import MAX_ID
from secagg.protocol.stages import Stage
from secagg.schemes.base import Disclosure, RoundOpening, Scheme, SchemeFacts
from secagg.schemes.ckks.client import CkksClient
from secagg.schemes.ckks.messages import CkksConfig
from secagg.schemes.ckks.server import CkksServer
from secagg.schemes.registry import SchemeKind

if TYPE_CHECKING:
    from secagg.dp.calibrate import DpPlan
    from secagg.hazmat.keys import Ed25519SigningKey
    from secagg.hazmat.prg import ApplyMasks

__all__ = ["CkksScheme", "simulated_keys"]


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

    def server(self, config: RoundOpening) -> CkksServer:
        assert isinstance(config, CkksConfig)
        if self.server_context is None:
            raise UsageError("the coordinator side needs the server context")
        return CkksServer(config, self.server_context)

    def check(self, config: RoundOpening, client_id: int) -> None:
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

    def client(self, config: RoundOpening, client_id: int, rng: Randomness) -> CkksClient:
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

    @property
    def dp_plan(self) -> DpPlan | None:
        return None  # no noise: the sum is revealed as it is

    def facts(self, clients: int) -> SchemeFacts:
        del clients
        p = self.params
        return SchemeFacts(
            protocol=SchemeKind.CKKS.value,
            title=f"CKKS N={p.poly_modulus_degree}, moduli {list(p.coeff_mod_bit_sizes)}, "
            f"scale 2^{p.scale_bits}, {self.key_holders} key holders",
            clip=self.clip,
            min_cohort=self.min_cohort,
            parameters={
                "poly_modulus_degree": p.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
                "scale_bits": p.scale_bits,
                "clip": self.clip,
                "key_holders": self.key_holders,
            },
        )

    def signing_as(
        self, client_id: int, signing_key: Ed25519SigningKey, pki: Mapping[int, bytes]
    ) -> Scheme:
        del client_id, signing_key, pki  # nothing of this scheme is signed
        return self

    def wrapping_masks(self, wrap: Callable[[ApplyMasks], ApplyMasks]) -> Scheme:
        del wrap  # no masks
        return self


def simulated_keys(params: ckks.CkksParameters) -> tuple[ckks.ClientContext, ckks.ServerContext]:
    """A dealer's keys for an in-process run: the key holders' and the coordinator's."""
    keys = ckks.CkksKeys.generate(params)
    return (
        ckks.load_client_context(keys.client_context, params),
        ckks.load_server_context(keys.server_context, params),
    )
