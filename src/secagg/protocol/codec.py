"""The wire codec every message shares: ``Writer``, ``Reader``, ``Message`` and the one table
of message tags.

Every message encodes to ``MAGIC || VERSION || tag || body``; integers are big-endian, ids
are ``u32``, variable-length parts carry a ``u32`` length or count. ``decode`` rejects a wrong
header, a truncated body, a count or length that exceeds what is left (checked before any
allocation) and trailing bytes, always with a ``DecodeError``.

``TAGS`` lists every tag there is, with the class that owns it, in one place. Decoding needs
no earlier import of the module that defines a message: the table names it, and ``decode``
imports it on first use (lazily, because those modules import this one; the schemes' among
them sit above this layer). Defining a class registers nothing: it only checks that the
table lists it under its tag. Each class declares its ``DIRECTION`` and its ``STAGE``, and
every table that asks which stage a message answers or requests, or which way it travels
(masking's ``CLIENT_MESSAGE``, ``stages.stage_answered_by``, the metrics' message types,
Flower's requested stages), is derived from those declarations, never listed again.
"""

from __future__ import annotations

import functools
import importlib
import struct
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, TypeVar

from secagg.errors import DecodeError, UsageError

if TYPE_CHECKING:
    from secagg.protocol.stages import Stage

__all__ = [
    "DIGEST_BYTES",
    "MAGIC",
    "MAX_ID",
    "NONCE_BYTES",
    "SHARED_PART_BYTES",
    "TAGS",
    "VERSION",
    "Direction",
    "Message",
    "Reader",
    "Writer",
    "client_messages",
    "decode",
    "defined_in",
    "message_class",
    "server_messages",
    "travelling",
]

MAGIC = b"SA"
VERSION = 1
MAX_ID = 2**32 - 1  # the largest u32: every id on the wire is one
NONCE_BYTES = 16  # a round configuration's nonce
DIGEST_BYTES = 32  # SHA-256: config ids, task hashes
# ``Message.encode_parts`` keeps a field of at least this many bytes as the very object that was
# written: a cohort's id list, or a contributions list, that the server writes into every
# recipient's message is then one object in all of them.
SHARED_PART_BYTES = 4096

# Every message tag, and the class ("module:Class") that owns it. A new message is one line
# here; a tag is never reused, so a retired message keeps its number out of use.
TAGS: Mapping[int, str] = {
    # masking: session agreement, then the rounds of Bonawitz et al. (schemes.masking.messages)
    1: "secagg.schemes.masking.messages:RoundConfig",
    2: "secagg.schemes.masking.messages:AdvertiseKeys",
    3: "secagg.schemes.masking.messages:PeerKeys",
    4: "secagg.schemes.masking.messages:EncryptedShares",
    5: "secagg.schemes.masking.messages:PeerShares",
    6: "secagg.schemes.masking.messages:MaskedInput",
    7: "secagg.schemes.masking.messages:UnmaskRequest",
    8: "secagg.schemes.masking.messages:UnmaskResponse",
    9: "secagg.schemes.masking.messages:SurvivorList",
    10: "secagg.schemes.masking.messages:ConsistencySignature",
    11: "secagg.schemes.masking.messages:CommitRequest",
    12: "secagg.schemes.masking.messages:Commitment",
    13: "secagg.schemes.masking.messages:CommitmentDigest",
    14: "secagg.schemes.masking.messages:Reveal",
    15: "secagg.schemes.masking.messages:Contributions",
    # masking: sessions that span rounds (schemes.masking.session.messages)
    30: "secagg.schemes.masking.session.messages:SessionConfig",
    31: "secagg.schemes.masking.session.messages:SetupShares",
    32: "secagg.schemes.masking.session.messages:PeerSetupShares",
    33: "secagg.schemes.masking.session.messages:RoundTask",
    34: "secagg.schemes.masking.session.messages:RoundMessage",
    35: "secagg.schemes.masking.session.messages:SessionSurvivorList",
    36: "secagg.schemes.masking.session.messages:SessionSignature",
    37: "secagg.schemes.masking.session.messages:SessionUnmaskRequest",
    38: "secagg.schemes.masking.session.messages:SessionUnmaskResponse",
    # CKKS homomorphic encryption
    20: "secagg.schemes.ckks.messages:CkksConfig",
    21: "secagg.schemes.ckks.messages:CkksUpload",
    22: "secagg.schemes.ckks.messages:CkksSumRequest",
    23: "secagg.schemes.ckks.messages:CkksResult",
    # plaintext FedAvg (in process only: the service's wire schema has no frame for it)
    24: "secagg.schemes.plaintext:PlainConfig",
    25: "secagg.schemes.plaintext:PlainUpdate",
}


