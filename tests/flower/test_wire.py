"""secagg.flower.wire: the node table, the task digest and the array layout are canonical."""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import random
import tracemalloc
import typing

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from secagg.errors import ConfigurationError, DecodeError
from secagg.flower import wire
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.stages import Stage
from secagg.schemes.masking.messages import CommitRequest
from secagg.schemes.masking.parameters import Params
from tests.flower.helpers import model, task


def test_a_node_table_lists_64_bit_node_ids_in_order_and_decodes_to_the_same() -> None:
    nodes = [2**64 - 1, 0, 2**63 + 5, 17]
    table = wire.encode_nodes(nodes)
    assert len(table) == 8 * len(nodes)
    assert wire.decode_nodes(table) == tuple(sorted(nodes))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        b"\x00" * 8 + b"\x00" * 8,  # a node twice
        (5).to_bytes(8, "big") + (3).to_bytes(8, "big"),  # out of order
        "not bytes",
    ],
)
def test_a_node_table_that_encode_nodes_would_not_produce_is_refused(data: object) -> None:
    with pytest.raises(DecodeError):
        wire.decode_nodes(data)


def test_a_cohort_naming_a_node_twice_or_a_negative_id_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        wire.encode_nodes([3, 3])
    with pytest.raises(ConfigurationError):
        wire.encode_nodes([-1, 4])


def test_the_content_digest_changes_with_any_byte_any_value_or_any_value_type() -> None:
    base = wire.content_digest(task())
    other_model = ArrayRecord(dict(model().items()))
    other_model["b"] = Array(np.array([0.5, -0.2500001], dtype=np.float32))
    variants = [
        task(arrays=other_model),
        task(server_round=2),
        RecordDict({"arrays": model(), "config": ConfigRecord({"server-round": 1.0, "lr": 0.1})}),
        RecordDict({"arrays": model(), "config": ConfigRecord({"server-round": True, "lr": 0.1})}),
        RecordDict({"arrays": model(), "config": MetricRecord({"server-round": 1, "lr": 0.1})}),
        RecordDict({"arrays": model(), "other": ConfigRecord({"server-round": 1, "lr": 0.1})}),
    ]
    digests = {wire.content_digest(v) for v in variants}
    assert base not in digests
    assert len(digests) == len(variants)


def test_the_content_digest_ignores_the_order_of_config_entries() -> None:
    swapped = RecordDict(
        {"config": ConfigRecord({"lr": 0.1, "server-round": 1}), "arrays": model()}
    )
    assert wire.content_digest(swapped) == wire.content_digest(task())


def test_the_task_digest_binds_the_round_and_the_node_table() -> None:
    content = wire.content_digest(task())
    table = wire.encode_nodes([1, 2, 3])
    base = wire.task_digest(1, table, content)
    assert wire.task_digest(2, table, content) != base
    assert wire.task_digest(1, wire.encode_nodes([1, 2, 4]), content) != base


def test_the_layout_aggregates_float_arrays_and_carries_the_others_over() -> None:
    record = ArrayRecord(
        {
            "half": Array(np.array([[1.5, -2.0]], dtype=np.float16)),
            "count": Array(np.array([3, 4, 5], dtype=np.int64)),
            "double": Array(np.array([0.125], dtype=np.float64)),
        }
    )
    layout = wire.ArrayLayout.of(record)
    assert layout.size == 3
    vector = layout.flatten(record)
    assert vector.dtype == np.float32
    assert vector.tolist() == [1.5, -2.0, 0.125]
    back = layout.unflatten(vector + 1, like=record)
    assert list(back) == ["half", "count", "double"]
    assert back["half"].numpy().dtype == np.float16
    assert back["half"].numpy().tolist() == [[2.5, -1.0]]
    assert back["count"].numpy().tolist() == [3, 4, 5]
    assert back["double"].numpy().tolist() == [1.125]


