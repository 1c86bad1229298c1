"""Key derivations and layouts that client and server must compute identically.

Each derived key has one purpose, named by a label, and binds the session id and both
parties (ids and public keys), so that no key is ever used for two purposes and nothing
derived in one session is valid in another.

The session itself is agreed first (:class:`Session`): every client commits to a fresh random
contribution, the server fixes the digest of all commitments before anyone reveals, and the
session id and the SecAgg+ graph seed are hashes of the configuration and every revealed
contribution. A client's own fresh randomness is therefore in every session it takes part in
(no replay), and the server, which sees the contributions only after it has fixed the
commitments, cannot choose the graph (no grinding).

Each client checks every contribution of the cohort against the digest: O(n) per client, by
necessity (docs/LINEAR_AGREEMENT.md: any contribution a client does not check is one the
server can change after the reveals). So that check is kept cheap: the list stays its wire
bytes (``messages.ContributionList``), its ids are checked as arrays, and the n commitments
are hashed once per process for every client in it that checks the same list
(:func:`contributions_digest`, memoised on its exact inputs).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.errors import DecodeError
from secagg.hazmat.kdf import derive_key, encode_fields
from secagg.hazmat.prg import MASK_KEY_BYTES
from secagg.hazmat.shamir import SHARE_VALUE_BYTES
from secagg.schemes.masking.graph import neighbours_of
from secagg.schemes.masking.messages import (
    CONTRIBUTION_BYTES,
    CONTRIBUTION_ENTRY_BYTES,
    SHARE_PLAINTEXT_BYTES,
    ContributionList,
    RoundConfig,
)

__all__ = [
    "Session",
    "commitment_digest",
    "contribution_commitment",
    "contribution_commitments",
    "contributions_digest",
    "first_stranger",
    "layer_commitment",
    "pair_mask_key",
    "self_mask_commitment",
    "self_mask_key",
    "share_associated_data",
    "share_encryption_key",
    "share_x",
    "sorted_unique",
    "subtracts_pair_mask",
]


def share_x(client_id: int) -> int:
    """Shamir x-coordinate of the shares a client holds (never 0, where the secret lives)."""
    return client_id + 1


def subtracts_pair_mask(owner: int, peer: int) -> bool:
    """The lower id adds the pairwise mask and the higher one subtracts it, so they cancel."""
    return owner > peer


def pair_mask_key(
    shared_secret: bytes, session_id: bytes, a: int, a_public: bytes, b: int, b_public: bytes
) -> bytes:
    (lo, lo_pk), (hi, hi_pk) = sorted(((a, a_public), (b, b_public)))
    return derive_key(
        shared_secret, "pair-mask", session_id, lo, hi, lo_pk, hi_pk, length=MASK_KEY_BYTES
    )


def share_encryption_key(
    shared_secret: bytes, session_id: bytes, a: int, a_public: bytes, b: int, b_public: bytes
) -> bytes:
    (lo, lo_pk), (hi, hi_pk) = sorted(((a, a_public), (b, b_public)))
    return derive_key(shared_secret, "share-encryption", session_id, lo, hi, lo_pk, hi_pk)


def share_associated_data(session_id: bytes, sender: int, recipient: int) -> bytes:
    return encode_fields("secagg/v1/share-keys", session_id, sender, recipient)


def self_mask_key(seed: bytes, session_id: bytes, owner: int) -> bytes:
    return derive_key(seed, "self-mask", session_id, owner, length=MASK_KEY_BYTES)


def self_mask_commitment(seed: bytes, session_id: bytes, owner: int) -> bytes:
    """Binds a client to its self-mask seed without revealing it (the seed is uniform)."""
    return hashlib.sha256(
        encode_fields("secagg/v1/self-mask-commitment", session_id, owner, seed)
    ).digest()


def advertise_signed_bytes(
    session_id: bytes, client_id: int, cipher_public: bytes, mask_public: bytes
) -> bytes:
    """What a client signs in active mode: its two keys, for this session only."""
    return encode_fields("secagg/v1/advertise", session_id, client_id, cipher_public, mask_public)


def consistency_signed_bytes(session_id: bytes, survivors: tuple[int, ...]) -> bytes:
    """What every client signs in the consistency round: the one survivor set it was shown."""
    return encode_fields(
        "secagg/v1/consistency", session_id, struct.pack(f">{len(survivors)}I", *survivors)
    )


def layer_commitment(seed: bytes, session_id: bytes, owner: int, layer: int) -> bytes:
    """Binds a client to one noise layer's seed as ``self_mask_commitment`` binds it to its
    self-mask seed (the seed is uniform, so the hash hides it): a holder's bad share of it is
    caught, not subtracted (docs/XNOISE.md X6)."""
    return hashlib.sha256(
        encode_fields("secagg/v1/noise-layer-commitment", session_id, owner, layer, seed)
    ).digest()


def encode_share_plaintext(
    sender: int, recipient: int, self_mask: bytes, key: bytes, layers: Sequence[bytes] = ()
) -> bytes:
    """One holder's sealed plaintext: the self-mask and key shares, then (removable noise)
    a share of each layer seed, so that one holder holds all or none of them."""
    return struct.pack(">II", sender, recipient) + self_mask + key + b"".join(layers)


def decode_share_plaintext(data: bytes) -> tuple[int, int, bytes, bytes]:
    """(sender, recipient, self-mask share, key share) of a plaintext without layers."""
    sender, recipient, self_mask, key, _ = decode_layered_share_plaintext(data, 0)
    return sender, recipient, self_mask, key


def decode_layered_share_plaintext(
    data: bytes, layers: int
) -> tuple[int, int, bytes, bytes, tuple[bytes, ...]]:
    """(sender, recipient, self-mask share, key share, layer shares) of a plaintext that
    must hold exactly ``layers`` layer shares."""
    if len(data) != SHARE_PLAINTEXT_BYTES + layers * SHARE_VALUE_BYTES:
        raise DecodeError(
            f"share plaintext must be {SHARE_PLAINTEXT_BYTES + layers * SHARE_VALUE_BYTES} bytes"
        )
    sender, recipient = struct.unpack(">II", data[:8])
    middle = 8 + SHARE_VALUE_BYTES
    end = middle + SHARE_VALUE_BYTES
    layer_shares = tuple(
        data[at : at + SHARE_VALUE_BYTES]
        for at in range(SHARE_PLAINTEXT_BYTES, len(data), SHARE_VALUE_BYTES)
    )
    return sender, recipient, data[8:middle], data[middle:end], layer_shares


def contribution_commitment(
    config_id: bytes, attempt: int, client_id: int, contribution: bytes
) -> bytes:
    """Binds a client to its contribution (32 uniform bytes, so the hash hides it)."""
    return hashlib.sha256(
        encode_fields("secagg/v1/contribution", config_id, attempt, client_id, contribution)
    ).digest()


def contribution_commitments(
    config_id: bytes, attempt: int, contributions: Sequence[tuple[int, bytes]]
) -> list[tuple[int, bytes]]:
    """``(client, contribution_commitment(...))`` for every contribution, with the fields
    they share encoded once: each client checks every commitment of the cohort, so this is
    O(n) per client and must cost microseconds, not an encode_fields call, per entry."""
    prefix = encode_fields("secagg/v1/contribution", config_id, attempt)
    int_head = encode_fields(0)[:-8]  # tag and length of an int field
    head = encode_fields(bytes(CONTRIBUTION_BYTES))[:-CONTRIBUTION_BYTES]  # of a contribution
    sha256 = hashlib.sha256
    out: list[tuple[int, bytes]] = []
    for c, r in contributions:
        if len(r) != CONTRIBUTION_BYTES or not 0 <= c < 2**64:
            out.append((c, contribution_commitment(config_id, attempt, c, r)))  # general way
            continue
        encoded = b"".join((prefix, int_head, c.to_bytes(8, "big"), head, r))
        out.append((c, sha256(encoded).digest()))
    return out


def commitment_digest(
    config_id: bytes, attempt: int, commitments: Sequence[tuple[int, bytes]]
) -> bytes:
    """The digest of every (client, commitment) the server took, sorted by client id."""
    return hashlib.sha256(
        encode_fields(
            "secagg/v1/commitments",
            config_id,
            attempt,
            b"".join(c.to_bytes(4, "big") + commitment for c, commitment in commitments),
        )
    ).digest()


def contributions_digest(
    config_id: bytes, attempt: int, contributions: Sequence[tuple[int, bytes]]
) -> bytes:
    """The commitment digest recomputed from revealed contributions: ``commitment_digest``
    of ``contribution_commitments``, which a client compares with the digest the server
    fixed before anyone revealed.

    Memoised on its exact inputs (``_agreed_list``: the list's wire bytes themselves, compared
    byte for byte on a hit, not a hash of them): every client of a round hosted in one
    process (the simulator, a worker) checks the same list, and hashing its n commitments
    once serves them all. A memoised value is the function's value for those very bytes, so
    no client takes anything on trust; a list that differs in one byte is another key, hashed
    afresh."""
    return _agreed_list(config_id, attempt, ContributionList.of(contributions).wire).digest


@dataclass(frozen=True)
class _AgreedList:
    """What a contributions list's wire bytes give under (config id, attempt): the digest
    its n commitments hash to, and the session id of that digest and list."""

    config_id: bytes
    attempt: int
    wire: bytes = field(repr=False)
    digest: bytes
    session_id: bytes


# The last few lists checked in this process, most recent first (``_agreed_list``).
_RECENT_LISTS = 4
_recent: tuple[_AgreedList, ...] = ()
_recent_lock = threading.Lock()


def _agreed_list(config_id: bytes, attempt: int, wire: bytes) -> _AgreedList:
    """The digest and session id of a list's exact bytes, memoised on exactly (config id,
    attempt, bytes): a hit compares all the bytes (one ``memcmp``, cheaper than hashing them
    for a dict key), so it is the value this function computes for them, whoever asked first.
    Both are pure functions of public bytes; a process that hosts many clients of one round
    hashes the list twice (the commitments, then the session id) instead of twice a client.
    A list that differs anywhere (a split view, a forgery) is its own entry, computed afresh."""
    global _recent
    for entry in _recent:
        if entry.attempt == attempt and entry.config_id == config_id and entry.wire == wire:
            return entry
    digest = _commitments_digest(config_id, attempt, wire)
    session_id = _sha256_fields("secagg/v1/session", config_id, attempt, digest, tail=wire)
    entry = _AgreedList(bytes(config_id), attempt, wire, digest, session_id)
    with _recent_lock:
        _recent = (entry, *_recent[: _RECENT_LISTS - 1])
    return entry


def _commitments_digest(config_id: bytes, attempt: int, wire: bytes) -> bytes:
    n = len(wire) // CONTRIBUTION_ENTRY_BYTES
    if n == 0:
        return commitment_digest(config_id, attempt, [])
    entries = np.frombuffer(wire, dtype=np.uint8).reshape(n, CONTRIBUTION_ENTRY_BYTES)
    # Every commitment's preimage, encode_fields("secagg/v1/contribution", config_id,
    # attempt, client, contribution), laid out in one array: the fields all clients share,
    # then the 8-byte id (4 zero bytes, then the u32 of the wire) and the contribution.
    prefix = encode_fields("secagg/v1/contribution", config_id, attempt)
    int_head = encode_fields(0)[:-8]  # tag and length of an int field
    head = encode_fields(bytes(CONTRIBUTION_BYTES))[:-CONTRIBUTION_BYTES]
    fixed = np.frombuffer(prefix + int_head, dtype=np.uint8)
    at = len(fixed)
    size = at + 8 + len(head) + CONTRIBUTION_BYTES
    rows = np.zeros((n, size), dtype=np.uint8)
    rows[:, :at] = fixed
    rows[:, at + 4 : at + 8] = entries[:, :4]
    rows[:, at + 8 : at + 8 + len(head)] = np.frombuffer(head, dtype=np.uint8)
    rows[:, size - CONTRIBUTION_BYTES :] = entries[:, 4:]
    flat = memoryview(rows.tobytes())
    sha256 = hashlib.sha256
    commitments = b"".join(sha256(flat[i : i + size]).digest() for i in range(0, n * size, size))
    listed = np.empty((n, 4 + 32), dtype=np.uint8)
    listed[:, :4] = entries[:, :4]
    listed[:, 4:] = np.frombuffer(commitments, dtype=np.uint8).reshape(n, 32)
    return _sha256_fields("secagg/v1/commitments", config_id, attempt, tail=listed.tobytes())


def _sha256_fields(*fields: bytes | int | str, tail: bytes) -> bytes:
    """``sha256(encode_fields(*fields, tail))`` without copying ``tail`` (36 bytes a member)."""
    empty = encode_fields(b"")  # a bytes field's tag, then its 8-byte length (0)
    digest = hashlib.sha256(encode_fields(*fields))
    digest.update(empty[:-8])
    digest.update(len(tail).to_bytes(8, "big"))
    digest.update(tail)
    return digest.digest()


def first_stranger(config: RoundConfig, ids: NDArray[np.int64]) -> int | None:
    """The first of ``ids`` that is not in the config's cohort, or None (array lookups in
    the cohort's membership table, or binary searches in its sorted ids: no Python step per
    id)."""
    found = _found_in(config, ids)
    if bool(found.all()):
        return None
    return int(ids[int(np.argmin(found))])


def _found_in(config: RoundConfig, ids: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Whether each of ``ids`` is a member of the config's cohort."""
    table = config.id_table
    if table is not None:
        top = len(table)
        inside = (ids >= 0) & (ids < top)
        in_table: NDArray[np.bool_] = table[np.where(inside, ids, 0)] & inside
        return in_table
    cohort = config.id_array
    where = np.minimum(np.searchsorted(cohort, ids), len(cohort) - 1)
    found: NDArray[np.bool_] = cohort[where] == ids
    return found


