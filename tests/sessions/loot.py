"""What a server can recover of individual inputs from everything it was sent.

For every client u and round r whose round message the server holds, the loot pools every
share any client revealed of u's round-r secrets: t shares of the self-mask seed (checked
against u's commitment) and t of the round-r mask private key (checked against the key u
announced for round r) open u's masked input completely. That is the whole attack surface of
a server that only combines what it was sent: any input it can open is in ``recovered``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from secagg.errors import InconsistentSharesError
from secagg.hazmat import prg
from secagg.hazmat.keys import X25519KeyPair, x25519_public_from_private
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import Share, combine
from secagg.schemes.masking import derivations as one_shot
from secagg.schemes.masking.messages import RoundConfig
from secagg.schemes.masking.session import derivations
from tests.sessions.adversary import Transcript


def pooled_shares(
    transcript: Transcript, round_number: int
) -> tuple[dict[int, list[Share]], dict[int, list[Share]]]:
    """Every share revealed in ``round_number``, by owner: (self-mask seeds, mask keys)."""
    seeds: dict[int, list[Share]] = {}
    keys: dict[int, list[Share]] = {}
    for answer in transcript.answers:
        if answer.round_number != round_number:
            continue
        x = one_shot.share_x(answer.client_id)
        for owner, value in answer.self_mask_shares:
            seeds.setdefault(owner, []).append(Share.from_value_bytes(x, value))
        for owner, value in answer.key_shares:
            keys.setdefault(owner, []).append(Share.from_value_bytes(x, value))
    return seeds, keys


def rebuild(shares: list[Share], threshold: int, check: Callable[[bytes], bool]) -> bytes | None:
    """A secret from any t of ``shares`` that passes ``check``, else None."""
    for window in itertools.combinations(shares, threshold):
        try:
            secret = combine(list(window), threshold)
        except InconsistentSharesError:
            continue
        if check(secret):
            return bytes(secret)
    return None


def recovered(
    transcript: Transcript,
    config: RoundConfig,
    *,
    mask_keys: dict[tuple[int, int], bytes] | None = None,
) -> dict[tuple[int, int], NDArray[np.uint64]]:
    """Every (client, round) whose input the server can open, with the ring vector it gets.

    ``mask_keys`` adds round mask private keys the attacker obtained another way (a read of
    a client's state), by (client, round)."""
    ring = Ring(config.ring_bits)
    t = config.threshold
    out: dict[tuple[int, int], NDArray[np.uint64]] = {}
    for (r, u), message in sorted(transcript.round_messages.items()):
        members = transcript.members[r]
        ctx = transcript.contexts[r]
        seeds, keys = pooled_shares(transcript, r)
        member = members[u]
        seed = rebuild(seeds.get(u, []), t, _opens_commitment(ctx, u, message.self_mask_commitment))
        private = (mask_keys or {}).get((u, r))
        if private is not None and not _opens_public_key(member.mask_public)(private):
            private = None  # a key read elsewhere opens only the round it was announced for
        if private is None:
            private = rebuild(keys.get(u, []), t, _opens_public_key(member.mask_public))
        if seed is None or private is None:
            continue
        vector = ring.unpack(message.packed_vector, config.vector_length)
        prg.add_mask(vector, derivations.self_mask_key(seed, ctx, u), subtract=True)
        pair = X25519KeyPair.from_private_bytes(private)
        for v in sorted(member.live):
            v_public = members[v].mask_public
            key = derivations.pair_mask_key(
                pair.exchange(v_public), ctx, u, member.mask_public, v, v_public
            )
            prg.add_mask(vector, key, subtract=not one_shot.subtracts_pair_mask(u, v))
        ring.reduce(vector)
        out[(u, r)] = vector
    return out


def _opens_commitment(ctx: bytes, owner: int, commitment: bytes) -> Callable[[bytes], bool]:
    return lambda seed: derivations.self_mask_commitment(seed, ctx, owner) == commitment


def _opens_public_key(public: bytes) -> Callable[[bytes], bool]:
    return lambda private: x25519_public_from_private(private) == public


def encoded(values: NDArray[np.floating], weight: int, config: RoundConfig) -> list[int]:
    """The ring vector an input on the grid encodes to (levels times weight, then weight)."""
    return [round(x + config.clip) * weight for x in values] + [weight]
