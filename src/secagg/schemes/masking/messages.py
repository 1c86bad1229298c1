"""Masking's messages: one typed message per round and direction, with canonical bytes.

Their encoding, the header and the tag table are the codec's (``secagg.protocol.codec``,
whose ``Writer``, ``Reader``, ``Message`` and ``decode`` are imported here for the modules
that read masking's messages). The decoders check structure only; what a message *claims*
(which ids, how many) is judged by the state machines. Each message declares its direction
and the stage it answers (client) or requests (server), as the table below shows.

Rounds, after Bonawitz et al. (2017), preceded by the agreement on a fresh session:

=========== ==========================  ===========================
stage       client -> server            server -> client
=========== ==========================  ===========================
config                                  ``RoundConfig``
commit      ``Commitment``              ``CommitmentDigest``
reveal      ``Reveal``                  ``Contributions`` (or ``CommitRequest``: try again)
advertise   ``AdvertiseKeys``           ``PeerKeys``
share       ``EncryptedShares``         ``PeerShares``
masked      ``MaskedInput``             ``SurvivorList`` (active mode)
                                        or ``UnmaskRequest``
consistency ``ConsistencySignature``    ``UnmaskRequest`` (active mode: with the signatures)
unmask      ``UnmaskResponse``
=========== ==========================  ===========================

The commit and reveal stages make the session fresh from the clients' side: each client
commits to 32 random bytes, the server fixes the list of commitments (its digest) before
anyone reveals, and the session id and the SecAgg+ graph are derived from the configuration
and every revealed contribution (``secagg.schemes.masking.derivations.Session``). The server
can neither replay a session nor grind the graph. Messages of those two stages carry the
``config_id`` (the hash of the ``RoundConfig``); every later message carries the
``session_id``.

In active mode (a ``semi-malicious`` server model) advertised keys are signed with the
client's long-term Ed25519 identity, and the consistency round makes every client sign the
survivor set it was shown before anyone reveals a share (Bonawitz et al. 2017, section 4).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar, overload

import numpy as np
from numpy.typing import NDArray

from secagg.dp.layers import MAX_LAYER_COUNT
from secagg.dp.message import DpRound
from secagg.errors import DecodeError, UsageError
from secagg.hazmat import aead
from secagg.hazmat.shamir import SHARE_VALUE_BYTES
from secagg.protocol.audit import listed_ids
from secagg.protocol.codec import (
    DIGEST_BYTES,
    MAX_ID,
    NONCE_BYTES,
    Direction,
    Message,
    Reader,
    Writer,
    decode,
    defined_in,
)
from secagg.protocol.stages import Stage

__all__ = [
    "CIPHERTEXT_BYTES",
    "CLIENT_MESSAGE",
    "KEY_BYTES",
    "SHARE_PLAINTEXT_BYTES",
    "SIGNATURE_BYTES",
    "AdvertiseKeys",
    "CommitRequest",
    "Commitment",
    "CommitmentDigest",
    "ConsistencySignature",
    "ContributionList",
    "Contributions",
    "EncryptedShares",
    "LayerAnswer",
    "MaskedInput",
    "PeerKeyEntry",
    "PeerKeys",
    "PeerShares",
    "Reveal",
    "RoundConfig",
    "SurvivorList",
    "UnmaskRequest",
    "UnmaskResponse",
    "ciphertext_bytes",
    "sealed_layers",
]

_E = TypeVar("_E")

KEY_BYTES = 32
SESSION_ID_BYTES = 32
# A share ciphertext carries (from id, to id, self-mask share, key share).
SHARE_PLAINTEXT_BYTES = 4 + 4 + 2 * SHARE_VALUE_BYTES
CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + aead.OVERHEAD
SIGNATURE_BYTES = 64  # Ed25519
CONTRIBUTION_BYTES = 32  # each client's share of the session's randomness
MAX_ATTEMPTS = 3  # commit-reveal attempts per round: each retry is a graph the server may pick

PROTOCOL_CODES = {"secagg": 0, "secagg+": 1}
SERVER_MODEL_CODES = {"semi-honest": 0, "semi-malicious": 1}


def _check_id(value: int, what: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise UsageError(f"{what} must be a u32, got {value!r}")


class _DecodedIds(tuple[int, ...]):
    """Ids unpacked from the wire, with the packed bytes they were unpacked from: they are u32
    ints by construction, so only their order is left to check (a cohort of 20,000 is
    decoded by each of its members: packing it again and scanning its types cost more than
    the rest of the configuration)."""

    packed: bytes

    @classmethod
    def read(cls, r: Reader) -> _DecodedIds:
        n = r.count(4)
        packed = r.fixed(4 * n)
        ids = cls(struct.unpack(f">{n}I", packed))
        ids.packed = packed
        return ids


def _check_client_ids(ids: tuple[int, ...]) -> bytes:
    """Strictly increasing u32s, returned packed as the wire has them. Every client decodes
    the cohort (thousands of ids), so the usual case is checked on that one packed array;
    any failure is named by the rules one id at a time."""
    if type(ids) is _DecodedIds:
        order = np.frombuffer(ids.packed, dtype=">u4")
        if bool(np.all(order[1:] > order[:-1])):
            return ids.packed
    try:
        packed = struct.pack(f">{len(ids)}I", *ids)
        exact = set(map(type, ids)) <= {int}
    except struct.error:
        exact = False
    if exact:
        order = np.frombuffer(packed, dtype=">u4")
        if bool(np.all(order[1:] > order[:-1])):
            return packed
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise UsageError("client ids must be strictly increasing")
    for i in ids:
        _check_id(i, "client id")
    return struct.pack(f">{len(ids)}I", *ids)


def _read_entries(r: Reader, item_size: int, read: Callable[[], _E]) -> tuple[_E, ...]:
    n = r.count(item_size)
    return tuple(read() for _ in range(n))


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class RoundConfig(Message):
    """What the server fixes for one round, sent to every client of the cohort first.

    Its hash, ``config_id``, goes into the session id (with every client's contribution),
    which is bound into every key derivation, AEAD associated data and signature.
    ``task_hash`` binds the round to the model (or any task description) the caller trains.
    The decoder checks wire ranges only; whether a configuration is acceptable is the
    client's policy (``secagg.protocol.policy``).
    """

    TAG: ClassVar[int] = 1
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.COMMIT
    OPENS_ROUND: ClassVar[bool] = True

    round_id: int
    nonce: bytes
    protocol: str
    server_model: str
    client_ids: tuple[int, ...]
    degree: int
    threshold: int
    ring_bits: int
    dim: int
    clip: float
    value_bits: int
    max_weight: int
    task_hash: bytes = bytes(DIGEST_BYTES)
    min_cohort: int = 1  # no revealed sum may contain fewer inputs (checked in active mode)
    dp: DpRound | None = None  # distributed DP: each client's noise, before masking
    config_id: bytes = field(init=False, repr=False, compare=False)
    # The ids as the wire has them, packed once: encoded for the config id and for every
    # member of the cohort it is sent to.
    _packed_ids: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        packed = _check_client_ids(self.client_ids)
        ids = tuple(self.client_ids)
        object.__setattr__(self, "client_ids", ids)
        object.__setattr__(self, "_packed_ids", packed)
        n = len(ids)
        if n < 1:
            raise UsageError("a cohort needs a client")
        if not isinstance(self.round_id, int) or not 0 <= self.round_id < 2**64:
            raise UsageError(f"round_id must be a u64, got {self.round_id!r}")
        if self.protocol not in PROTOCOL_CODES or self.server_model not in SERVER_MODEL_CODES:
            raise UsageError("unknown protocol or server model")
        if len(self.nonce) != NONCE_BYTES or len(self.task_hash) != DIGEST_BYTES:
            raise UsageError("nonce must be 16 bytes and task_hash 32 bytes")
        # Wire ranges only: whether the graph, the threshold and the ring make a sound round
        # is a parameter rule (secagg.schemes.masking.parameters.check_round_config), checked
        # by the client and the server before they act on a configuration.
        if not (0 <= self.degree <= MAX_ID and 0 <= self.threshold <= MAX_ID):
            raise UsageError("degree and threshold must be u32")
        if not (2 <= self.ring_bits <= 62 and 1 <= self.value_bits <= 31):
            raise UsageError("ring_bits must be in 2..62 and value_bits in 1..31")
        if not (1 <= self.dim <= MAX_ID - 1 and 1 <= self.max_weight < 2**31):
            raise UsageError("dim or max_weight out of range")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise UsageError("clip must be finite and positive")
        if not 1 <= self.min_cohort <= n:
            raise UsageError(f"min_cohort must be in 1..{n}")
        object.__setattr__(
            self, "config_id", hashlib.sha256(b"secagg/v1/config\x00" + self.encode()).digest()
        )

    def __eq__(self, other: object) -> bool:
        """Field by field, as a dataclass compares, but the cohort as its packed ids (one
        ``memcmp``; the same ids exactly when the same bytes): a client compares the
        configuration it is sent with its own, and a cohort is thousands of ids. (The hash
        stays the dataclass's, over every compared field.)"""
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, RoundConfig)
        return self._packed_ids == other._packed_ids and all(
            getattr(self, name) == getattr(other, name) for name in _COMPARED_BESIDE_IDS
        )

    def terms(self) -> str:
        """What a client agrees to by running this round, in the words of its audit."""
        return (
            f"server model {self.server_model}, {self.protocol} k={self.degree} "
            f"t={self.threshold}, cohort {len(self.client_ids)}, min cohort {self.min_cohort}"
        )

    @property
    def vector_length(self) -> int:
        """Ring elements a client sends: its (DP: rotated, padded) values, then its weight."""
        return (self.dim if self.dp is None else self.dp.padded_dim) + 1

    @functools.cached_property
    def cohort(self) -> frozenset[int]:
        """The client ids as a set, built once per config (a process may hold thousands of
        clients of one round: none of them should copy it)."""
        return frozenset(self.client_ids)

    @functools.cached_property
    def id_array(self) -> NDArray[np.int64]:
        """The client ids as a sorted, read-only array, built once per config: what a client
        searches to check a list of the cohort's ids without a Python step per id."""
        array = np.array(self.client_ids, dtype=np.int64)
        array.setflags(write=False)
        return array

    @functools.cached_property
    def id_table(self) -> NDArray[np.bool_] | None:
        """Membership by id, for a cohort whose ids are dense enough (the largest below 64
        per member, or below 2^20): ``id_table[i]`` says whether id ``i`` is a member, one
        array lookup per id where a binary search costs a few dozen steps. Built once per
        config; None for a sparse cohort, which is searched instead (``id_array``)."""
        ids = self.id_array
        top = int(ids[-1]) + 1
        if top > max(64 * len(ids), 1 << 20):
            return None
        table = np.zeros(top, dtype=np.bool_)
        table[ids] = True
        table.setflags(write=False)
        return table

    @property
    def active(self) -> bool:
        """Active mode: signed keys and a consistency round against a deviating server."""
        return self.server_model == "semi-malicious"

    def _write(self, w: Writer) -> None:
        w.u64(self.round_id)
        w.fixed(self.nonce, NONCE_BYTES)
        w.u8(PROTOCOL_CODES[self.protocol])
        w.u8(SERVER_MODEL_CODES[self.server_model])
        w.u32(len(self.client_ids))
        w.fixed(self._packed_ids, 4 * len(self.client_ids))
        w.u32(self.degree)
        w.u32(self.threshold)
        w.u8(self.ring_bits)
        w.u32(self.dim)
        w.f64(self.clip)
        w.u8(self.value_bits)
        w.u32(self.max_weight)
        w.fixed(self.task_hash, DIGEST_BYTES)
        w.u32(self.min_cohort)
        w.u8(0 if self.dp is None else self.dp.flag)
        if self.dp is not None:
            self.dp.write(w)

    @classmethod
    def _read(cls, r: Reader) -> RoundConfig:
        round_id = r.u64()
        nonce = r.fixed(NONCE_BYTES)
        protocol = _lookup(PROTOCOL_CODES, r.u8(), "protocol")
        server_model = _lookup(SERVER_MODEL_CODES, r.u8(), "server model")
        return cls(
            round_id=round_id,
            nonce=nonce,
            protocol=protocol,
            server_model=server_model,
            client_ids=_DecodedIds.read(r),
            degree=r.u32(),
            threshold=r.u32(),
            ring_bits=r.u8(),
            dim=r.u32(),
            clip=r.f64(),
            value_bits=r.u8(),
            max_weight=r.u32(),
            task_hash=r.fixed(DIGEST_BYTES),
            min_cohort=r.u32(),
            dp=_dp_block(r),
        )


# RoundConfig's compared fields other than the cohort (compared as its packed ids).
_COMPARED_BESIDE_IDS = tuple(
    f.name for f in dataclasses.fields(RoundConfig) if f.compare and f.name != "client_ids"
)


def _optional(r: Reader, least: int, read: Callable[[], _E]) -> _E | None:
    """A trailing section that only some rounds have: absent when nothing is left; fewer
    bytes than it can hold are trailing bytes, not a section."""
    if not r.remaining():
        return None
    if r.remaining() < least:
        raise DecodeError(f"{r.remaining()} trailing bytes")
    return read()


def _dp_block(r: Reader) -> DpRound | None:
    """No DP (0), a DP block (1), or one with removable noise layers (2)."""
    flag = r.u8()
    return None if flag == 0 else DpRound.read(r, flag)


def _lookup(codes: dict[str, int], code: int, what: str) -> str:
    for name, value in codes.items():
        if value == code:
            return name
    raise DecodeError(f"unknown {what} code {code}")


# --------------------------------------------------------------------------- commit / reveal
@dataclass(frozen=True)
class CommitRequest(Message):
    """Server -> client: commit again (attempt 2 or 3), because some committed client did
    not reveal. Attempt 1 needs no request: the ``RoundConfig`` itself asks for it."""

    TAG: ClassVar[int] = 11
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.COMMIT

    config_id: bytes = field(repr=False)
    recipient: int
    attempt: int

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.u8(self.attempt)

    @classmethod
    def _read(cls, r: Reader) -> CommitRequest:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.u8())


