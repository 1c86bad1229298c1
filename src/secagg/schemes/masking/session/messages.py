"""A session's messages: the set-up's two of its own, then two per round (three in active
mode). The set-up's commit, reveal and advertise stages are the one-shot round's messages
(``secagg.schemes.masking.messages``), carrying the session's ``RoundConfig``.

=========== ============================  ===============================
stage       client -> server              server -> client
=========== ============================  ===============================
config                                    ``SessionConfig``
commit      ``Commitment``                ``CommitmentDigest``
reveal      ``Reveal``                    ``Contributions``
advertise   ``AdvertiseKeys``             ``PeerKeys``
share       ``SetupShares``               ``PeerSetupShares``
----------- ----------------------------  -------------------------------
round r                                   ``RoundTask``
masked      ``RoundMessage``              ``SessionSurvivorList`` (active)
                                          or ``SessionUnmaskRequest``
consistency ``SessionSignature``          ``SessionUnmaskRequest``
unmask      ``SessionUnmaskResponse``
=========== ============================  ===============================

Every message after the set-up's agreement carries the session id, and every message of a
round its number. Decoders check structure only; the state machines judge the claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from secagg.errors import DecodeError, UsageError
from secagg.hazmat import aead
from secagg.hazmat.shamir import SHARE_VALUE_BYTES
from secagg.protocol.audit import listed_ids
from secagg.protocol.codec import DIGEST_BYTES, Direction, Message, Reader, Writer, decode
from secagg.protocol.stages import Stage
from secagg.schemes.masking.messages import KEY_BYTES, SIGNATURE_BYTES, RoundConfig
from secagg.schemes.masking.session.derivations import (
    ROUND_SHARE_PLAINTEXT_BYTES,
    SETUP_SHARE_PLAINTEXT_BYTES,
)
from secagg.schemes.masking.session.terms import SessionTerms

__all__ = [
    "ROUND_CIPHERTEXT_BYTES",
    "SETUP_CIPHERTEXT_BYTES",
    "ForwardedShare",
    "PeerSetupShares",
    "RoundMessage",
    "RoundTask",
    "SessionConfig",
    "SessionSignature",
    "SessionSurvivorList",
    "SessionUnmaskRequest",
    "SessionUnmaskResponse",
    "SetupShares",
    "opened_task",
    "session_terms",
]

SESSION_ID_BYTES = 32
SETUP_CIPHERTEXT_BYTES = SETUP_SHARE_PLAINTEXT_BYTES + aead.OVERHEAD
ROUND_CIPHERTEXT_BYTES = ROUND_SHARE_PLAINTEXT_BYTES + aead.OVERHEAD


def _write_sealed(w: Writer, entries: tuple[tuple[int, bytes], ...], size: int) -> None:
    w.u32(len(entries))
    for peer, sealed in entries:
        w.u32(peer)
        w.fixed(sealed, size)


def _read_sealed(r: Reader, size: int) -> tuple[tuple[int, bytes], ...]:
    n = r.count(4 + size)
    return tuple((r.u32(), r.fixed(size)) for _ in range(n))


def _write_shares(w: Writer, entries: tuple[tuple[int, bytes], ...]) -> None:
    _write_sealed(w, entries, SHARE_VALUE_BYTES)


def _read_shares(r: Reader) -> tuple[tuple[int, bytes], ...]:
    return _read_sealed(r, SHARE_VALUE_BYTES)


# --------------------------------------------------------------------------- set-up
@dataclass(frozen=True)
class SessionConfig(Message):
    """What the server fixes for a session, sent to every member of the cohort first: the
    set-up's configuration and the session's caps (which its task hash carries)."""

    TAG: ClassVar[int] = 30
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.COMMIT
    OPENS_ROUND: ClassVar[bool] = True

    config: RoundConfig
    max_rounds: int
    max_seconds: int
    min_live_neighbours: int
    binding: bytes = bytes(DIGEST_BYTES)

    @property
    def opens_training(self) -> bool:
        return False  # the set-up trains nothing: the model rides on each round's opening

    @property
    def terms(self) -> SessionTerms:
        return SessionTerms(
            self.config, self.max_rounds, self.max_seconds, self.min_live_neighbours, self.binding
        )

    @classmethod
    def of(cls, terms: SessionTerms) -> SessionConfig:
        return cls(
            terms.config,
            terms.max_rounds,
            terms.max_seconds,
            terms.min_live_neighbours,
            terms.binding,
        )

    def _write(self, w: Writer) -> None:
        w.blob(self.config.encode())
        w.u32(self.max_rounds)
        w.u32(self.max_seconds)
        w.u32(self.min_live_neighbours)
        w.fixed(self.binding, DIGEST_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> SessionConfig:
        config = decode(r.blob())
        if not isinstance(config, RoundConfig):
            raise DecodeError("a session configuration holds a round configuration")
        message = cls(config, r.u32(), r.u32(), r.u32(), r.fixed(DIGEST_BYTES))
        message.terms  # noqa: B018 - the terms' own checks, so junk is a DecodeError
        return message


@dataclass(frozen=True)
class SetupShares(Message):
    """Set-up, client -> server: a t-of-|K_u| sharing of round 1's mask key, with the key
    itself, sealed to every neighbour whose keys it received (``K_u``)."""

    TAG: ClassVar[int] = 31
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.SHARE

    session_id: bytes = field(repr=False)
    client_id: int
    ciphertexts: tuple[tuple[int, bytes], ...] = field(repr=False)  # (recipient, sealed)

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        _write_sealed(w, self.ciphertexts, SETUP_CIPHERTEXT_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> SetupShares:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), _read_sealed(r, SETUP_CIPHERTEXT_BYTES))


@dataclass(frozen=True)
class PeerSetupShares(Message):
    """Set-up, server -> client: the set-up ciphertexts addressed to it. Their senders are
    its live neighbours of round 1 (``L_u1``). With ``first_task`` (the digest of round 1's
    model) it also opens round 1, and is answered with round 1's ``RoundMessage``; without
    it, nothing is answered and round 1's ``RoundTask`` follows."""

    TAG: ClassVar[int] = 32
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT

    session_id: bytes = field(repr=False)
    recipient: int
    ciphertexts: tuple[tuple[int, bytes], ...] = field(repr=False)  # (sender, sealed)
    first_task: bytes = b""

    def __post_init__(self) -> None:
        if len(self.first_task) not in (0, DIGEST_BYTES):
            raise UsageError(f"a first task is empty or {DIGEST_BYTES} bytes")

    @property
    def opens_training(self) -> bool:
        return bool(self.first_task)

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        _write_sealed(w, self.ciphertexts, SETUP_CIPHERTEXT_BYTES)
        w.blob(self.first_task)

    @classmethod
    def _read(cls, r: Reader) -> PeerSetupShares:
        head = (r.fixed(SESSION_ID_BYTES), r.u32(), _read_sealed(r, SETUP_CIPHERTEXT_BYTES))
        return cls(*head, r.blob())


