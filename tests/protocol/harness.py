"""A small in-test driver of real clients and a real server, stage by stage.

Inputs sit exactly on the quantisation grid (clip = levels / 2, so one step is 1.0), which
makes the encoding deterministic: the expected ring sum of any set of clients is known
exactly, and tests can compare the unmasked result with it bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from secagg.errors import AbortReason, ClientAbort
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.client import Client
from secagg.protocol.messages import (
    Message,
    PeerKeys,
    PeerShares,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
    decode,
)
from secagg.protocol.server import Server, Stage

# The harness's stage names and the server's.
SERVER_STAGE = {
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
        self.server = Server(self.config, pki=self.pki)
        self.clients = {
            i: Client(
                self.config,
                i,
                self.rng.fork(f"client/{i}"),
                identity=self.identities[i],
                pki=self.pki,
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

    def respond(self, client_id: int, message: Message) -> Message:
        """A client's answer to a server message, dispatched by type as the service does."""
        client = self.clients[client_id]
        message = decode(message.encode())  # as it travels
        if isinstance(message, PeerKeys):
            return client.share_keys(message)
        if isinstance(message, PeerShares):
            return client.mask_input(message, self.values(client_id), self.weights[client_id])
        if isinstance(message, SurvivorList):
            return client.consistency(message)
        if isinstance(message, UnmaskRequest):
            return client.unmask(message)
        raise ClientAbort(AbortReason.UNEXPECTED_MESSAGE, type(message).__name__)

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
        for i, c in self.clients.items():
            if i not in set(skip):
                self.server.receive(i, c.advertise().encode())
        return self._close()

    def share(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        for i in self._answering(skip):
            message = PeerKeys.decode(self.outgoing[i].encode())
            self.server.receive(i, self.clients[i].share_keys(message).encode())
        return self._close()

    def mask(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        for i in self._answering(skip):
            message = PeerShares.decode(self.outgoing[i].encode())
            reply = self.clients[i].mask_input(message, self.values(i), self.weights[i])
            self.server.receive(i, reply.encode())
        return self._close()

    def consistency(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        for i in self._answering(skip):
            message = SurvivorList.decode(self.outgoing[i].encode())
            self.server.receive(i, self.clients[i].consistency(message).encode())
        return self._close()

    def unmask(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        for i in self._answering(skip):
            message = UnmaskRequest.decode(self.outgoing[i].encode())
            self.server.receive(i, self.clients[i].unmask(message).encode())
        return self._close()

    def run(self, **skips: Iterable[int]) -> None:
        self.advertise(skips.get("advertise", ()))
        self.share(skips.get("share", ()))
        self.mask(skips.get("mask", ()))
        if self.config.active:
            self.consistency(skips.get("consistency", ()))
        self.unmask(skips.get("unmask", ()))

    def _answering(self, skip: Iterable[int]) -> list[int]:
        skipped = set(skip)
        return [i for i in self.outgoing if i not in skipped]

    def _close(self) -> dict[int, Message]:
        self.outgoing = self.server.close_stage()
        return self.outgoing