@dataclass(frozen=True)
class Commitment(Message):
    """Client -> server: a hash binding the client to a fresh random contribution."""

    TAG: ClassVar[int] = 12
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.COMMIT

    config_id: bytes = field(repr=False)
    client_id: int
    attempt: int
    commitment: bytes = field(repr=False)

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.u8(self.attempt)
        w.fixed(self.commitment, DIGEST_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> Commitment:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.u8(), r.fixed(DIGEST_BYTES))

    def audit_note(self, request: bytes) -> str:
        del request
        return f"attempt {self.attempt}"

    @property
    def opens_attempt(self) -> int | None:
        return self.attempt


@dataclass(frozen=True)
class CommitmentDigest(Message):
    """Server -> client: the digest of every commitment it took, fixed before any reveal."""

    TAG: ClassVar[int] = 13
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.REVEAL

    config_id: bytes = field(repr=False)
    recipient: int
    attempt: int
    digest: bytes = field(repr=False)
    count: int  # how many commitments the digest covers

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.u8(self.attempt)
        w.fixed(self.digest, DIGEST_BYTES)
        w.u32(self.count)

    @classmethod
    def _read(cls, r: Reader) -> CommitmentDigest:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.u8(), r.fixed(DIGEST_BYTES), r.u32())


@dataclass(frozen=True)
class Reveal(Message):
    """Client -> server: the contribution it committed to."""

    TAG: ClassVar[int] = 14
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.REVEAL

    config_id: bytes = field(repr=False)
    client_id: int
    attempt: int
    contribution: bytes = field(repr=False)

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.u8(self.attempt)
        w.fixed(self.contribution, CONTRIBUTION_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> Reveal:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.u8(), r.fixed(CONTRIBUTION_BYTES))


