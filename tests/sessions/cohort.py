"""A session cohort for tests: real clients and a real server over encoded messages, with
inputs on the quantisation grid so that every round's expected sum is known exactly.

Inputs are small integers (clip = levels / 2, so one quantisation step is 1.0): the ring sum
of any set of clients is exact, and a test compares a round's revealed sum with the plaintext
sum of exactly the clients it says are included, bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.schemes.masking.graph import SurvivorRule, survivor_rule
from secagg.schemes.masking.messages import RoundConfig
from secagg.schemes.masking.session.client import SessionClient
from secagg.schemes.masking.session.server import SessionServer
from secagg.schemes.masking.session.terms import SessionTerms
from tests.sessions.adversary import LyingSession


def task_of(round_number: int, salt: str = "") -> bytes:
    """The digest of round ``round_number``'s model (as a client computes it)."""
    return hashlib.sha256(f"model/{round_number}/{salt}".encode()).digest()


class Cohort:
    """``n`` clients on the complete graph (``degree`` None) or a SecAgg+ graph."""

    def __init__(
        self,
        n: int = 8,
        *,
        degree: int | None = None,
        threshold: int = 3,
        dim: int = 5,
        value_bits: int = 4,
        max_weight: int = 2,
        seed: int = 1,
        active: bool = False,
        min_cohort: int = 1,
        max_rounds: int = 20,
        max_seconds: int = 3600,
        min_live_neighbours: int | None = None,
        rule: SurvivorRule | None = None,
        clock: list[float] | None = None,
    ) -> None:
        self.rng = DeterministicRandomness(hashlib.sha256(f"sessions/{seed}".encode()).digest())
        levels = 2**value_bits - 1
        ids = tuple(range(n))
        ring_bits = max(2, (n * max_weight * levels).bit_length())
        config = RoundConfig(
            round_id=seed,
            nonce=self.rng.bytes(16),
            protocol="secagg" if degree is None else "secagg+",
            server_model="semi-malicious" if active else "semi-honest",
            client_ids=ids,
            degree=n - 1 if degree is None else degree,
            threshold=threshold,
            ring_bits=ring_bits,
            dim=dim,
            clip=levels / 2,
            value_bits=value_bits,
            max_weight=max_weight,
            min_cohort=min_cohort,
        )
        self.terms = SessionTerms.carrying(
            config,
            max_rounds=max_rounds,
            max_seconds=max_seconds,
            min_live_neighbours=min_live_neighbours,
        )
        self.config = self.terms.config
        self.levels = levels
        self.identities = {u: Ed25519SigningKey.generate(self.rng) for u in ids}
        self.pki = {u: key.public for u, key in self.identities.items()}
        self.rule = rule or (survivor_rule(n, config.degree, 0.0, 40) if active else None)
        self.clock = clock if clock is not None else [0.0]
        self.server = SessionServer(self.terms, pki=self.pki, survivor_rule=self.rule)
        self.local = LyingSession(self.server, self._client)
        self.clients = self.local.clients
        self._round_rng = np.random.default_rng(seed)

    def _client(self, u: int) -> SessionClient:
        return SessionClient(
            self.terms,
            u,
            self.rng.fork(f"client/{u}"),
            identity=self.identities[u],
            pki=self.pki,
            survivor_rule=self.rule,
            clock=lambda: self.clock[0],
        )

    def updates(self) -> dict[int, tuple[NDArray[np.float64], int]]:
        """Fresh inputs on the quantisation grid, and weights, for every client."""
        clip = self.config.clip
        return {
            u: (
                self._round_rng.integers(0, self.levels + 1, self.config.dim) - clip,
                int(self._round_rng.integers(1, self.config.max_weight + 1)),
            )
            for u in self.config.client_ids
        }

    def expected_ring_sum(
        self, updates: Mapping[int, tuple[NDArray[np.float64], int]], included: tuple[int, ...]
    ) -> list[int]:
        """The ring sum the round must reveal for exactly ``included``: each input's grid
        levels times its weight, summed, then the total weight (the encoding's layout)."""
        clip = self.config.clip
        total = [0] * (self.config.dim + 1)
        for u in included:
            values, weight = updates[u]
            for i, x in enumerate(values):
                total[i] += round(x + clip) * weight
            total[-1] += weight
        modulus = 1 << self.config.ring_bits
        return [value % modulus for value in total]
