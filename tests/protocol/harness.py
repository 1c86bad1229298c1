"""A small in-test driver of real clients and a real server, stage by stage.

The constructor runs the session agreement (commit and reveal) unless told not to, so that
tests of the later stages start where the server waits for advertised keys and every
client's session is fixed. Clients are driven only through their one entry point
(``receive``): the ``Contributions`` that fix a client's session are answered with its
advertised keys, which the harness keeps in ``adverts`` until the advertise stage (or a
test) hands them to the server.

Inputs sit exactly on the quantisation grid (clip = levels / 2, so one step is 1.0), which
makes the encoding deterministic: the expected ring sum of any set of clients is known
exactly, and tests can compare the unmasked result with it bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import Message
from secagg.schemes.masking.client import Client
from secagg.schemes.masking.graph import SurvivorRule, survivor_rule
from secagg.schemes.masking.messages import (
    AdvertiseKeys,
    Contributions,
    PeerKeys,
    PeerShares,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
)
from secagg.schemes.masking.server import Server, Stage

# The harness's stage names and the server's.
SERVER_STAGE = {
    "commit": Stage.COMMIT,
    "reveal": Stage.REVEAL,
    "advertise": Stage.ADVERTISE,
    "share": Stage.SHARE,
    "mask": Stage.MASKED_INPUT,
    "consistency": Stage.CONSISTENCY,
    "unmask": Stage.UNMASK,
}


class Harness:
    def __init__(
        self,
        n: int = 5,
        *,
        degree: int | None = None,
        threshold: int = 3,
        dim: int = 6,
        value_bits: int = 4,
        max_weight: int = 3,
        seed: int = 1,
        ids: Iterable[int] | None = None,
        round_id: int = 0,
        active: bool = False,
        min_cohort: int = 1,
        task_hash: bytes = bytes(32),
        agree: bool = True,
        adversarial_rate: float = 0.05,
        rule: SurvivorRule | None = None,
    ) -> None:
        self.rng = DeterministicRandomness(hashlib.sha256(f"harness/{seed}".encode()).digest())
        levels = 2**value_bits - 1
        client_ids = tuple(sorted(ids)) if ids is not None else tuple(range(n))
        ring_bits = max(2, (len(client_ids) * max_weight * levels).bit_length())
        self.config = RoundConfig(
            round_id=round_id,
            nonce=self.rng.bytes(16),
            protocol="secagg" if degree is None else "secagg+",
            server_model="semi-malicious" if active else "semi-honest",
            client_ids=client_ids,
            degree=len(client_ids) - 1 if degree is None else degree,
            threshold=threshold,
            ring_bits=ring_bits,
            dim=dim,
            clip=levels / 2,
            value_bits=value_bits,
            max_weight=max_weight,
            task_hash=task_hash,
            min_cohort=min_cohort,
        )
        # Long-term identities: the PKI that active mode's signatures are checked against.
        self.identities = {
            i: Ed25519SigningKey.generate(self.rng.fork(f"identity/{i}")) for i in client_ids
        }
        self.pki = {i: key.public for i, key in self.identities.items()}
        # What each client's own deployment requires of an active round's survivor set.
        self.survivor_rule = rule or (
            survivor_rule(len(client_ids), self.config.degree, adversarial_rate, 40)
            if active
            else None
        )
        self.server = Server(self.config, pki=self.pki, survivor_rule=self.survivor_rule)
        self.clients = {
            i: Client(
                self.config,
                i,
                self.rng.fork(f"client/{i}"),
                identity=self.identities[i],
                pki=self.pki,
                survivor_rule=self.survivor_rule,
            )
            for i in client_ids
        }
        data = self.rng.fork("inputs")
        self.levels = np.asarray(data.words(len(client_ids) * dim) % (levels + 1)).reshape(
            len(client_ids), dim
        )
        self.weights = {
            i: 1 + int(w) % max_weight
            for i, w in zip(client_ids, data.words(len(client_ids)), strict=True)
        }
        self.row = {i: r for r, i in enumerate(client_ids)}
        self.outgoing: dict[int, Message] = {}
        # Each client's answer to the Contributions that fixed its session, not yet sent.
        self.adverts: dict[int, AdvertiseKeys] = {}
        for i, client in self.clients.items():
            client.set_input(self.values(i), self.weights[i])
        if agree:
            self.agree()

    @property
    def session_id(self) -> bytes:
        return self.server.session.session_id

    def agree(self, skip_commit: Iterable[int] = (), skip_reveal: Iterable[int] = ()) -> None:
        """Commit and reveal, then fix each client's session; its advertised keys (its answer
        to the contributions) wait in ``adverts`` for the advertise stage."""
        self.commit(skip_commit)
        self.reveal(skip_reveal)
        for i, message in self.outgoing.items():
            assert isinstance(message, Contributions)
            self.adverts[i] = self._advert(i, message)
        self.outgoing = {}

    def commit(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        """Attempt 1 starts every client; a later attempt answers the server's requests."""
        for i in self._answering(skip) if self.outgoing else list(self.clients):
            if i in set(skip):
                continue
            client = self.clients[i]
            reply = client.receive(self.outgoing[i].encode()) if self.outgoing else client.start()
            self.server.receive(i, reply.encode())
        return self._close()

    def reveal(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        for i in self._answering(skip):
            self.server.receive(i, self.clients[i].receive(self.outgoing[i].encode()).encode())
        return self._close()

    def respond(self, client_id: int, message: Message) -> Message:
        """A client's answer to a server message, as it travels, through its one entry point
        (given its input first when the message is the one that uses it)."""
        client = self.clients[client_id]
        if client.needs_input(message):
            client.set_input(self.values(client_id), self.weights[client_id])
        return client.receive(message.encode())

    def values(self, client_id: int) -> NDArray[np.float64]:
        return self.levels[self.row[client_id]].astype(np.float64) - self.config.clip

    def expected_total(self, included: Iterable[int]) -> NDArray[np.uint64]:
        """The exact ring sum of the included clients' weighted inputs and weights."""
        modulus = 2**self.config.ring_bits
        total = np.zeros(self.config.dim + 1, dtype=object)
        for i in included:
            w = self.weights[i]
            total[:-1] += w * self.levels[self.row[i]].astype(object)
            total[-1] += w
        return np.array([int(v) % modulus for v in total], dtype=np.uint64)

    # Each stage: the clients not in ``skip`` answer what the server sent them last.
    def advertise(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        for i in self.clients:
            if i in set(skip) or i not in self.server.session.participants:
                continue
            contributions = self.outgoing.get(i)
            if isinstance(contributions, Contributions):  # agreed and advertised in one step
                self.adverts[i] = self._advert(i, contributions)
            self.server.receive(i, self.adverts[i].encode())
        return self._close()

    def share(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        return self._answer(skip, PeerKeys)

    def mask(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        return self._answer(skip, PeerShares)

    def consistency(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        return self._answer(skip, SurvivorList)

    def unmask(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        return self._answer(skip, UnmaskRequest)

    def run(self, **skips: Iterable[int]) -> None:
        if self.server.stage in (Stage.COMMIT, Stage.REVEAL):
            self.commit(skips.get("commit", ()))
            self.reveal(skips.get("reveal", ()))
        self.advertise(skips.get("advertise", ()))
        self.share(skips.get("share", ()))
        self.mask(skips.get("mask", ()))
        if self.config.active:
            self.consistency(skips.get("consistency", ()))
        self.unmask(skips.get("unmask", ()))

    def _advert(self, client_id: int, contributions: Contributions) -> AdvertiseKeys:
        advert = self.clients[client_id].receive(contributions.encode())
        assert isinstance(advert, AdvertiseKeys)
        return advert

    def _answer(self, skip: Iterable[int], kind: type[Message]) -> dict[int, Message]:
        """The clients not skipped answer what the server sent them (which must be a
        ``kind``), as it travelled."""
        for i in self._answering(skip):
            message = kind.decode(self.outgoing[i].encode())
            self.server.receive(i, self.respond(i, message).encode())
        return self._close()

    def _answering(self, skip: Iterable[int]) -> list[int]:
        skipped = set(skip)
        return [i for i in self.outgoing if i not in skipped]

    def _close(self) -> dict[int, Message]:
        self.outgoing = self.server.close_stage()
        return self.outgoing