CONTRIBUTION_ENTRY_BYTES = 4 + CONTRIBUTION_BYTES  # a u32 id, then the contribution
_ENTRY = np.dtype([("id", ">u4"), ("contribution", f"S{CONTRIBUTION_BYTES}")])


class ContributionList(Sequence[tuple[int, bytes]]):
    """``(client, contribution)`` entries kept as their wire bytes: ``u32 id || 32 bytes``
    each, in the order given (sorting is the reader's check, not this container's).

    Every client of a round decodes and checks the whole list, so it is never turned into a
    Python object per entry unless someone iterates it: decoding is one slice, encoding one
    copy, ``ids`` a numpy view and ``wire`` exactly what the session id hashes. It is a
    sequence of tuples all the same, equal to the tuple of its entries.
    """

    __slots__ = ("_ids", "_wire")

    def __init__(self, wire: bytes) -> None:
        if len(wire) % CONTRIBUTION_ENTRY_BYTES:
            raise UsageError(f"a contribution list is {CONTRIBUTION_ENTRY_BYTES} bytes an entry")
        self._wire = bytes(wire)
        self._ids: NDArray[np.int64] | None = None

    @classmethod
    def of(cls, entries: Iterable[tuple[int, bytes]]) -> ContributionList:
        """The list of ``entries`` (itself, if it is one already); UsageError if an id is not a
        u32 or a contribution is not 32 bytes."""
        if isinstance(entries, ContributionList):
            return entries
        parts: list[bytes] = []
        for client, contribution in entries:
            _check_id(client, "a contributor's id")
            if not isinstance(contribution, bytes) or len(contribution) != CONTRIBUTION_BYTES:
                raise UsageError(f"a contribution is {CONTRIBUTION_BYTES} bytes")
            parts += (client.to_bytes(4, "big"), contribution)
        return cls(b"".join(parts))

    @property
    def wire(self) -> bytes:
        return self._wire

    @property
    def ids(self) -> NDArray[np.int64]:
        """The entries' ids, in their order (read-only; computed once)."""
        if self._ids is None:
            ids = np.frombuffer(self._wire, dtype=_ENTRY)["id"].astype(np.int64)
            ids.setflags(write=False)
            self._ids = ids
        return self._ids

    def contribution(self, index: int) -> bytes:
        """The contribution of the entry at ``index``."""
        start = index * CONTRIBUTION_ENTRY_BYTES + 4
        return self._wire[start : start + CONTRIBUTION_BYTES]

    def contribution_of(self, client: int) -> bytes | None:
        """``client``'s contribution in a list sorted by id (a binary search), or None."""
        ids = self.ids
        index = int(np.searchsorted(ids, client))
        if index == len(ids) or ids[index] != client:
            return None
        return self.contribution(index)

    def __len__(self) -> int:
        return len(self._wire) // CONTRIBUTION_ENTRY_BYTES

    @overload
    def __getitem__(self, index: int) -> tuple[int, bytes]: ...
    @overload
    def __getitem__(self, index: slice) -> ContributionList: ...
    def __getitem__(self, index: int | slice) -> tuple[int, bytes] | ContributionList:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                size = CONTRIBUTION_ENTRY_BYTES
                return ContributionList(self._wire[start * size : max(start, stop) * size])
            return ContributionList.of([self[i] for i in range(start, stop, step)])
        n = len(self)
        if not -n <= index < n:
            raise IndexError("contribution list index out of range")
        index %= n
        start = index * CONTRIBUTION_ENTRY_BYTES
        return int.from_bytes(self._wire[start : start + 4], "big"), self.contribution(index)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        wire, size = self._wire, CONTRIBUTION_ENTRY_BYTES
        starts = range(4, len(wire), size)
        return zip(
            self.ids.tolist(), (wire[s : s + CONTRIBUTION_BYTES] for s in starts), strict=True
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ContributionList):
            return self._wire == other._wire
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and tuple(other) == tuple(self)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))  # as the equal tuple's

    def __repr__(self) -> str:
        return f"ContributionList({len(self)} entries)"

    def __reduce__(self) -> tuple[type[ContributionList], tuple[bytes]]:
        return ContributionList, (self._wire,)


