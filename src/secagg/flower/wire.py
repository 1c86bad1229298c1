"""How secagg's protocol travels inside Flower's messages, and what binds a round to its task.

Both ends of the integration (``secagg.flower.client``'s mod and ``secagg.flower.server``'s
Grid wrapper) use only what is here to agree on the bytes:

- **The record.** Every protocol message rides, as its canonical ``encode()`` bytes, in one
  ``ConfigRecord`` under ``RECORD_KEY`` of a Flower ``TRAIN`` message: ``MESSAGE`` holds the
  bytes; the first message of a round also carries ``NODES``, the cohort's node table. A
  client that refuses a round answers with ``ABORT`` (an ``AbortReason`` value) and
  ``DETAIL`` instead.
- **The node table.** Flower's node ids are unsigned 64-bit integers; secagg's client ids
  are 32-bit. For each round the server lists the cohort's node ids in increasing order
  (8 bytes each, big-endian) and client id ``i`` *is* the ``i``-th entry: the cohort is
  ``0..n-1``. The table is canonical (sorted, no repeats), so the server has no freedom in
  it, and it is bound into the round's task hash, so clients shown different tables end up
  in different sessions rather than in one split session.
- **The task hash.** ``task_digest(round_id, table, content_digest(content))``: the round id,
  the node table and every record the strategy sent for training (the model's arrays, byte
  for byte, and its config). It is the ``task_hash`` of the ``RoundConfig`` and therefore
  part of the session id: a client trains only the model, with the config, that its
  session is bound to.
- **Sessions that span rounds** (``secagg.schemes.masking.session``): the ``SessionConfig``
  carries ``NODES`` and binds the table (``session_binding``); the message that opens a round
  (a ``RoundTask``, or round 1's ``PeerSetupShares``) carries the strategy's records, and the
  round's task is their ``content_digest``.
- **The layout.** ``ArrayLayout`` maps an ``ArrayRecord`` to the one flat float32 vector that
  is aggregated: its floating-point arrays, in the record's order, each flattened row-major.
  Arrays of an integer or boolean dtype (a BatchNorm's ``num_batches_tracked``) are not sent;
  the aggregate carries the global model's values for them. Any other dtype is refused.
- **Reading arrays.** A Flower ``Array`` holds ``.npy`` bytes (``stype`` ``numpy.ndarray``)
  and declares their dtype and shape (or neither: dtype ``""`` and shape ``()`` when Flower
  converted legacy ``Parameters``). They are read here, not by ``Array.numpy()``
  (``numpy.load``, which also opens zip archives and allocates the array a header declares
  before reading a byte of it): a header as ``numpy.save`` writes it, a real or boolean
  dtype, the declared dtype and shape, and a payload of exactly the header's size, or
  ``ConfigurationError``; nothing is ever unpickled and nothing larger than the bytes
  received is allocated. Fortran-ordered bytes are read as the array they encode.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError, DecodeError
from secagg.hazmat.kdf import encode_fields
from secagg.protocol.codec import Direction, Message, decode, defined_in
from secagg.protocol.stages import Stage
from secagg.schemes.masking import messages as pm
from secagg.schemes.masking.session import messages as sm

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "secagg.flower needs Flower: pip install 'secagg[flower]' (flwr 1.42)"
    ) from exc

__all__ = [
    "ABORT",
    "DETAIL",
    "MESSAGE",
    "NODES",
    "RECORD_KEY",
    "ArrayLayout",
    "LayoutEntry",
    "content_digest",
    "decode_nodes",
    "encode_nodes",
    "requested_stage",
    "single_array_record",
    "task_digest",
    "without_record",
]

RECORD_KEY = "secagg"
MESSAGE = "message"
NODES = "nodes"
ABORT = "abort"
DETAIL = "detail"

_NODE_BYTES = 8
_TASK_LABEL = "secagg/flower/v1/task"
_CONTENT_LABEL = "secagg/flower/v1/content"
_SESSION_LABEL = "secagg/flower/v1/session"
# The dtypes that are aggregated; each travels as float32 (float64 rounds to float32).
_FLOAT_KINDS = frozenset({"float16", "float32", "float64"})
# The dtypes an array may have: aggregated floats and carried-over integers and booleans.
# Each by the descriptor a .npy header gives it ('<f4', '>i8', '|b1'), either byte order.
_CARRIED_KINDS = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_NPY_DTYPES: dict[str, np.dtype[Any]] = {
    dtype.str: dtype
    for kind in (*_CARRIED_KINDS, *sorted(_FLOAT_KINDS))
    for dtype in (np.dtype(kind).newbyteorder("<"), np.dtype(kind).newbyteorder(">"))
}
# What flwr.compat's parameters_to_arrayrecord declares (with shape ()) for a legacy array.
_UNDECLARED_DTYPE = ""
_NPY_STYPE = "numpy.ndarray"  # flwr.common.constant.SType.NUMPY: Array.data is .npy bytes
_NPY_MAGIC = b"\x93NUMPY"
_NPY_LENGTH_FIELD = {1: "<H", 2: "<I", 3: "<I"}  # major version -> the header length's format
_NPY_MAX_HEADER = 10_000  # numpy.load's own limit
_NPY_MAX_DIMS = 32
_NPY_MAX_DIM_DIGITS = 19
# The header numpy.save writes: "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
# spaces, a newline. Spaces may vary, nothing else; each run of them is followed by a fixed
# character, so matching takes time linear in the header.
_NPY_HEADER = re.compile(
    r"\{ *'descr' *: *'([^']{1,8})' *, *'fortran_order' *: *(True|False) *,"
    r" *'shape' *: *\(([0-9 ,]{0,1000})\) *(?:, *)?\} *\n?",
    re.ASCII,
)


# ----------------------------------------------------------------------------- node table
def encode_nodes(nodes: Iterable[int]) -> bytes:
    """The node table of a cohort: its node ids in increasing order, 8 bytes each."""
    ordered = sorted(nodes)
    if len(set(ordered)) != len(ordered):
        raise ConfigurationError("a cohort names the same Flower node twice")
    for node in ordered:
        if not isinstance(node, int) or isinstance(node, bool) or not 0 <= node < 2**64:
            raise ConfigurationError(f"Flower node ids are unsigned 64-bit ints, got {node!r}")
    return b"".join(node.to_bytes(_NODE_BYTES, "big") for node in ordered)


def decode_nodes(data: object) -> tuple[int, ...]:
    """The node ids of a table; refuses anything that ``encode_nodes`` would not produce."""
    if not isinstance(data, bytes) or not data or len(data) % _NODE_BYTES:
        raise DecodeError("a node table is a non-empty run of 8-byte node ids")
    nodes = tuple(
        int.from_bytes(data[i : i + _NODE_BYTES], "big") for i in range(0, len(data), _NODE_BYTES)
    )
    if any(b <= a for a, b in itertools.pairwise(nodes)):
        raise DecodeError("a node table must list node ids in increasing order, once each")
    return nodes


# What each server message of masking (the scheme Flower runs) asks a client to answer: the
# stage its answer belongs to, as the message declares it.
_ANSWERED_IN: dict[type[Message], Stage] = {
    cls: cls.STAGE
    for module in (pm.__name__, sm.__name__)
    for cls in defined_in(module)
    if cls.DIRECTION is Direction.DOWN
}


def requested_stage(data: bytes) -> Stage:
    """The stage a server message (its bytes, as they ride in ``MESSAGE``) asks a node to
    answer; for logs and for fault injection in tests. ``DecodeError`` for anything else."""
    message = decode(data)
    stage = _ANSWERED_IN.get(type(message))
    if stage is None:
        raise DecodeError(f"{type(message).__name__} is not sent to clients")
    return stage


# ----------------------------------------------------------------------------- digests
def content_digest(content: RecordDict) -> bytes:
    """SHA-256 of every record of a message's content, canonically encoded.

    Arrays are hashed as they travel (dtype, shape, serialisation type and bytes), in their
    record's order, which is the order of the aggregated vector; config and metric entries
    are hashed in key order, each value with its type.
    """
    if not isinstance(content, RecordDict):
        raise ConfigurationError(f"the content is a {type(content).__name__}, not a RecordDict")
    fields: list[bytes | int | str] = [_CONTENT_LABEL]
    for key in _sorted_keys(content, "record"):
        record = content[key]
        if isinstance(record, ArrayRecord):
            fields += ["arrays", key, len(record)]
            for name, array in record.items():
                if not isinstance(array, Array):
                    raise ConfigurationError(f"array {_shown(name)} is a {type(array).__name__}")
                shape = _declared_shape(name, array)
                fields += [_text(name, "an array name"), _text(array.dtype, "a dtype"), len(shape)]
                fields += list(shape)
                if not isinstance(array.data, bytes):
                    raise ConfigurationError(f"array {_shown(name)}: its data is not bytes")
                fields += [_text(array.stype, "an stype"), array.data]
        elif isinstance(record, ConfigRecord | MetricRecord):
            kind = "config" if isinstance(record, ConfigRecord) else "metrics"
            fields += [kind, key, len(record)]
            for name in _sorted_keys(record, "value"):
                fields += [name, _encode_value(record[name])]
        else:
            raise ConfigurationError(f"record {_shown(key)} is a {type(record).__name__}")
    return hashlib.sha256(encode_fields(*fields)).digest()


def task_digest(round_id: int, node_table: bytes, content: bytes) -> bytes:
    """The ``task_hash`` a round is bound to: round id, node table, content digest."""
    return hashlib.sha256(encode_fields(_TASK_LABEL, round_id, node_table, content)).digest()


def session_binding(node_table: bytes) -> bytes:
    """What a session that spans rounds binds (``SessionTerms.binding``): its node table.
    Each round's task is then the content digest alone (``RoundTask.task``), computed by the
    node from what it was sent; the round number is in every key of the round."""
    return hashlib.sha256(encode_fields(_SESSION_LABEL, node_table)).digest()


def _encode_value(value: object, *, in_list: bool = False) -> bytes:
    """One config or metric value with its type; injective over Flower's value types (a
    scalar, or a list of scalars: a list inside a list is refused)."""
    if isinstance(value, list) and not in_list:
        return encode_fields("list", len(value), *(_encode_value(v, in_list=True) for v in value))
    if isinstance(value, bool):
        return encode_fields("bool", int(value))
    if isinstance(value, int):
        try:
            digits = str(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise ConfigurationError("a record holds an int too large to hash") from None
        return encode_fields("int", digits)
    if isinstance(value, float):
        return encode_fields("float", struct.pack(">d", value))
    if isinstance(value, str):
        return encode_fields("str", _text(value, "a record value"))
    if isinstance(value, bytes):
        return encode_fields("bytes", value)
    raise ConfigurationError(f"cannot hash a record value of type {type(value).__name__}")


def _text(value: object, what: str) -> str:
    """``value`` if it is a str that UTF-8 can encode (no lone surrogates)."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} is a {type(value).__name__}, not a str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{what} is not valid Unicode text") from None
    return value


