"""Replay the JSON protocol vectors: the same fixed randomness must give the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secagg.errors import DecodeError
from secagg.protocol.codec import decode
from tests.vectors.protocol_vectors import DIRECTORY, SPECS, record

ROUND_FILES = sorted(p for p in DIRECTORY.glob("*.json") if p.stem != "fails-decoder-rejections")


def test_there_is_a_vector_file_for_every_spec() -> None:
    assert {p.stem for p in ROUND_FILES} == {s["name"] for s in SPECS}
    assert any(json.loads(p.read_text())["outcome"] != "completed" for p in ROUND_FILES)


@pytest.mark.parametrize("path", ROUND_FILES, ids=lambda p: p.stem)
def test_replaying_a_vector_reproduces_every_message_and_the_result(path: Path) -> None:
    stored = json.loads(path.read_text())
    assert record(stored["spec"]) == stored


@pytest.mark.parametrize("path", ROUND_FILES, ids=lambda p: p.stem)
def test_every_recorded_message_decodes_to_itself(path: Path) -> None:
    for entry in json.loads(path.read_text())["messages"]:
        data = bytes.fromhex(entry["hex"])
        assert decode(data).encode() == data


def test_every_rejected_encoding_is_still_rejected() -> None:
    stored = json.loads((DIRECTORY / "fails-decoder-rejections.json").read_text())
    assert stored["rejected"]
    for case in stored["rejected"]:
        with pytest.raises(DecodeError):
            decode(bytes.fromhex(case["hex"]))