# --------------------------------------------------------------------------- a round
@dataclass(frozen=True)
class RoundTask(Message):
    """Round r, server -> client: train on the model whose digest is ``task``."""

    TAG: ClassVar[int] = 33
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT

    session_id: bytes = field(repr=False)
    recipient: int
    round_number: int
    task: bytes

    @property
    def opens_training(self) -> bool:
        return True

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.u32(self.round_number)
        w.fixed(self.task, DIGEST_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> RoundTask:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.u32(), r.fixed(DIGEST_BYTES))


@dataclass(frozen=True)
class RoundMessage(Message):
    """Round r, client -> server, its one message of the masked stage: the masked input, the
    commitment to its fresh self-mask seed, its two keys for round r + 1 (signed in active
    mode), and for each live neighbour a ciphertext of a share of the seed, a share of the
    next mask key and that key."""

    TAG: ClassVar[int] = 34
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT

    session_id: bytes = field(repr=False)
    client_id: int
    round_number: int
    self_mask_commitment: bytes = field(repr=False)
    next_mask_public: bytes = field(repr=False)
    next_cipher_public: bytes = field(repr=False)
    next_signature: bytes = field(repr=False)  # empty in semi-honest mode
    ciphertexts: tuple[tuple[int, bytes], ...] = field(repr=False)  # (recipient, sealed)
    packed_vector: bytes = field(repr=False)

    def audit_note(self, request: bytes) -> str:
        del request
        return f"round {self.round_number}, masked for {listed_ids(v for v, _ in self.ciphertexts)}"

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.u32(self.round_number)
        w.fixed(self.self_mask_commitment, DIGEST_BYTES)
        w.fixed(self.next_mask_public, KEY_BYTES)
        w.fixed(self.next_cipher_public, KEY_BYTES)
        w.blob(self.next_signature)
        _write_sealed(w, self.ciphertexts, ROUND_CIPHERTEXT_BYTES)
        w.blob(self.packed_vector)

    @classmethod
    def _read(cls, r: Reader) -> RoundMessage:
        head = (r.fixed(SESSION_ID_BYTES), r.u32(), r.u32(), r.fixed(DIGEST_BYTES))
        keys = (r.fixed(KEY_BYTES), r.fixed(KEY_BYTES))
        signature = r.blob()
        if len(signature) not in (0, SIGNATURE_BYTES):
            raise DecodeError("a next-key signature is empty or 64 bytes")
        sealed = _read_sealed(r, ROUND_CIPHERTEXT_BYTES)
        return cls(*head, *keys, signature, sealed, r.blob())


@dataclass(frozen=True)
class SessionSurvivorList(Message):
    """Active mode, round r, server -> client: every member whose round-r input is in the
    sum (``S_r``), which the client signs chained to the session's earlier sets."""

    TAG: ClassVar[int] = 35
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY

    session_id: bytes = field(repr=False)
    recipient: int
    round_number: int
    survivors: tuple[int, ...]

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.u32(self.round_number)
        w.ids(self.survivors)

    @classmethod
    def _read(cls, r: Reader) -> SessionSurvivorList:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.u32(), r.ids())