def test_the_layout_refuses_what_it_cannot_carry_faithfully() -> None:
    layout = wire.ArrayLayout.of(model())
    nan = ArrayRecord(dict(model().items()))
    nan["b"] = Array(np.array([np.nan, 0.0], dtype=np.float32))
    with pytest.raises(ConfigurationError, match="NaN"):
        layout.flatten(nan)
    reordered = ArrayRecord({k: model()[k] for k in ("b", "w", "steps")})
    with pytest.raises(ConfigurationError, match="order"):
        layout.flatten(reordered)
    with pytest.raises(ConfigurationError, match="float16"):
        half = ArrayRecord({"h": Array(np.zeros(1, dtype=np.float16))})
        wire.ArrayLayout.of(half).unflatten(np.array([1e6]), like=half)
    with pytest.raises(ConfigurationError, match="nothing to aggregate"):
        wire.ArrayLayout.of(ArrayRecord({"n": Array(np.zeros(2, dtype=np.int32))}))


def test_each_server_message_names_the_stage_its_answer_belongs_to() -> None:
    params = Params(dim=4, max_clients=5)
    config = params.round_config(range(5), nonce=DeterministicRandomness(b"n" * 16).bytes(16))
    assert wire.requested_stage(config.encode()) is Stage.COMMIT
    again = CommitRequest(config.config_id, 0, 2)
    assert wire.requested_stage(again.encode()) is Stage.COMMIT
    with pytest.raises(DecodeError):
        wire.requested_stage(b"junk")


def test_the_stage_each_server_message_requests_is_its_own_declaration() -> None:
    """Derived from masking's messages (one-shot and sessions'), it is the table that was
    listed by hand before, with the messages sessions send."""
    from secagg.schemes.masking import messages as pm
    from secagg.schemes.masking.session import messages as sm

    before = {
        sm.SessionConfig: Stage.COMMIT,
        sm.PeerSetupShares: Stage.MASKED_INPUT,
        sm.RoundTask: Stage.MASKED_INPUT,
        sm.SessionSurvivorList: Stage.CONSISTENCY,
        sm.SessionUnmaskRequest: Stage.UNMASK,
        pm.RoundConfig: Stage.COMMIT,
        pm.CommitRequest: Stage.COMMIT,
        pm.CommitmentDigest: Stage.REVEAL,
        pm.Contributions: Stage.ADVERTISE,
        pm.PeerKeys: Stage.SHARE,
        pm.PeerShares: Stage.MASKED_INPUT,
        pm.SurvivorList: Stage.CONSISTENCY,
        pm.UnmaskRequest: Stage.UNMASK,
    }
    assert before == wire._ANSWERED_IN


# ----------------------------------------------------------------------------- junk arrays
# What the server sends as the model is read by ArrayLayout.of and .flatten (and hashed by
# content_digest): whatever junk an Array holds, the answer is ConfigurationError, which the
# mod turns into its typed abort, and never another exception (EOFError, BadZipFile,
# MemoryError, ...) that Flower would report as a ClientAppException. Each test below is one
# kind of junk; the fuzz test at the end tries many more at random.

_GOOD = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)


def _npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _npy(header: str | bytes, payload: bytes = b"", *, version: bytes = b"\x01\x00") -> bytes:
    """A .npy file with this header (space-padded, as numpy pads one) and payload."""
    text = header.encode("latin-1") if isinstance(header, str) else header
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    width = 2 if version[0] == 1 else 4
    return b"\x93NUMPY" + version + len(text).to_bytes(width, "little") + text + payload


def _header(descr: str, shape: str, fortran: str = "False") -> str:
    return f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"


def _raw(
    data: bytes,
    dtype: str = "float32",
    shape: tuple[int, ...] = (1, 3),
    stype: str = "numpy.ndarray",
) -> Array:
    """An Array as Flower carries it, with every field chosen by the sender."""
    return Array(dtype=dtype, shape=shape, stype=stype, data=data)