def _sorted_keys(record: Any, what: str) -> list[str]:
    return sorted(_text(key, f"a {what} key") for key in record)


def _shown(value: object) -> str:
    """A value the server chose, for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _declared_shape(name: str, array: Array) -> tuple[int, ...]:
    """The shape an ``Array`` declares: at most 32 dimensions, each an int in [0, 2**64)."""
    shape = array.shape
    if (
        not isinstance(shape, tuple)
        or len(shape) > _NPY_MAX_DIMS
        or not all(type(d) is int and 0 <= d < 2**64 for d in shape)
    ):
        raise ConfigurationError(f"array {_shown(name)} declares an invalid shape")
    return tuple(shape)


# ----------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class LayoutEntry:
    """One array of an ``ArrayRecord``: name, shape, numpy dtype name, and whether it is
    aggregated (floating point) or carried over from the global model."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    aggregated: bool = field(init=False)
    size: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"an array name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.shape, tuple) or not all(
            type(d) is int and d >= 0 for d in self.shape
        ):
            raise ConfigurationError(f"array {self.name!r} has an invalid shape {self.shape!r}")
        object.__setattr__(self, "aggregated", self.dtype in _FLOAT_KINDS)
        object.__setattr__(self, "size", math.prod(self.shape))


@dataclass(frozen=True)
class ArrayLayout:
    """The flat vector of an ``ArrayRecord``: its floating-point arrays, in order."""

    entries: tuple[LayoutEntry, ...]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ConfigurationError("array names must be unique")
        size = sum(e.size for e in self.entries if e.aggregated)
        if not any(e.aggregated for e in self.entries):
            raise ConfigurationError(
                "the model has no floating-point arrays: there is nothing to aggregate"
            )
        object.__setattr__(self, "size", size)

    @classmethod
    def of(cls, record: ArrayRecord) -> ArrayLayout:
        """The layout of a record (the global model a strategy sends)."""
        arrays = _numpy_arrays(record)
        return cls(
            tuple(
                LayoutEntry(name, tuple(int(d) for d in a.shape), a.dtype.name)
                for name, a in arrays.items()
            )
        )

    def flatten(self, record: ArrayRecord) -> NDArray[np.float32]:
        """The record's floating-point arrays as one float32 vector; the record must have
        exactly this layout, and every value must be finite."""
        arrays = self._matching(record)
        vector = np.empty(self.size, dtype=np.float32)
        offset = 0
        for entry in self.entries:
            if entry.aggregated:
                with np.errstate(over="ignore"):  # beyond float32: refused just below
                    vector[offset : offset + entry.size] = arrays[entry.name].reshape(-1)
                offset += entry.size
        if not np.all(np.isfinite(vector)):
            raise ConfigurationError("the arrays hold NaN or infinity (after rounding to float32)")
        return vector

    def unflatten(self, vector: NDArray[np.floating[Any]], like: ArrayRecord) -> ArrayRecord:
        """An ``ArrayRecord`` of this layout holding ``vector``; arrays that are not
        aggregated are copied from ``like`` (the global model)."""
        values = np.asarray(vector)
        if values.shape != (self.size,):
            raise ConfigurationError(f"the vector has shape {values.shape}, not ({self.size},)")
        reference = self._matching(like)
        out: dict[str, Array] = {}
        offset = 0
        for entry in self.entries:
            if entry.aggregated:
                with np.errstate(over="ignore"):
                    part = values[offset : offset + entry.size].astype(entry.dtype)
                if not np.all(np.isfinite(part)):
                    raise ConfigurationError(
                        f"array {entry.name!r}: the aggregate is beyond the range of {entry.dtype}"
                    )
                out[entry.name] = Array(np.ascontiguousarray(part.reshape(entry.shape)))
                offset += entry.size
            else:
                out[entry.name] = Array(np.array(reference[entry.name]))
        return ArrayRecord(out)

    def _matching(self, record: ArrayRecord) -> dict[str, NDArray[Any]]:
        arrays = _numpy_arrays(record)
        if list(arrays) != [e.name for e in self.entries]:
            raise ConfigurationError(
                "the arrays do not match the model's: different names or order"
            )
        for entry in self.entries:
            a = arrays[entry.name]
            if tuple(a.shape) != entry.shape or a.dtype.name != entry.dtype:
                raise ConfigurationError(
                    f"array {entry.name!r} is {a.dtype.name}{list(a.shape)}, the model's "
                    f"{entry.dtype}{list(entry.shape)}"
                )
        return arrays