class Direction(StrEnum):
    """Which way a message travels: up from a client, down to a client."""

    UP = "up"  # client to server
    DOWN = "down"  # server to client


@functools.cache
def message_class(tag: int) -> type[Message]:
    """The class that owns ``tag``, importing its module if nothing has yet."""
    module, _, name = TAGS[tag].partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Message) and tag == cls.TAG):
        raise UsageError(f"TAGS lists {TAGS[tag]} under tag {tag}, which it is not")
    return cls


def travelling(direction: Direction) -> tuple[type[Message], ...]:
    """Every message that travels ``direction``, in tag order."""
    return tuple(
        cls for cls in (message_class(tag) for tag in sorted(TAGS)) if cls.DIRECTION is direction
    )


def defined_in(module: str) -> tuple[type[Message], ...]:
    """The messages ``module`` defines, in tag order (a scheme's own, for its tables)."""
    return tuple(message_class(tag) for tag in sorted(TAGS) if TAGS[tag].startswith(module + ":"))


def client_messages() -> tuple[type[Message], ...]:
    """Every message a client sends, in tag order."""
    return travelling(Direction.UP)


def server_messages() -> tuple[type[Message], ...]:
    """Every message a server sends, in tag order."""
    return travelling(Direction.DOWN)


class Writer:
    """Canonical encoding of fields, for every message."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> None:
        self._parts.append(struct.pack(">B", value))

    def u32(self, value: int) -> None:
        if not 0 <= value <= MAX_ID:
            raise UsageError(f"value {value} does not fit in u32")
        self._parts.append(struct.pack(">I", value))

    def u64(self, value: int) -> None:
        if not 0 <= value < 2**64:
            raise UsageError(f"value {value} does not fit in u64")
        self._parts.append(struct.pack(">Q", value))

    def f64(self, value: float) -> None:
        self._parts.append(struct.pack(">d", value))

    def fixed(self, data: bytes, size: int) -> None:
        if len(data) != size:
            raise UsageError(f"expected {size} bytes, got {len(data)}")
        self._parts.append(bytes(data))

    def blob(self, data: bytes) -> None:
        self.u32(len(data))
        self._parts.append(bytes(data))

    def ids(self, ids: Sequence[int]) -> None:
        """A count, then every id as a u32, packed in one call (a cohort is thousands)."""
        self.u32(len(ids))
        try:
            self._parts.append(struct.pack(f">{len(ids)}I", *ids))
        except struct.error:
            for i in ids:  # name the first id that does not fit
                self.u32(i)
            raise

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def getparts(self) -> tuple[bytes, ...]:
        """The encoding as consecutive parts whose concatenation is ``getvalue()``: each field
        of at least ``SHARED_PART_BYTES`` the very bytes object written (not a copy), the
        fields between them joined."""
        parts: list[bytes] = []
        small: list[bytes] = []
        for part in self._parts:
            if len(part) >= SHARED_PART_BYTES:
                if small:
                    parts.append(b"".join(small))
                    small = []
                parts.append(part)
            else:
                small.append(part)
        if small:
            parts.append(b"".join(small))
        return tuple(parts)


class Reader:
    """Strict decoding: every read is bounds-checked; counts before any allocation."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def _take(self, size: int) -> memoryview:
        end = self._pos + size
        if end > len(self._data):
            raise DecodeError(f"truncated: needed {size} more bytes at offset {self._pos}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self._take(8))[0])

    def f64(self) -> float:
        return float(struct.unpack(">d", self._take(8))[0])

    def fixed(self, size: int) -> bytes:
        return bytes(self._take(size))

    def blob(self) -> bytes:
        size = self.u32()
        if size > self.remaining():
            raise DecodeError(f"length {size} exceeds the {self.remaining()} bytes left")
        return bytes(self._take(size))

    def count(self, item_size: int) -> int:
        """A list length, refused before allocation if the items cannot all be there."""
        n = self.u32()
        if n * item_size > self.remaining():
            raise DecodeError(f"count {n} exceeds what the {self.remaining()} bytes left can hold")
        return n

    def ids(self) -> tuple[int, ...]:
        n = self.count(4)
        ids: tuple[int, ...] = struct.unpack(f">{n}I", self._take(4 * n))
        return ids

    def finish(self) -> None:
        if self.remaining():
            raise DecodeError(f"{self.remaining()} trailing bytes")


M = TypeVar("M", bound="Message")


class Message:
    """Base of every wire message: ``encode`` and a class-level ``decode``.

    A message class declares its ``TAG`` (the one it has in ``TAGS``), its ``DIRECTION`` and
    its ``STAGE``: the stage a client message answers, or the stage whose answer a server
    message requests. Every table that asks "which stage?" or "which way?" of a message is
    derived from these declarations (``client_messages``, ``server_messages``).
    ``OPENS_ROUND`` marks a scheme's round configuration, the message that opens a round (a
    transport may carry it apart, as the service carries it inside the task).
    """

    TAG: ClassVar[int]
    DIRECTION: ClassVar[Direction]
    STAGE: ClassVar[Stage]
    OPENS_ROUND: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Nothing is registered here: a class only checks that the table names it under its
        # tag, so a message missing from TAGS (or listed under another tag) fails on import.
        listed = TAGS.get(cls.TAG)
        if listed != f"{cls.__module__}:{cls.__qualname__}":
            raise UsageError(f"{cls.__qualname__} is not listed in TAGS under tag {cls.TAG}")
        if not isinstance(cls.__dict__.get("DIRECTION"), Direction):
            raise UsageError(f"{cls.__qualname__} declares no DIRECTION")
        if "STAGE" not in cls.__dict__:
            raise UsageError(f"{cls.__qualname__} declares no STAGE")

    def audit_note(self, request: bytes) -> str:
        """What a client's audit records of this answer (to the server's ``request``, as
        it arrived) beyond its stage: counts and ids, never a secret. Empty: nothing more."""
        del request
        return ""

    @property
    def opens_training(self) -> bool:
        """Whether a client trains on receiving this message, so a transport sends the model
        with it: a round's configuration (by default, ``OPENS_ROUND``), or the message that
        opens a round of a session that spans rounds."""
        return self.OPENS_ROUND

    @property
    def opens_attempt(self) -> int | None:
        """The attempt at agreeing on a round's session this answer opens (masking's
        commitment), which a client's journal keeps; None for any other message."""
        return None

    def encode(self) -> bytes:
        return self._written().getvalue()

    def encode_parts(self) -> tuple[bytes, ...]:
        """``encode()`` in consecutive parts (``b"".join`` of them is exactly ``encode()``),
        each large field the very object the message holds (``Writer.getparts``). A transport
        that carries many recipients' messages in one batch, such as the simulator's pipe to a
        worker process, then carries a list they all share once, not once per recipient; what
        each recipient receives is the same bytes."""
        return self._written().getparts()

    def _written(self) -> Writer:
        w = Writer()
        w.fixed(MAGIC, len(MAGIC))
        w.u8(VERSION)
        w.u8(self.TAG)
        self._write(w)
        return w

    def _write(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _read(cls: type[M], r: Reader) -> M:
        raise NotImplementedError

    @classmethod
    def decode(cls: type[M], data: bytes) -> M:
        """Decode bytes that must hold exactly one message of this type."""
        message = decode(data)
        if not isinstance(message, cls):
            raise DecodeError(f"expected {cls.__name__}, got {type(message).__name__}")
        return message


def decode(data: bytes) -> Message:
    """Decode bytes holding exactly one message of any type."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    r = Reader(bytes(data))
    if r.fixed(len(MAGIC)) != MAGIC:
        raise DecodeError("not a secagg message (bad magic)")
    version = r.u8()
    if version != VERSION:
        raise DecodeError(f"unsupported wire version {version}")
    tag = r.u8()
    if tag not in TAGS:
        raise DecodeError(f"unknown message tag {tag}")
    cls = message_class(tag)
    try:
        message = cls._read(r)
    except (ValueError, UsageError) as exc:  # a field that fails its own validation
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"invalid {cls.__name__}: {exc}") from None
    r.finish()
    return message