@dataclass(frozen=True)
class Contributions(Message):
    """Server -> client: every revealed contribution, sorted by client id. Each client checks
    them against the digest it was sent and finds its own among them.

    ``entries`` may be given as any sequence of ``(client, contribution)``; it is kept as a
    ``ContributionList`` (its wire bytes), which the server builds once for everyone."""

    TAG: ClassVar[int] = 15
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.ADVERTISE

    config_id: bytes = field(repr=False)
    recipient: int
    attempt: int
    entries: Sequence[tuple[int, bytes]] = field(repr=False)  # (client, contribution)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", ContributionList.of(self.entries))

    @property
    def contributions(self) -> ContributionList:
        """``entries``, typed as what they are."""
        return ContributionList.of(self.entries)

    def _write(self, w: Writer) -> None:
        w.fixed(self.config_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.u8(self.attempt)
        entries = self.contributions
        w.u32(len(entries))
        w.fixed(entries.wire, len(entries.wire))

    @classmethod
    def _read(cls, r: Reader) -> Contributions:
        config_id, recipient, attempt = r.fixed(SESSION_ID_BYTES), r.u32(), r.u8()
        n = r.count(CONTRIBUTION_ENTRY_BYTES)
        entries = ContributionList(r.fixed(n * CONTRIBUTION_ENTRY_BYTES))
        return cls(config_id, recipient, attempt, entries)


# --------------------------------------------------------------------------- advertise
@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Round 0, client -> server: the client's two fresh X25519 public keys."""

    TAG: ClassVar[int] = 2
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.ADVERTISE

    session_id: bytes = field(repr=False)
    client_id: int
    cipher_public: bytes = field(repr=False)  # for encrypting shares
    mask_public: bytes = field(repr=False)  # for pairwise masks
    signature: bytes = field(default=b"", repr=False)  # active mode: by the client's identity

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.fixed(self.cipher_public, KEY_BYTES)
        w.fixed(self.mask_public, KEY_BYTES)
        _write_signature(w, self.signature)

    @classmethod
    def _read(cls, r: Reader) -> AdvertiseKeys:
        return cls(
            r.fixed(SESSION_ID_BYTES),
            r.u32(),
            r.fixed(KEY_BYTES),
            r.fixed(KEY_BYTES),
            _read_signature(r),
        )


def _write_signature(w: Writer, signature: bytes) -> None:
    """Empty (semi-honest mode) or exactly one Ed25519 signature."""
    if len(signature) not in (0, SIGNATURE_BYTES):
        raise UsageError(f"a signature is 0 or {SIGNATURE_BYTES} bytes")
    w.u8(len(signature))
    w.fixed(signature, len(signature))


def _read_signature(r: Reader) -> bytes:
    size = r.u8()
    if size not in (0, SIGNATURE_BYTES):
        raise DecodeError(f"a signature is 0 or {SIGNATURE_BYTES} bytes, not {size}")
    return r.fixed(size)


@dataclass(frozen=True)
class PeerKeyEntry:
    client_id: int
    cipher_public: bytes = field(repr=False)
    mask_public: bytes = field(repr=False)
    signature: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class PeerKeys(Message):
    """Round 0, server -> client: the public keys of the neighbours that advertised."""

    TAG: ClassVar[int] = 3
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.SHARE

    session_id: bytes = field(repr=False)
    recipient: int
    peers: tuple[PeerKeyEntry, ...]

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.u32(len(self.peers))
        for p in self.peers:
            w.u32(p.client_id)
            w.fixed(p.cipher_public, KEY_BYTES)
            w.fixed(p.mask_public, KEY_BYTES)
            _write_signature(w, p.signature)

    @classmethod
    def _read(cls, r: Reader) -> PeerKeys:
        session_id, recipient = r.fixed(SESSION_ID_BYTES), r.u32()
        n = r.count(4 + 2 * KEY_BYTES + 1)
        peers = tuple(
            PeerKeyEntry(r.u32(), r.fixed(KEY_BYTES), r.fixed(KEY_BYTES), _read_signature(r))
            for _ in range(n)
        )
        return cls(session_id, recipient, peers)


# --------------------------------------------------------------------------- share
@dataclass(frozen=True)
class EncryptedShares(Message):
    """Round 1, client -> server: one sealed share pair per neighbour, and a commitment to
    the self-mask seed so that the server can check the seed it reconstructs."""

    TAG: ClassVar[int] = 4
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.SHARE

    session_id: bytes = field(repr=False)
    client_id: int
    self_mask_commitment: bytes = field(repr=False)
    ciphertexts: tuple[tuple[int, bytes], ...] = field(repr=False)  # (recipient, sealed)
    # Removable noise (docs/XNOISE.md X6): a commitment to each layer seed, whose shares are
    # sealed beside the self-mask and key shares (each ciphertext then holds them too). Last
    # on the wire, and only when there are layers.
    layer_commitments: tuple[bytes, ...] = field(default=(), repr=False)

    def audit_note(self, request: bytes) -> str:
        del request
        layers = f", {len(self.layer_commitments)} noise layer(s)" if self.layer_commitments else ""
        return f"{len(self.ciphertexts)} neighbour(s){layers}"

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.fixed(self.self_mask_commitment, DIGEST_BYTES)
        _write_ciphertexts(w, self.ciphertexts, len(self.layer_commitments))
        if self.layer_commitments:
            w.u8(len(self.layer_commitments))
            for commitment in self.layer_commitments:
                w.fixed(commitment, DIGEST_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> EncryptedShares:
        head = r.fixed(SESSION_ID_BYTES), r.u32(), r.fixed(DIGEST_BYTES)
        ciphertexts, layers = _read_ciphertexts(r, trailer=DIGEST_BYTES)
        commitments: tuple[bytes, ...] = ()
        if layers:
            if r.u8() != layers:
                raise DecodeError("the layer commitments do not match the sealed shares")
            commitments = tuple(r.fixed(DIGEST_BYTES) for _ in range(layers))
        return cls(*head, ciphertexts, commitments)


@dataclass(frozen=True)
class PeerShares(Message):
    """Round 1, server -> client: the sealed shares its neighbours addressed to it."""

    TAG: ClassVar[int] = 5
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT

    session_id: bytes = field(repr=False)
    recipient: int
    ciphertexts: tuple[tuple[int, bytes], ...] = field(repr=False)  # (sender, sealed)

    @property
    def layers(self) -> int:
        """Noise layers whose shares each ciphertext holds (0: none)."""
        if not self.ciphertexts:
            return 0
        try:
            return sealed_layers(len(self.ciphertexts[0][1]))
        except DecodeError:
            return 0  # no size fits: encoding it is the caller's error (a UsageError)

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        _write_ciphertexts(w, self.ciphertexts, self.layers)

    @classmethod
    def _read(cls, r: Reader) -> PeerShares:
        head = r.fixed(SESSION_ID_BYTES), r.u32()
        ciphertexts, _ = _read_ciphertexts(r, trailer=None)
        return cls(*head, ciphertexts)


def ciphertext_bytes(layers: int) -> int:
    """A sealed share plaintext's size with ``layers`` noise-layer shares beside the two."""
    return CIPHERTEXT_BYTES + layers * SHARE_VALUE_BYTES


def sealed_layers(size: int) -> int:
    """The noise layers a sealed share of ``size`` bytes holds; DecodeError if none fits."""
    layers, rest = divmod(size - CIPHERTEXT_BYTES, SHARE_VALUE_BYTES)
    if size < CIPHERTEXT_BYTES or rest or layers > MAX_LAYER_COUNT:
        raise DecodeError(f"a sealed share of {size} bytes")
    return layers


def _write_ciphertexts(w: Writer, entries: Sequence[tuple[int, bytes]], layers: int) -> None:
    size = ciphertext_bytes(layers)
    w.u32(len(entries))
    for peer, sealed in entries:
        w.u32(peer)
        w.fixed(sealed, size)


def _read_ciphertexts(
    r: Reader, *, trailer: int | None
) -> tuple[tuple[tuple[int, bytes], ...], int]:
    """The sealed shares and the noise layers each holds. Without layers a list is exactly
    as it always was; with ``layers`` each sealed share is ``layers`` shares longer and, where
    the message has a ``trailer`` of one ``trailer``-byte item per layer (and its count byte),
    that follows the list. Every sealed share of a list has one size, so the bytes left fix
    ``layers``: the one value whose layout fills them exactly."""
    n = r.u32()
    left = r.remaining()
    for layers in range(MAX_LAYER_COUNT + 1):
        size = ciphertext_bytes(layers)
        tail = 0 if trailer is None or layers == 0 else 1 + layers * trailer
        if n * (4 + size) + tail == left and (layers == 0 or n > 0 or trailer is not None):
            break
    else:
        raise DecodeError(f"{n} sealed shares leave trailing bytes or too few: {left} left")
    entries = tuple((r.u32(), r.fixed(size)) for _ in range(n))
    return entries, layers


# --------------------------------------------------------------------------- masked input
@dataclass(frozen=True)
class MaskedInput(Message):
    """Round 2, client -> server: the masked vector, bit-packed at the ring's width.

    ``missing_shares`` lists the neighbours whose sealed shares did not open: the client
    still masks with them, but holds no share of their secrets.
    """

    TAG: ClassVar[int] = 6
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT

    session_id: bytes = field(repr=False)
    client_id: int
    missing_shares: tuple[int, ...]
    packed_vector: bytes = field(repr=False)

    def audit_note(self, request: bytes) -> str:
        del request
        return "masked"

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.ids(self.missing_shares)
        w.blob(self.packed_vector)

    @classmethod
    def _read(cls, r: Reader) -> MaskedInput:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.ids(), r.blob())


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Round 3, server -> client: which of its neighbours survived and which dropped."""

    TAG: ClassVar[int] = 7
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.UNMASK

    session_id: bytes = field(repr=False)
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    # Active mode: the consistency signatures of the survivor set, (signer, signature).
    signatures: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)
    # Removable noise (docs/XNOISE.md X4): the inputs the server says the sum holds. Last on
    # the wire, and only in a round with noise layers; a client counts it only in semi-honest
    # mode (active mode counts the certified survivor set).
    count: int | None = None

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.ids(self.survivors)
        w.ids(self.dropped)
        w.u32(len(self.signatures))
        for signer, signature in self.signatures:
            w.u32(signer)
            w.fixed(signature, SIGNATURE_BYTES)
        if self.count is not None:
            w.u32(self.count)

    @classmethod
    def _read(cls, r: Reader) -> UnmaskRequest:
        session_id, recipient, survivors, dropped = (
            r.fixed(SESSION_ID_BYTES),
            r.u32(),
            r.ids(),
            r.ids(),
        )
        signatures = _read_entries(
            r, 4 + SIGNATURE_BYTES, lambda: (r.u32(), r.fixed(SIGNATURE_BYTES))
        )
        count = _optional(r, 4, r.u32)
        return cls(session_id, recipient, survivors, dropped, signatures, count)


@dataclass(frozen=True)
class SurvivorList(Message):
    """Active mode, server -> client: every client whose masked input is in the sum."""

    TAG: ClassVar[int] = 9
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY

    session_id: bytes = field(repr=False)
    recipient: int
    survivors: tuple[int, ...]

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.ids(self.survivors)

    @classmethod
    def _read(cls, r: Reader) -> SurvivorList:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.ids())


@dataclass(frozen=True)
class ConsistencySignature(Message):
    """Active mode, client -> server: the client's signature over the survivor set."""

    TAG: ClassVar[int] = 10
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY

    session_id: bytes = field(repr=False)
    client_id: int
    signature: bytes = field(repr=False)

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> ConsistencySignature:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.fixed(SIGNATURE_BYTES))

    def audit_note(self, request: bytes) -> str:
        """The survivor set this client signed (the request it answered)."""
        try:
            shown = decode(request)
        except DecodeError:
            return ""
        if not isinstance(shown, SurvivorList):
            return ""
        return f"{len(shown.survivors)} survivors, {listed_ids(shown.survivors)}"