def _assert_refused(junk: Array, match: str | None = None, **fields: object) -> None:
    """Both readers of a model refuse ``junk`` with ConfigurationError (pytest.raises lets
    any other exception through, failing the test): ArrayLayout.of on the server's model,
    and flatten against the layout the client expects. ``fields`` are set on the record's
    copy of ``junk`` past the checks of Flower's constructors (objects that are unpickled or
    assigned to are not rebuilt through them)."""
    record = ArrayRecord({"good": Array(_GOOD), "junk": junk})
    for attribute, value in fields.items():
        setattr(record["junk"], attribute, value)
    with pytest.raises(ConfigurationError, match=match):
        wire.ArrayLayout.of(record)
    expected = wire.ArrayLayout.of(ArrayRecord({"good": Array(_GOOD), "junk": Array(_GOOD)}))
    with pytest.raises(ConfigurationError, match=match):
        expected.flatten(record)


class _Detonator:
    """Unpickling one of these records it: the readers must never unpickle."""

    unpickled: typing.ClassVar[list[str]] = []

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_Detonator.unpickled.append, ("unpickled",))


def test_a_valid_array_is_read_as_numpy_reads_it() -> None:
    arrays = {
        "c": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "big-endian": np.arange(3, dtype=">f2"),
        "scalar": np.array(1.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "count": np.array([7], dtype=np.uint64),
        "mask": np.array([True, False]),
    }
    record = ArrayRecord({name: Array(a) for name, a in arrays.items()})
    assert b"'fortran_order': True" in record["fortran"].data  # what Flower itself writes
    layout = wire.ArrayLayout.of(record)
    assert [(e.name, e.shape, e.dtype) for e in layout.entries] == [
        (name, a.shape, a.dtype.name) for name, a in arrays.items()
    ]
    expected = [a.reshape(-1) for a in arrays.values() if a.dtype.kind == "f"]
    assert layout.flatten(record).tolist() == np.concatenate(expected).tolist()


def test_empty_bytes_are_refused() -> None:
    _assert_refused(_raw(b""), match="not .npy")


@pytest.mark.parametrize("length", range(len(_npy_bytes(_GOOD)) - 1))
def test_every_truncation_of_a_valid_array_is_refused(length: int) -> None:
    _assert_refused(_raw(_npy_bytes(_GOOD)[:length]))


def test_bytes_after_the_values_are_refused() -> None:
    _assert_refused(_raw(_npy_bytes(_GOOD) + b"\x00"), match="bytes of values")


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04",
        b"PK\x03\x04" + b"\x00" * 40,
        b"PK\x05\x06" + b"\x00" * 18,  # an empty zip archive
    ],
)
def test_zip_magic_is_refused(data: bytes) -> None:
    _assert_refused(_raw(data), match="not .npy")


def test_a_valid_npz_archive_is_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, junk=_GOOD)
    _assert_refused(_raw(buffer.getvalue()), match="not .npy")


def test_a_pickle_is_refused_and_never_unpickled() -> None:
    _Detonator.unpickled.clear()
    _assert_refused(_raw(pickle.dumps(_Detonator())), match="not .npy")
    _assert_refused(_raw(pickle.dumps([0.5, -1.0, 2.0])), match="not .npy")
    assert _Detonator.unpickled == []


def test_an_object_array_is_refused_and_never_unpickled() -> None:
    _Detonator.unpickled.clear()
    objects = np.array([[_Detonator(), 1, 2]], dtype=object)
    _assert_refused(_raw(_npy_bytes(objects, allow_pickle=True), dtype="object"), match="'|O'")
    assert _Detonator.unpickled == []


@pytest.mark.parametrize("descr", ["nope", "<f3", "f4", "=f4", "<F4", "", "<f4'", "<i4,<i4"])
def test_a_dtype_descriptor_that_is_not_a_dtype_is_refused(descr: str) -> None:
    _assert_refused(_raw(_npy(_header(descr, "(1, 3)"), b"\x00" * 12)))


@pytest.mark.parametrize("descr", ["<f16", "<f12", "<c8", "<M8[s]", "|V4", "<U1", "|O"])
def test_a_dtype_of_another_kind_or_width_is_refused_whatever_the_platform(descr: str) -> None:
    # '<f16' is x86's long double: numpy reads it there, and refuses it where there is none.
    _assert_refused(_raw(_npy(_header(descr, "(1, 3)"), b"\x00" * 48), dtype=descr))


