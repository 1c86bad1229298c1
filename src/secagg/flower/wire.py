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
- **The layout.** ``ArrayLayout`` maps an ``ArrayRecord`` to the one flat float32 vector that
  is aggregated: its floating-point arrays, in the record's order, each flattened row-major.
  Arrays of any other dtype (a BatchNorm's ``num_batches_tracked``) are not sent; the
  aggregate carries the global model's values for them.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError, DecodeError
from secagg.hazmat.kdf import encode_fields
from secagg.protocol import messages as pm
from secagg.protocol.stages import Stage

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
# The dtypes that are aggregated; each travels as float32 (float64 rounds to float32).
_FLOAT_KINDS = frozenset({"float16", "float32", "float64"})


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


# What each server message asks a client to answer: the stage its answer belongs to.
_ANSWERED_IN: dict[type[pm.Message], Stage] = {
    pm.RoundConfig: Stage.COMMIT,
    pm.CommitRequest: Stage.COMMIT,
    pm.CommitmentDigest: Stage.REVEAL,
    pm.Contributions: Stage.ADVERTISE,
    pm.PeerKeys: Stage.SHARE,
    pm.PeerShares: Stage.MASKED_INPUT,
    pm.SurvivorList: Stage.CONSISTENCY,
    pm.UnmaskRequest: Stage.UNMASK,
}


def requested_stage(data: bytes) -> Stage:
    """The stage a server message (its bytes, as they ride in ``MESSAGE``) asks a node to
    answer; for logs and for fault injection in tests. ``DecodeError`` for anything else."""
    message = pm.decode(data)
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
    fields: list[bytes | int | str] = [_CONTENT_LABEL]
    for key in sorted(content.keys()):
        record = content[key]
        if isinstance(record, ArrayRecord):
            fields += ["arrays", key, len(record)]
            for name, array in record.items():
                fields += [name, str(array.dtype), len(array.shape)]
                fields += [int(d) for d in array.shape]
                fields += [str(array.stype), bytes(array.data)]
        elif isinstance(record, ConfigRecord | MetricRecord):
            kind = "config" if isinstance(record, ConfigRecord) else "metrics"
            fields += [kind, key, len(record)]
            for name in sorted(record.keys()):
                fields += [name, _encode_value(record[name])]
        else:
            raise ConfigurationError(f"record {key!r} is a {type(record).__name__}")
    return hashlib.sha256(encode_fields(*fields)).digest()


def task_digest(round_id: int, node_table: bytes, content: bytes) -> bytes:
    """The ``task_hash`` a round is bound to: round id, node table, content digest."""
    return hashlib.sha256(encode_fields(_TASK_LABEL, round_id, node_table, content)).digest()


def _encode_value(value: object) -> bytes:
    """One config or metric value with its type; injective over Flower's value types."""
    if isinstance(value, list):
        return encode_fields("list", len(value), *(_encode_value(v) for v in value))
    if isinstance(value, bool):
        return encode_fields("bool", int(value))
    if isinstance(value, int):
        return encode_fields("int", str(value))
    if isinstance(value, float):
        return encode_fields("float", struct.pack(">d", value))
    if isinstance(value, str):
        return encode_fields("str", value)
    if isinstance(value, bytes):
        return encode_fields("bytes", value)
    raise ConfigurationError(f"cannot hash a record value of type {type(value).__name__}")


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
        if not all(isinstance(d, int) and d >= 0 for d in self.shape):
            raise ConfigurationError(f"array {self.name!r} has an invalid shape {self.shape!r}")
        object.__setattr__(self, "aggregated", self.dtype in _FLOAT_KINDS)
        object.__setattr__(self, "size", int(np.prod(self.shape, dtype=np.int64)))


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
        try:
            out[name] = np.asarray(array.numpy())
        except (TypeError, ValueError, OSError) as exc:
            raise ConfigurationError(f"array {name!r} cannot be read: {exc}") from None
    return out


def single_array_record(content: RecordDict, what: str) -> ArrayRecord:
    """The one ``ArrayRecord`` of a content (the model): FedAvg-style messages have one."""
    records = list(content.array_records.values())
    if len(records) != 1:
        raise ConfigurationError(f"{what} must hold exactly one ArrayRecord, not {len(records)}")
    record = records[0]
    assert isinstance(record, ArrayRecord)
    return record


def without_record(content: RecordDict, key: str) -> RecordDict:
    """A copy of ``content`` (sharing its records) without the record ``key``."""
    return RecordDict({k: v for k, v in content.items() if k != key})