@dataclass(frozen=True)
class UnmaskResponse(Message):
    """Round 3, client -> server: self-mask shares of survivors, key shares of the dropped.

    Each share is the 33-byte field element; its x-coordinate is the sender's id + 1.
    """

    TAG: ClassVar[int] = 8
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.UNMASK

    session_id: bytes = field(repr=False)
    client_id: int
    self_mask_shares: tuple[tuple[int, bytes], ...] = field(repr=False)  # (owner, share)
    key_shares: tuple[tuple[int, bytes], ...] = field(repr=False)  # (owner, share)
    # Removable noise: what this client answered at, and the layer shares it released. Last
    # on the wire, and only in a round with noise layers.
    layers: LayerAnswer | None = None

    def audit_note(self, request: bytes) -> str:
        del request
        note = (
            f"self-mask shares of {listed_ids(u for u, _ in self.self_mask_shares)}; "
            f"key shares of {listed_ids(u for u, _ in self.key_shares)}"
        )
        if self.layers is not None:
            a = self.layers
            note += (
                f"; noise layers at count c={a.count}, A={a.corrupt}: w={a.units} unit(s), "
                f"layer shares of {listed_ids(sorted({u for u, _, _ in a.shares}))}"
            )
        return note

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        for entries in (self.self_mask_shares, self.key_shares):
            w.u32(len(entries))
            for owner, share in entries:
                w.u32(owner)
                w.fixed(share, SHARE_VALUE_BYTES)
        if self.layers is not None:
            self.layers.write(w)

    @classmethod
    def _read(cls, r: Reader) -> UnmaskResponse:
        session_id, client_id = r.fixed(SESSION_ID_BYTES), r.u32()

        def entry() -> tuple[int, bytes]:
            return r.u32(), r.fixed(SHARE_VALUE_BYTES)

        self_mask = _read_entries(r, 4 + SHARE_VALUE_BYTES, entry)
        keys = _read_entries(r, 4 + SHARE_VALUE_BYTES, entry)
        layers = _optional(r, 16, lambda: LayerAnswer.read(r))
        return cls(session_id, client_id, self_mask, keys, layers)


