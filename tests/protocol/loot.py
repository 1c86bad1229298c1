"""What a malicious server holds after a round, and everything it can compute from it.

Shared by the sans-I/O attacks (``test_attacks.py``) and the attacks played over the wire
against real client processes (``tests/service/test_wire_attacks.py``): a verdict is never just
"a client refused", but what the attacker's loot actually lets it recover. ``recover`` rebuilds
every secret the collected shares allow and strips every mask it can from a masked input.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from secagg.errors import InconsistentSharesError
from secagg.hazmat import prg
from secagg.hazmat.keys import X25519KeyPair, x25519_public_from_private
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share, combine
from secagg.protocol.codec import Message
from secagg.schemes.masking import derivations as derive
from secagg.schemes.masking.messages import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    PeerShares,
    RoundConfig,
    UnmaskResponse,
)


class Loot:
    """Every client message of one session the attacker kept (and what it sent)."""

    def __init__(self, config: RoundConfig, session_id: bytes) -> None:
        self.config = config
        self.session_id = session_id
        self.adverts: dict[int, AdvertiseKeys] = {}
        self.commitments: dict[int, bytes] = {}  # self-mask commitments
        self.sealed: dict[int, dict[int, bytes]] = {}  # sender -> recipient -> ciphertext
        self.masked: dict[int, NDArray[np.unsignedinteger]] = {}
        self.masked_with: dict[int, frozenset[int]] = {}
        self.self_mask_shares: dict[int, dict[int, Share]] = {}  # owner -> holder -> share
        self.key_shares: dict[int, dict[int, Share]] = {}
        # Removable noise: each sharer's layer-seed commitments, and (owner, layer) -> holder
        # -> share of the layer seeds released.
        self.layer_commitments: dict[int, tuple[bytes, ...]] = {}
        self.layer_shares: dict[tuple[int, int], dict[int, Share]] = {}

    def take(self, sender: int, message: Message) -> None:
        """Keep what a client sent."""
        if isinstance(message, AdvertiseKeys):
            self.adverts[sender] = message
        elif isinstance(message, EncryptedShares):
            self.commitments[sender] = message.self_mask_commitment
            self.sealed[sender] = dict(message.ciphertexts)
            self.layer_commitments[sender] = message.layer_commitments
        elif isinstance(message, MaskedInput):
            ring = Ring(self.config.ring_bits)
            self.masked[sender] = ring.unpack(message.packed_vector, self.config.vector_length)
        elif isinstance(message, UnmaskResponse):
            x = derive.share_x(sender)
            for owner, value in message.self_mask_shares:
                self.self_mask_shares.setdefault(owner, {})[sender] = Share.from_value_bytes(
                    x, value
                )
            for owner, value in message.key_shares:
                self.key_shares.setdefault(owner, {})[sender] = Share.from_value_bytes(x, value)
            if message.layers is not None:
                for owner, layer, value in message.layers.shares:
                    self.layer_shares.setdefault((owner, layer), {})[sender] = (
                        Share.from_value_bytes(x, value)
                    )

    def sent(self, recipient: int, message: Message) -> None:
        """Note what the attacker told a client: whose masks its masked input will hold."""
        if isinstance(message, PeerShares):
            self.masked_with[recipient] = frozenset(u for u, _ in message.ciphertexts)

    # ------------------------------------------------------------------ what it can compute
    def _secret(self, shares: Iterable[Share], check: object) -> bytes | None:
        shares = list(shares)
        t = self.config.threshold
        if len(shares) < t:
            return None
        try:
            secret = combine(shares[:t], t)
        except InconsistentSharesError:
            return None
        return secret if check(secret) else None  # type: ignore[operator]

    def self_mask_seed(self, owner: int) -> bytes | None:
        sid = self.session_id
        commitment = self.commitments.get(owner)
        return self._secret(
            self.self_mask_shares.get(owner, {}).values(),
            lambda s: derive.self_mask_commitment(s, sid, owner) == commitment,
        )

    def layer_seed(self, owner: int, layer: int) -> bytes | None:
        """A noise layer's seed, if the loot rebuilds it (checked against its commitment)."""
        sid = self.session_id
        commitments = self.layer_commitments.get(owner, ())
        if layer >= len(commitments):
            return None
        return self._secret(
            self.layer_shares.get((owner, layer), {}).values(),
            lambda s: derive.layer_commitment(s, sid, owner, layer) == commitments[layer],
        )

    def layers_recovered(self, owner: int) -> frozenset[int]:
        """Every layer of ``owner``'s noise whose seed the loot rebuilds: what it can take off."""
        count = len(self.layer_commitments.get(owner, ()))
        return frozenset(j for j in range(count) if self.layer_seed(owner, j) is not None)

    def mask_key(self, owner: int) -> bytes | None:
        advert = self.adverts.get(owner)
        if advert is None:
            return None
        return self._secret(
            self.key_shares.get(owner, {}).values(),
            lambda s: x25519_public_from_private(s) == advert.mask_public,
        )

    def recover(self, owner: int) -> NDArray[np.unsignedinteger] | None:
        """The owner's encoded input, if the loot strips every mask off its masked input."""
        if owner not in self.masked or owner not in self.masked_with:
            return None
        seed, private = self.self_mask_seed(owner), self.mask_key(owner)
        if seed is None or private is None:
            return None
        sid = self.session_id
        vector = self.masked[owner].copy()
        prg.add_mask(vector, derive.self_mask_key(seed, sid, owner), subtract=True)
        keys = X25519KeyPair.from_private_bytes(private)
        for peer in self.masked_with[owner]:
            peer_public = self.adverts[peer].mask_public
            key = derive.pair_mask_key(
                keys.exchange(peer_public), sid, owner, keys.public, peer, peer_public
            )
            prg.add_mask(vector, key, subtract=not derive.subtracts_pair_mask(owner, peer))
        return Ring(self.config.ring_bits).reduce(vector)

    def sum_of(
        self, survivors: Iterable[int], dropped: Iterable[int]
    ) -> NDArray[np.unsignedinteger] | None:
        """The sum of the survivors' inputs, if the loot removes every mask from it."""
        sid = self.session_id
        ring = Ring(self.config.ring_bits)
        survivors, dropped = list(survivors), list(dropped)
        total = ring.zeros(self.config.vector_length)
        for u in survivors:
            seed = self.self_mask_seed(u)
            if u not in self.masked or seed is None:
                return None
            ring.add_into(total, self.masked[u])
            prg.add_mask(total, derive.self_mask_key(seed, sid, u), subtract=True)
        for d in dropped:
            private = self.mask_key(d)
            if private is None:
                return None
            keys = X25519KeyPair.from_private_bytes(private)
            for v in survivors:
                if d not in self.masked_with[v]:
                    continue
                v_public = self.adverts[v].mask_public
                key = derive.pair_mask_key(
                    keys.exchange(v_public), sid, d, keys.public, v, v_public
                )
                prg.add_mask(total, key, subtract=not derive.subtracts_pair_mask(v, d))
        return ring.reduce(total)

    # ------------------------------------------------------------------ sums over parts
    def recoverable_sums(
        self, known_keys: dict[int, bytes] | None = None
    ) -> dict[frozenset[int], NDArray[np.unsignedinteger]]:
        """Every smallest set of inputs whose sum the loot unmasks, with the sum.

        A pairwise mask between u and v is removable when the mask key of either is known
        (rebuilt from shares, or a corrupt client's, ``known_keys``); otherwise it stays in
        both masked inputs and only cancels when both are in the sum. So the smallest sums are
        the connected components of the graph of unremovable masks, and one is unmasked when
        each of its members sent a masked input whose self-mask seed the loot rebuilds.
        """
        keys = dict(known_keys or {})
        for owner in self.adverts:
            private = self.mask_key(owner)
            if private is not None:
                keys[owner] = private
        parent: dict[int, int] = {}

        def root(u: int) -> int:
            while parent.setdefault(u, u) != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u

        for u, peers in self.masked_with.items():
            root(u)
            for v in peers:
                if u not in keys and v not in keys:
                    parent[root(u)] = root(v)
        components: dict[int, set[int]] = {}
        for u in parent:
            components.setdefault(root(u), set()).add(u)
        sums: dict[frozenset[int], NDArray[np.unsignedinteger]] = {}
        for members in components.values():
            if all(u in self.masked and self.self_mask_seed(u) is not None for u in members):
                sums[frozenset(members)] = self._component_sum(members, keys)
        return sums

    def _component_sum(
        self, members: set[int], keys: dict[int, bytes]
    ) -> NDArray[np.unsignedinteger]:
        sid = self.session_id
        ring = Ring(self.config.ring_bits)
        total = ring.zeros(self.config.vector_length)
        for u in members:
            seed = self.self_mask_seed(u)
            assert seed is not None
            ring.add_into(total, self.masked[u])
            prg.add_mask(total, derive.self_mask_key(seed, sid, u), subtract=True)
            for v in self.masked_with[u] - members:  # each such mask has a known key
                owner, other = (u, v) if u in keys else (v, u)
                pair = X25519KeyPair.from_private_bytes(keys[owner])
                public = self.adverts[other].mask_public
                key = derive.pair_mask_key(
                    pair.exchange(public), sid, owner, pair.public, other, public
                )
                # Added by u as u's mask against v: remove it the way u added it.
                prg.add_mask(total, key, subtract=not derive.subtracts_pair_mask(u, v))
        return ring.reduce(total)