@dataclass(frozen=True)
class SessionSignature(Message):
    """Active mode, round r, client -> server: its one signature of the round, over H_r."""

    TAG: ClassVar[int] = 36
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY

    session_id: bytes = field(repr=False)
    client_id: int
    round_number: int
    signature: bytes = field(repr=False)

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.u32(self.round_number)
        w.fixed(self.signature, SIGNATURE_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> SessionSignature:
        return cls(r.fixed(SESSION_ID_BYTES), r.u32(), r.u32(), r.fixed(SIGNATURE_BYTES))


@dataclass(frozen=True)
class ForwardedShare:
    """A live neighbour's round-r ciphertext to the recipient, with the neighbour's keys of
    round r + 1 (and, in active mode, its signature over them)."""

    sender: int
    sealed: bytes = field(repr=False)
    next_mask_public: bytes = field(repr=False)
    next_cipher_public: bytes = field(repr=False)
    next_signature: bytes = field(repr=False)


@dataclass(frozen=True)
class SessionUnmaskRequest(Message):
    """Round r, server -> client: which of its live neighbours survived and which dropped,
    the survivors' ciphertexts and next-round keys, and (active mode) the certificate on
    H_r."""

    TAG: ClassVar[int] = 37
    DIRECTION: ClassVar[Direction] = Direction.DOWN
    STAGE: ClassVar[Stage] = Stage.UNMASK

    session_id: bytes = field(repr=False)
    recipient: int
    round_number: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    forwarded: tuple[ForwardedShare, ...] = field(repr=False)
    signatures: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.recipient)
        w.u32(self.round_number)
        w.ids(self.survivors)
        w.ids(self.dropped)
        w.u32(len(self.forwarded))
        for f in self.forwarded:
            w.u32(f.sender)
            w.fixed(f.sealed, ROUND_CIPHERTEXT_BYTES)
            w.fixed(f.next_mask_public, KEY_BYTES)
            w.fixed(f.next_cipher_public, KEY_BYTES)
            w.blob(f.next_signature)
        _write_sealed(w, self.signatures, SIGNATURE_BYTES)

    @classmethod
    def _read(cls, r: Reader) -> SessionUnmaskRequest:
        head = (r.fixed(SESSION_ID_BYTES), r.u32(), r.u32(), r.ids(), r.ids())
        n = r.count(4 + ROUND_CIPHERTEXT_BYTES + 2 * KEY_BYTES + 4)
        forwarded = []
        for _ in range(n):
            sender, sealed = r.u32(), r.fixed(ROUND_CIPHERTEXT_BYTES)
            mask, cipher, signature = r.fixed(KEY_BYTES), r.fixed(KEY_BYTES), r.blob()
            if len(signature) not in (0, SIGNATURE_BYTES):
                raise DecodeError("a next-key signature is empty or 64 bytes")
            forwarded.append(ForwardedShare(sender, sealed, mask, cipher, signature))
        return cls(*head, tuple(forwarded), _read_sealed(r, SIGNATURE_BYTES))


@dataclass(frozen=True)
class SessionUnmaskResponse(Message):
    """Round r, client -> server: shares of round r's self-mask seed of each survivor and of
    round r's mask key of each dropped neighbour; one kind per peer, never both."""

    TAG: ClassVar[int] = 38
    DIRECTION: ClassVar[Direction] = Direction.UP
    STAGE: ClassVar[Stage] = Stage.UNMASK

    session_id: bytes = field(repr=False)
    client_id: int
    round_number: int
    self_mask_shares: tuple[tuple[int, bytes], ...] = field(repr=False)  # (owner, share)
    key_shares: tuple[tuple[int, bytes], ...] = field(repr=False)  # (owner, share)

    def audit_note(self, request: bytes) -> str:
        del request
        return (
            f"round {self.round_number}: self-mask shares of "
            f"{listed_ids(u for u, _ in self.self_mask_shares)}; key shares of "
            f"{listed_ids(u for u, _ in self.key_shares)}"
        )

    def _write(self, w: Writer) -> None:
        w.fixed(self.session_id, SESSION_ID_BYTES)
        w.u32(self.client_id)
        w.u32(self.round_number)
        _write_shares(w, self.self_mask_shares)
        _write_shares(w, self.key_shares)

    @classmethod
    def _read(cls, r: Reader) -> SessionUnmaskResponse:
        head = (r.fixed(SESSION_ID_BYTES), r.u32(), r.u32())
        return cls(*head, _read_shares(r), _read_shares(r))


def session_terms(message: Message) -> SessionTerms | None:
    """The terms ``message`` opens a session with (a ``SessionConfig``'s), else None: for
    drivers outside this package, which do not switch on its classes."""
    return message.terms if isinstance(message, SessionConfig) else None


def opened_task(message: Message) -> bytes | None:
    """The digest of the model of the round ``message`` opens (a ``RoundTask``, or round 1's
    ``PeerSetupShares``), else None."""
    if isinstance(message, RoundTask):
        return message.task
    if isinstance(message, PeerSetupShares) and message.first_task:
        return message.first_task
    return None