def _absent(config: RoundConfig, ids: NDArray[np.int64]) -> frozenset[int]:
    """The cohort's members that are not among ``ids``."""
    cohort = config.id_array
    members = ids[_found_in(config, ids)]
    table = config.id_table
    if table is not None:
        present = np.zeros(len(table), dtype=np.bool_)
        present[members] = True
        return frozenset(cohort[~present[cohort]].tolist())
    missing = np.ones(len(cohort), dtype=np.bool_)
    missing[np.searchsorted(cohort, members)] = False
    return frozenset(cohort[missing].tolist())


@dataclass(frozen=True)
class Session:
    """One run of a round configuration, fixed by every participant's contribution.

    ``participants`` are the clients whose contributions are in it; only they can take part.
    """

    config: RoundConfig
    attempt: int
    # Cohort members without a contribution (those that dropped before the session was
    # agreed): a few, where the cohort is thousands. Every client keeps its session, so a
    # set of the participants themselves would cost each client O(n) memory.
    absent: frozenset[int]
    session_id: bytes = field(repr=False)
    graph_seed: bytes = field(repr=False)

    @property
    def participants(self) -> frozenset[int]:
        return self.config.cohort - self.absent

    @classmethod
    def agree(
        cls,
        config: RoundConfig,
        attempt: int,
        contributions: Sequence[tuple[int, bytes]],
        commitments: Sequence[tuple[int, bytes]] | None = None,
        *,
        digest: bytes | None = None,
    ) -> Session:
        """From every revealed contribution, sorted by client id (checked by the caller);
        ``commitments``, if the caller has computed them already, or their ``digest``, if the
        caller has checked that the contributions hash to it (``contributions_digest``)."""
        config_id = config.config_id
        if commitments is None and isinstance(contributions, ContributionList):
            # Its wire bytes are the revealed list, u32 id || contribution each: the digest
            # and the session id are those of its exact bytes (memoised on them).
            agreed = _agreed_list(config_id, attempt, contributions.wire)
            if digest is None:
                digest = agreed.digest
            session_id = (
                agreed.session_id
                if digest == agreed.digest
                else _sha256_fields(
                    "secagg/v1/session", config_id, attempt, digest, tail=contributions.wire
                )
            )
            absent = _absent(config, contributions.ids)
        elif isinstance(contributions, ContributionList):
            if digest is None:
                assert commitments is not None
                digest = commitment_digest(config_id, attempt, commitments)
            session_id = _sha256_fields(
                "secagg/v1/session", config_id, attempt, digest, tail=contributions.wire
            )
            absent = _absent(config, contributions.ids)
        else:
            if digest is None:
                if commitments is None:
                    commitments = contribution_commitments(config_id, attempt, contributions)
                digest = commitment_digest(config_id, attempt, commitments)
            revealed = b"".join(c.to_bytes(4, "big") + r for c, r in contributions)
            session_id = hashlib.sha256(
                encode_fields("secagg/v1/session", config_id, attempt, digest, revealed)
            ).digest()
            absent = config.cohort.difference(c for c, _ in contributions)
        graph_seed = hashlib.sha256(encode_fields("secagg/v1/graph", session_id)).digest()
        return cls(config, attempt, absent, session_id, graph_seed)

    def neighbours(self, client_id: int) -> tuple[int, ...]:
        """The ids a client pairs with: everyone else (SecAgg) or its Harary-graph neighbours.

        The graph spans the whole cohort, so its shape does not depend on who contributed;
        a cohort member without a contribution is a client that dropped before advertising.
        """
        config = self.config
        ids = config.client_ids
        n = len(ids)
        if config.degree == n - 1:
            return tuple(i for i in ids if i != client_id)
        position = _position(config, client_id)
        return tuple(ids[p] for p in neighbours_of(n, config.degree, self.graph_seed, position))


def sorted_unique(ids: Sequence[int] | NDArray[np.integer]) -> bool:
    if isinstance(ids, np.ndarray):
        return bool(np.all(ids[1:] > ids[:-1]))
    return all(a < b for a, b in itertools.pairwise(ids))


def _position(config: RoundConfig, client_id: int) -> int:
    ids = config.client_ids
    p = bisect.bisect_left(ids, client_id)
    if p == len(ids) or ids[p] != client_id:
        raise KeyError(client_id)
    return p