@pytest.mark.parametrize(
    "array",
    [
        np.array([["a", "b", "c"]]),
        np.array([[b"a", b"b", b"c"]]),
        np.zeros((1, 3), dtype=np.complex64),
        np.zeros((1, 3), dtype=np.complex128),
        np.zeros((1, 3), dtype=[("x", "<f4"), ("y", "<i4")]),
        np.zeros((1, 3), dtype="V4"),
        np.zeros((1, 3), dtype="datetime64[s]"),
        np.zeros((1, 3), dtype="timedelta64[s]"),
    ],
    ids=lambda a: str(a.dtype),
)
def test_an_array_that_is_not_real_numbers_or_booleans_is_refused(array: np.ndarray) -> None:
    _assert_refused(Array(array))


def test_the_arrays_declared_dtype_must_be_its_bytes_dtype() -> None:
    data = _npy_bytes(_GOOD)
    for declared in ["float64", "int32", "<f4x", ">f4", ""]:
        _assert_refused(_raw(data, dtype=declared), match="declares dtype")


@pytest.mark.parametrize(
    ("shape", "descr", "dims"),
    [
        ((2**28,), "<f8", "(268435456,)"),  # 2 GiB of float64
        ((10**6, 10**6), "<f8", "(1000000, 1000000)"),  # 7 TiB
        ((2**62, 2**62), "|u1", "(4611686018427387904, 4611686018427387904)"),  # beyond int64
    ],
)
def test_a_huge_declared_shape_is_refused_without_allocating_it(
    shape: tuple[int, ...], descr: str, dims: str
) -> None:
    junk = _raw(_npy(_header(descr, dims), b"\x00" * 64), dtype=str(np.dtype(descr)), shape=shape)
    tracemalloc.start()
    try:
        _assert_refused(junk, match="bytes of values")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


@pytest.mark.parametrize(
    "dims",
    [
        "(-3,)",  # negative
        "(1, -3)",
        "(3)",  # an int, not a tuple
        "(1,, 3)",
        "(1.0, 3)",
        "(0x3,)",
        "[1, 3]",
        "(" + "1, " * 33 + ")",  # more than 32 dimensions
        "(" + "9" * 5000 + ",)",  # more digits than int() converts
    ],
)
def test_a_header_shape_that_is_not_a_tuple_of_sizes_is_refused(dims: str) -> None:
    _assert_refused(_raw(_npy(_header("<f4", dims), b"\x00" * 12)))


def test_a_shape_with_a_zero_is_an_empty_array_and_must_have_no_values() -> None:
    empty = Array(np.zeros((3, 0), dtype=np.float32))
    layout = wire.ArrayLayout.of(ArrayRecord({"good": Array(_GOOD), "empty": empty}))
    assert layout.size == 3
    with_values = _raw(empty.data + b"\x00" * 4, shape=(3, 0))
    _assert_refused(with_values, match="bytes of values")
    huge_but_empty = _raw(_npy(_header("<f4", "(0, 4611686018427387904, 4611686018427387904)")))
    _assert_refused(huge_but_empty, shape=(0, 2**62, 2**62))  # numpy's own size limit, typed


@pytest.mark.parametrize(
    "shape",
    [(3,), (1, 3, 1), (3, 1), (), (-1, 3), (1, -3), [1, 3], (True, 3), (2**64, 1), (1,) * 33],
    ids=repr,
)
def test_the_arrays_declared_shape_must_be_its_bytes_shape(shape: tuple[int, ...]) -> None:
    _assert_refused(_raw(_npy_bytes(_GOOD)), match="shape", shape=shape)