def _numpy_arrays(record: ArrayRecord) -> dict[str, NDArray[Any]]:
    if not isinstance(record, ArrayRecord):
        raise ConfigurationError(f"expected an ArrayRecord, got {type(record).__name__}")
    out: dict[str, NDArray[Any]] = {}
    for name, array in record.items():
        if not isinstance(name, str):
            raise ConfigurationError(f"an array name is a {type(name).__name__}, not a str")
        out[name] = _read_npy(name, array)
    return out


def _read_npy(name: str, array: object) -> NDArray[Any]:
    """The values of one Flower ``Array``, read from its ``.npy`` bytes (a read-only view of
    them); ``ConfigurationError`` for anything ``Array(ndarray)`` would not have produced
    from a real, numeric ndarray. Nothing is allocated before the payload's length is known
    to be the declared size, and nothing is unpickled."""
    if not isinstance(array, Array):
        raise ConfigurationError(f"array {_shown(name)} is a {type(array).__name__}, not an Array")

    def refuse(why: str) -> ConfigurationError:
        return ConfigurationError(f"array {_shown(name)} cannot be read: {why}")

    if array.stype != _NPY_STYPE:
        raise refuse(f"its serialisation {_shown(array.stype)} is not .npy")
    data = array.data
    if not isinstance(data, bytes):
        raise refuse(f"its data is a {type(data).__name__}, not bytes")

    if data[: len(_NPY_MAGIC)] != _NPY_MAGIC or len(data) < len(_NPY_MAGIC) + 2:
        raise refuse("not .npy bytes")  # empty, a zip archive, a pickle, ...
    major, minor = data[len(_NPY_MAGIC)], data[len(_NPY_MAGIC) + 1]
    length_format = _NPY_LENGTH_FIELD.get(major)
    if length_format is None or minor != 0:
        raise refuse(f".npy format version {major}.{minor}")
    at = len(_NPY_MAGIC) + 2
    end = at + struct.calcsize(length_format)
    if len(data) < end:
        raise refuse("the .npy header is truncated")
    (header_length,) = struct.unpack(length_format, data[at:end])
    if header_length > _NPY_MAX_HEADER or len(data) < end + header_length:
        raise refuse("the .npy header is truncated or too long")
    try:
        header = data[end : end + header_length].decode("ascii")
    except UnicodeDecodeError:
        raise refuse("the .npy header is not ASCII") from None
    match = _NPY_HEADER.fullmatch(header)
    if match is None:
        raise refuse("the .npy header is not one numpy.save writes")
    descr, fortran, dims = match.groups()
    dtype = _NPY_DTYPES.get(descr)
    if dtype is None:
        raise refuse(f"dtype {descr!r} is not a real number or a boolean")
    shape = _npy_shape(dims)
    if shape is None:
        raise refuse("the .npy header's shape is not a tuple of at most 32 sizes")
    declared = _declared_shape(name, array)
    # Flower's legacy Parameters carry neither: their Arrays declare dtype "" and shape ().
    if array.dtype != _UNDECLARED_DTYPE or declared != ():
        if array.dtype not in (str(dtype), dtype.name):
            raise refuse(f"the Array declares dtype {_shown(array.dtype)}, its bytes {dtype.name}")
        if declared != shape:
            raise refuse(f"the Array declares shape {_shown(declared)}, its bytes {list(shape)}")
    count = math.prod(shape)
    start = end + header_length
    if count * dtype.itemsize != len(data) - start:
        raise refuse(
            f"{len(data) - start} bytes of values, where {dtype.name}{list(shape)} takes "
            f"{count * dtype.itemsize}"
        )
    try:
        values = np.frombuffer(data, dtype=dtype, count=count, offset=start)
        if fortran == "True":  # column-major values: the transposed shape, transposed back
            return values.reshape(shape[::-1]).T
        return values.reshape(shape)
    except (ValueError, TypeError, MemoryError) as exc:  # belt and braces: numpy's limits
        raise refuse(str(exc)) from None


