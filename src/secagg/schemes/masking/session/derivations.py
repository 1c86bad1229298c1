"""Every key, digest and signed text of a session, computed alike by client and server.

Each derivation has one label and binds what it serves: the set-up's (``setup_context``)
or a round's context ``ctx_r`` (``round_context``: session, round, configuration and the
model digest the client computed itself), and both parties with their public keys. No secret
of one round enters a derivation of another, except the share chain key, which only moves
forward (docs/SESSIONS.md 1.2, rule S9).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from secagg.errors import DecodeError
from secagg.hazmat.kdf import derive_key, encode_fields
from secagg.hazmat.prg import MASK_KEY_BYTES
from secagg.hazmat.shamir import SHARE_VALUE_BYTES
from secagg.schemes.masking.messages import KEY_BYTES

__all__ = [
    "ROUND_SHARE_PLAINTEXT_BYTES",
    "SETUP_SHARE_PLAINTEXT_BYTES",
    "advance_chain",
    "chain_digest",
    "chain_start",
    "consistency_signed_bytes",
    "decode_round_share",
    "decode_setup_share",
    "encode_round_share",
    "encode_setup_share",
    "first_chain_key",
    "next_key_signed_bytes",
    "pair_mask_key",
    "round_context",
    "round_share_associated_data",
    "round_share_key",
    "self_mask_commitment",
    "self_mask_key",
    "setup_context",
    "setup_share_associated_data",
    "setup_share_key",
]

# (from, to, round, share of the self-mask seed, share of the next mask key, next mask key)
ROUND_SHARE_PLAINTEXT_BYTES = 4 + 4 + 4 + 2 * SHARE_VALUE_BYTES + KEY_BYTES
# (from, to, 0, share of round 1's mask key, round 1's mask key)
SETUP_SHARE_PLAINTEXT_BYTES = 4 + 4 + 4 + SHARE_VALUE_BYTES + KEY_BYTES


def _h(*fields: bytes | int | str) -> bytes:
    return hashlib.sha256(encode_fields(*fields)).digest()


def _ordered(a: int, a_public: bytes, b: int, b_public: bytes) -> tuple[int, int, bytes, bytes]:
    (lo, lo_pk), (hi, hi_pk) = sorted(((a, a_public), (b, b_public)))
    return lo, hi, lo_pk, hi_pk


def setup_context(session_id: bytes) -> bytes:
    """ctx_0: what the set-up's share ciphertexts are bound to."""
    return _h("secagg/v1/session-setup", session_id)


def round_context(session_id: bytes, round_number: int, config_id: bytes, task: bytes) -> bytes:
    """ctx_r: everything of round r is derived, sealed or signed under it. ``task`` is the
    digest of what the client trains on, computed by the client, never the server's word."""
    return _h("secagg/v1/session-round", session_id, round_number, config_id, task)


# ----------------------------------------------------------------- the share channel
def first_chain_key(
    shared_secret: bytes, session_id: bytes, a: int, a_public: bytes, b: int, b_public: bytes
) -> bytes:
    """ck_uv,1, from the exchange of the two set-up cipher keys."""
    lo, hi, lo_pk, hi_pk = _ordered(a, a_public, b, b_public)
    return derive_key(shared_secret, "session-share-chain", session_id, lo, hi, lo_pk, hi_pk)


def setup_share_key(chain_key: bytes, setup_ctx: bytes) -> bytes:
    return derive_key(chain_key, "session-setup-share", setup_ctx)


def setup_share_associated_data(setup_ctx: bytes, sender: int, recipient: int) -> bytes:
    return encode_fields("secagg/v1/session-share", setup_ctx, sender, recipient, 0)


def round_share_key(
    chain_key: bytes,
    fresh_exchange: bytes,
    ctx: bytes,
    sender: int,
    recipient: int,
    sender_next_cipher: bytes,
    recipient_cipher: bytes,
) -> bytes:
    """e_u->v,r: the chain key of the pair mixed with a fresh exchange between the sender's
    next cipher key and the recipient's current one (a read of either party's state before
    the round cannot compute it: attack F1)."""
    return derive_key(
        chain_key + fresh_exchange,
        "session-share",
        ctx,
        sender,
        recipient,
        sender_next_cipher,
        recipient_cipher,
    )


def round_share_associated_data(
    ctx: bytes, sender: int, recipient: int, round_number: int, sender_next_cipher: bytes
) -> bytes:
    return encode_fields(
        "secagg/v1/session-share", ctx, sender, recipient, round_number, sender_next_cipher
    )