def test_a_legacy_array_declares_nothing_and_is_read_from_its_header_alone() -> None:
    # flwr.compat's parameters_to_arrayrecord: dtype "" and shape (), whatever the array.
    legacy = _raw(_npy_bytes(_GOOD), dtype="", shape=())
    record = ArrayRecord({"0": legacy})
    layout = wire.ArrayLayout.of(record)
    assert [(e.shape, e.dtype) for e in layout.entries] == [((1, 3), "float32")]
    assert layout.flatten(record).tolist() == _GOOD.reshape(-1).tolist()
    _assert_refused(_raw(b"", dtype="", shape=()), match="not .npy")
    _assert_refused(_raw(_npy_bytes(_GOOD) + b"\x00", dtype="", shape=()), match="bytes of")
    _assert_refused(_raw(_npy_bytes(np.array(["abc"])), dtype="", shape=()), match="'<U3'")
    _assert_refused(_raw(_npy_bytes(_GOOD), dtype="", shape=(1, 3)), match="declares dtype")


def test_fortran_order_is_read_as_the_logical_array_not_as_its_memory_order() -> None:
    fortran = Array(np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
    c_order = Array(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert fortran.data != c_order.data
    for array in (fortran, c_order):
        record = ArrayRecord({"w": array})
        assert wire.ArrayLayout.of(record).flatten(record).tolist() == [0, 1, 2, 3, 4, 5]
    _assert_refused(_raw(_npy(_header("<f4", "(1, 3)", fortran="1"), b"\x00" * 12)))


@pytest.mark.parametrize("stype", ["torch.Tensor", "", "numpy.ndarray "])
def test_a_serialisation_other_than_npy_is_refused(stype: str) -> None:
    _assert_refused(_raw(_npy_bytes(_GOOD), stype=stype), match="serialisation")


def test_array_data_that_is_not_bytes_is_refused() -> None:
    for data in ("text", bytearray(_npy_bytes(_GOOD)), 10**12, None):
        _assert_refused(_raw(_npy_bytes(_GOOD)), match="not bytes", data=data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x93NUMPY",  # no version
        b"\x93NUMPY\x09\x00" + _npy_bytes(_GOOD)[8:],  # no such version
        b"\x93NUMPY\x01\x01" + _npy_bytes(_GOOD)[8:],
        b"\x93NUMPY\x01\x00\xff\xff" + b" " * 100,  # a header longer than the data
        b"\x93NUMPY\x02\x00\xff\xff\xff\xff",
        _npy(" " * 20_000 + _header("<f4", "(1, 3)"), b"\x00" * 12, version=b"\x02\x00"),
        _npy(_header("<f4", "(1, 3)").encode() + b"\xe9", b"\x00" * 12),  # not ASCII
        _npy(b"\xff\xfe" + _header("<f4", "(1, 3)").encode(), b"\x00" * 12, version=b"\x03\x00"),
        _npy("{'descr': '<f4', 'shape': (1, 3), }", b"\x00" * 12),  # a key missing
        _npy(_header("<f4", "(1, 3)")[:-1] + "'extra': 1, }", b"\x00" * 12),
        _npy("{'fortran_order': False, 'descr': '<f4', 'shape': (1, 3), }", b"\x00" * 12),
        _npy("{[]: 1}", b"\x00" * 12),  # literal_eval: unhashable
        _npy("{'descr': '<f4', 'fortran_order': False, 'shape': [[[[[[", b"\x00" * 12),
        _npy("(" * 5000, b"\x00" * 12),  # deep nesting
        _npy("__import__('os').system('false')", b"\x00" * 12),
        _npy("", b"\x00" * 12),
    ],
)
def test_a_header_that_numpy_save_would_not_write_is_refused(data: bytes) -> None:
    _assert_refused(_raw(data))


def test_arrays_named_otherwise_than_the_models_are_refused() -> None:
    layout = wire.ArrayLayout.of(model())
    arrays = dict(model().items())
    renamed = ArrayRecord({("v" if k == "w" else k): a for k, a in arrays.items()})
    missing = ArrayRecord({k: a for k, a in arrays.items() if k != "b"})
    extra = ArrayRecord({**arrays, "z": Array(np.zeros(1, dtype=np.float32))})
    for record in (renamed, missing, extra, ArrayRecord()):
        with pytest.raises(ConfigurationError, match="names"):
            layout.flatten(record)
    with pytest.raises(ConfigurationError, match="nothing to aggregate"):
        wire.ArrayLayout.of(ArrayRecord())


def test_a_model_that_is_not_an_array_record_is_refused() -> None:
    layout = wire.ArrayLayout.of(model())
    for junk in (None, b"\x93NUMPY", {"w": _GOOD}, ConfigRecord({"w": 1})):
        with pytest.raises(ConfigurationError):
            wire.ArrayLayout.of(junk)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            layout.flatten(junk)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            layout.unflatten(np.zeros(layout.size), like=junk)  # type: ignore[arg-type]


def test_content_without_exactly_one_array_record_is_refused() -> None:
    for content in (
        RecordDict({"config": ConfigRecord({"lr": 0.1})}),
        RecordDict({"a": model(), "b": model()}),
        None,
        "junk",
        {"arrays": model()},
    ):
        with pytest.raises(ConfigurationError):
            wire.single_array_record(content, "the train message")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        wire.without_record("junk", wire.RECORD_KEY)  # type: ignore[arg-type]


def _smuggle(record: object, key: object, value: object) -> None:
    """Store ``value`` past Flower's own checks, as a hostile sender's objects may arrive."""
    record.__dict__["_data"][key] = value


def _with_array(array: Array, **fields: object) -> RecordDict:
    record = ArrayRecord({"w": array})
    for attribute, value in fields.items():
        setattr(record["w"], attribute, value)
    return RecordDict({"arrays": record})


def _digest_junk() -> list[object]:
    surrogate_dtype = _raw(_npy_bytes(_GOOD), dtype="\ud800")
    nested = ConfigRecord({"x": [1, 2]})
    _smuggle(nested, "x", [[1, 2]])
    loop: list[object] = []
    loop.append(loop)
    looped = ConfigRecord({"x": [1]})
    _smuggle(looped, "x", loop)
    odd = ConfigRecord({"x": 1})
    _smuggle(odd, "x", object())
    odd_record = RecordDict({"x": ConfigRecord()})
    _smuggle(odd_record, "x", "not a record")
    bad_key = RecordDict({"x": ConfigRecord()})
    _smuggle(bad_key, 3, ConfigRecord())
    return [
        None,
        "junk",
        {"arrays": model()},
        _with_array(Array(_GOOD), shape=(-1, 3)),
        _with_array(Array(_GOOD), shape=(1, 2**64)),
        _with_array(Array(_GOOD), shape="(1, 3)"),
        _with_array(Array(_GOOD), data="text"),
        _with_array(Array(_GOOD), data=10**12),  # bytes(10**12) would allocate a terabyte
        _with_array(Array(_GOOD), dtype=None),
        _with_array(Array(_GOOD), stype=b"numpy.ndarray"),
        _with_array(surrogate_dtype),
        RecordDict({"arrays": ArrayRecord({"\ud800": Array(_GOOD)})}),
        RecordDict({"\udfff": ConfigRecord({"x": 1})}),
        RecordDict({"config": ConfigRecord({"\ud800": 1})}),
        RecordDict({"config": ConfigRecord({"x": "\ud800"})}),
        RecordDict({"config": ConfigRecord({"x": ["ok", "\ud800"]})}),
        RecordDict({"config": ConfigRecord({"x": 10**5000})}),
        RecordDict({"config": nested}),
        RecordDict({"config": looped}),
        RecordDict({"config": odd}),
        odd_record,
        bad_key,
    ]


@pytest.mark.parametrize("content", _digest_junk(), ids=range(len(_digest_junk())))
def test_content_the_digest_cannot_hash_faithfully_is_refused(content: object) -> None:
    with pytest.raises(ConfigurationError):
        wire.content_digest(content)  # type: ignore[arg-type]


def _random_npy(rng: random.Random) -> Array:
    """An Array whose .npy bytes and declared fields are drawn at random from near misses."""
    descr = rng.choice(["<f4", ">f8", "<f2", "|b1", "<i8", "|u1", "<c8", "|O", "<U2", "<f16", "x"])
    rank = rng.choice([0, 1, 2, 3, 40])
    dims = [rng.choice([0, 1, 2, 3, 7, -1, 2**31, 2**63, 10**30]) for _ in range(rank)]
    dims_text = "(" + ", ".join(map(str, dims)) + ("," if rank == 1 else "") + ")"
    header = _header(descr, dims_text, rng.choice(["False", "True", "0"]))
    if rng.random() < 0.2:  # a character of the header replaced
        at = rng.randrange(len(header))
        header = header[:at] + chr(rng.randrange(128)) + header[at + 1 :]
    try:
        itemsize = np.dtype(descr).itemsize
    except TypeError:
        itemsize = 4
    count = math.prod(dims) if all(d >= 0 for d in dims) else 1
    length = count * itemsize if 0 <= count * itemsize <= 256 else rng.randrange(64)
    length = max(0, length + rng.choice([0, 0, 0, -1, 1, itemsize]))
    version = rng.choice([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x01\x01"])
    data = _npy(header, rng.randbytes(length), version=version)
    shape = tuple(dims) if rng.random() < 0.9 else (rng.randrange(4),)
    try:
        dtype = str(np.dtype(descr)) if rng.random() < 0.9 else "float32"
    except TypeError:
        dtype = descr
    if rng.random() < 0.2:  # as legacy Parameters arrive: nothing declared
        dtype, shape = "", ()
    return _raw(data, dtype=dtype, shape=shape)


def _mutated(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # a truncation
        return data[: rng.randrange(len(data))]
    if kind == 1:  # bytes flipped, most in the header
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(min(len(out), 90))] = rng.randrange(256)
        return bytes(out)
    if kind == 2:  # random bytes, sometimes behind a known magic
        prefix = rng.choice([b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"\x80\x04"])
        return prefix + rng.randbytes(rng.randrange(120))
    return data + rng.randbytes(rng.randint(1, 8))  # trailing bytes


def test_fuzz_only_configuration_error_escapes_and_what_is_read_is_what_numpy_reads() -> None:
    """A seeded loop (hypothesis is not in the Flower venv) over random byte strings,
    truncations and bit flips of valid arrays, and near-miss headers with matching or
    mismatching declared fields. Each array is refused with ConfigurationError, or accepted,
    and then read exactly as numpy.load reads the same bytes."""
    rng = random.Random(20251207)
    valid = [
        Array(_GOOD),
        Array(np.asfortranarray(np.arange(6, dtype=np.float64).reshape(3, 2))),
        Array(np.array([1, 2], dtype=np.int64)),
        Array(np.zeros((0, 2), dtype=np.float16)),
    ]
    accepted = refused = 0
    for i in range(4000):
        if i % 2:
            junk = _random_npy(rng)
        else:
            base = rng.choice(valid)
            junk = _raw(_mutated(rng, base.data), dtype=base.dtype, shape=base.shape)
        record = ArrayRecord({"good": Array(_GOOD), "junk": junk})
        try:
            layout = wire.ArrayLayout.of(record)
            vector = layout.flatten(record)
        except ConfigurationError:
            refused += 1
            continue
        accepted += 1
        value = np.load(io.BytesIO(junk.data), allow_pickle=False)
        assert layout.entries[1].shape == value.shape
        if junk.dtype or junk.shape:
            assert value.shape == junk.shape
            assert junk.dtype in (str(value.dtype), value.dtype.name)
        if layout.entries[1].aggregated:
            with np.errstate(over="ignore"):
                expected = value.reshape(-1).astype(np.float32)
            assert vector[3:].tobytes() == expected.tobytes()
        wire.content_digest(RecordDict({"arrays": record}))
    assert accepted > 50
    assert refused > 2000


def test_fuzz_node_tables_and_server_messages_raise_only_decode_error() -> None:
    rng = random.Random(18)
    table = wire.encode_nodes([1, 2**40, 2**64 - 1])
    params = Params(dim=4, max_clients=5)
    config = params.round_config(range(5), nonce=DeterministicRandomness(b"n" * 16).bytes(16))
    message = config.encode()
    for _ in range(3000):
        for valid, decode in ((table, wire.decode_nodes), (message, wire.requested_stage)):
            data = _mutated(rng, valid)
            with contextlib.suppress(DecodeError):  # anything else fails the test
                decode(data)