def _npy_shape(dims: str) -> tuple[int, ...] | None:
    """The tuple a .npy header writes, from between its parentheses: "" or "3," or "2, 3"."""
    if not dims.strip():
        return ()
    parts = [part.strip() for part in dims.split(",")]
    if parts[-1]:
        if len(parts) == 1:
            return None  # "(3)" is an int, not a tuple
    else:
        parts.pop()  # the trailing comma
    if len(parts) > _NPY_MAX_DIMS or not all(
        part.isdigit() and len(part) <= _NPY_MAX_DIM_DIGITS for part in parts
    ):
        return None
    return tuple(int(part) for part in parts)


def single_array_record(content: RecordDict, what: str) -> ArrayRecord:
    """The one ``ArrayRecord`` of a content (the model): FedAvg-style messages have one."""
    if not isinstance(content, RecordDict):
        raise ConfigurationError(f"{what} holds a {type(content).__name__}, not a RecordDict")
    records = list(content.array_records.values())
    if len(records) != 1:
        raise ConfigurationError(f"{what} must hold exactly one ArrayRecord, not {len(records)}")
    record = records[0]
    if not isinstance(record, ArrayRecord):
        raise ConfigurationError(f"{what} holds a {type(record).__name__}, not an ArrayRecord")
    return record


def without_record(content: RecordDict, key: str) -> RecordDict:
    """A copy of ``content`` (sharing its records) without the record ``key``."""
    if not isinstance(content, RecordDict):
        raise ConfigurationError(f"the content is a {type(content).__name__}, not a RecordDict")
    return RecordDict({k: v for k, v in content.items() if k != key})