def advance_chain(
    chain_key: bytes,
    low_to_high: bytes,
    high_to_low: bytes,
    session_id: bytes,
    next_round: int,
    a: int,
    b: int,
) -> bytes:
    """ck_uv,r+1 from ck_uv,r and both directions' fresh exchanges of round r: one-way, and
    indexed by the round it serves (never by counting closes)."""
    lo, hi = sorted((a, b))
    return derive_key(
        chain_key + low_to_high + high_to_low,
        "session-share-chain-next",
        session_id,
        next_round,
        lo,
        hi,
    )


# ----------------------------------------------------------------- masks
def pair_mask_key(
    shared_secret: bytes, ctx: bytes, a: int, a_public: bytes, b: int, b_public: bytes
) -> bytes:
    """Round r's pairwise mask seed of two neighbours, from their round-r mask keys."""
    lo, hi, lo_pk, hi_pk = _ordered(a, a_public, b, b_public)
    return derive_key(
        shared_secret, "session-pair-mask", ctx, lo, hi, lo_pk, hi_pk, length=MASK_KEY_BYTES
    )


def self_mask_key(seed: bytes, ctx: bytes, owner: int) -> bytes:
    return derive_key(seed, "session-self-mask", ctx, owner, length=MASK_KEY_BYTES)


def self_mask_commitment(seed: bytes, ctx: bytes, owner: int) -> bytes:
    """Binds a client to its round's self-mask seed (uniform, so the hash hides it)."""
    return _h("secagg/v1/session-self-mask-commitment", ctx, owner, seed)


# ----------------------------------------------------------------- signatures (active mode)
def next_key_signed_bytes(
    session_id: bytes,
    next_round: int,
    client_id: int,
    mask_public: bytes,
    cipher_public: bytes,
    ctx: bytes,
) -> bytes:
    """What a client signs for its keys of the next round: exactly one per round."""
    return encode_fields(
        "secagg/v1/session-next-key",
        session_id,
        next_round,
        client_id,
        mask_public,
        cipher_public,
        ctx,
    )


def chain_start(session_id: bytes, participants: Iterable[int]) -> bytes:
    """H_0: the session and who is in it."""
    return _h("secagg/v1/session-chain-0", session_id, _ids(participants))


def chain_digest(
    previous: bytes, session_id: bytes, round_number: int, ctx: bytes, survivors: Iterable[int]
) -> bytes:
    """H_r: round r's survivor set chained to every earlier one, so a certificate on it
    fixes the session's whole history (who left when, and every round's context)."""
    return _h("secagg/v1/session-chain", previous, session_id, round_number, ctx, _ids(survivors))


def consistency_signed_bytes(chain: bytes) -> bytes:
    return encode_fields("secagg/v1/session-consistency", chain)


def _ids(ids: Iterable[int]) -> bytes:
    return b"".join(i.to_bytes(4, "big") for i in ids)


# ----------------------------------------------------------------- share plaintexts
def encode_setup_share(sender: int, recipient: int, key_share: bytes, mask_public: bytes) -> bytes:
    return struct.pack(">III", sender, recipient, 0) + key_share + mask_public


def decode_setup_share(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(from, to, share of round 1's mask key, round 1's mask public key)."""
    if len(data) != SETUP_SHARE_PLAINTEXT_BYTES:
        raise DecodeError(f"a set-up share must be {SETUP_SHARE_PLAINTEXT_BYTES} bytes")
    sender, recipient, zero = struct.unpack(">III", data[:12])
    if zero != 0:
        raise DecodeError("a set-up share serves round 0")
    middle = 12 + SHARE_VALUE_BYTES
    return sender, recipient, data[12:middle], data[middle:]


def encode_round_share(
    sender: int,
    recipient: int,
    round_number: int,
    seed_share: bytes,
    key_share: bytes,
    next_mask_public: bytes,
) -> bytes:
    return (
        struct.pack(">III", sender, recipient, round_number)
        + seed_share
        + key_share
        + next_mask_public
    )


def decode_round_share(data: bytes) -> tuple[int, int, int, bytes, bytes, bytes]:
    """(from, to, round, share of the self-mask seed, share of the next mask key, the next
    mask public key)."""
    if len(data) != ROUND_SHARE_PLAINTEXT_BYTES:
        raise DecodeError(f"a round share must be {ROUND_SHARE_PLAINTEXT_BYTES} bytes")
    sender, recipient, round_number = struct.unpack(">III", data[:12])
    a = 12 + SHARE_VALUE_BYTES
    b = a + SHARE_VALUE_BYTES
    return sender, recipient, round_number, data[12:a], data[a:b], data[b:]
