"""secagg.flower.wire: the node table, the task digest and the array layout are canonical."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from secagg.errors import ConfigurationError, DecodeError
from secagg.flower import wire
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.params import Params
from secagg.protocol.messages import CommitRequest
from secagg.protocol.stages import Stage
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