@dataclass(frozen=True)
class LayerAnswer:
    """A client's answer about removable noise (docs/XNOISE.md X5): the count ``count`` it
    answered at, the corruption bound ``corrupt`` (A) it subtracted, the ``units`` that come
    off at ``count - corrupt`` (w, 0 outside [m, M]), and the shares of the removed layers of
    each peer whose self-mask share it released, ``(owner, layer, share)``."""

    count: int
    corrupt: int
    units: int
    shares: tuple[tuple[int, int, bytes], ...] = field(default=(), repr=False)

    def write(self, w: Writer) -> None:
        w.u32(self.count)
        w.u32(self.corrupt)
        w.u32(self.units)
        w.u32(len(self.shares))
        for owner, layer, share in self.shares:
            w.u32(owner)
            w.u8(layer)
            w.fixed(share, SHARE_VALUE_BYTES)

    @classmethod
    def read(cls, r: Reader) -> LayerAnswer:
        count, corrupt, units = r.u32(), r.u32(), r.u32()
        shares = _read_entries(
            r, 5 + SHARE_VALUE_BYTES, lambda: (r.u32(), r.u8(), r.fixed(SHARE_VALUE_BYTES))
        )
        return cls(count, corrupt, units, shares)


# What a client sends in each stage of a masking round, in the order of the stages: derived
# from the declarations above.
CLIENT_MESSAGE: Mapping[Stage, type[Message]] = {
    cls.STAGE: cls
    for stage in Stage
    for cls in defined_in(__name__)
    if cls.STAGE is stage and cls.DIRECTION is Direction.UP
}
