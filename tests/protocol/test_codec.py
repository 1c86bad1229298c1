"""The codec's one table of tags, and what every message declares about itself.

Specification: every tag in ``TAGS`` decodes in a process that imported nothing but the codec;
every message class is listed in the table under its tag and declares its direction and
stage; defining a class registers nothing; and the tables that were listed by hand before
(which message a client sends in each stage, which stage a CKKS answer belongs to, the reason
a client that misses a stage is dropped) are derived from those declarations and equal what
was listed before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.errors import DecodeError, DropReason, UsageError
from secagg.protocol import codec
from secagg.protocol.codec import TAGS, Direction, Message, message_class
from secagg.protocol.stages import Stage, missed, stage_answered_by
from secagg.schemes.ckks import CkksResult, CkksScheme, CkksSumRequest, CkksUpload
from secagg.schemes.masking.messages import (
    CLIENT_MESSAGE,
    AdvertiseKeys,
    Commitment,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    Reveal,
    SurvivorList,
    UnmaskResponse,
)
from secagg.schemes.plaintext import PlaintextScheme, PlainUpdate
from tests.sessions.test_messages import session_samples

from .test_fuzz_handlers import bounded
from .test_messages import SID, sample_messages


def one_message_per_tag() -> dict[int, Message]:
    """A sample of every message in the table, by tag."""
    samples: dict[int, Message] = {m.TAG: m for m in sample_messages()}
    samples[SurvivorList.TAG] = SurvivorList(SID, 3, (1, 2))
    samples[ConsistencySignature.TAG] = ConsistencySignature(SID, 3, b"s" * 64)
    samples.update({m.TAG: m for m in session_samples()})
    ckks = CkksScheme(dim=4, max_weight=2).round_config(range(3), nonce=bytes(16))
    plain = PlaintextScheme(dim=2).round_config(range(3), nonce=bytes(16))
    for message in (
        ckks,
        CkksUpload(ckks.config_id, 1, b"ciphertext"),
        CkksSumRequest(ckks.config_id, 1, (0, 1, 2), b"sum"),
        CkksResult(ckks.config_id, 1, 3, bytes(8)),
        plain,
        PlainUpdate(plain.config_id, 1, 1, bytes(8)),
    ):
        samples[message.TAG] = message
    return samples


def test_every_tag_in_the_table_has_a_sample_here() -> None:
    assert set(one_message_per_tag()) == set(TAGS)


_FRESH_PROCESS = """
import json, sys
import secagg.protocol.codec as codec
owners = {path.partition(":")[0] for path in codec.TAGS.values()}
assert not owners & set(sys.modules), sorted(owners & set(sys.modules))
for tag, hexed in json.loads(sys.argv[1]).items():
    data = bytes.fromhex(hexed)
    message = codec.decode(data)
    owner = f"{type(message).__module__}:{type(message).__qualname__}"
    assert owner == codec.TAGS[int(tag)], (tag, owner)
    assert message.encode() == data, tag
print("decoded", len(json.loads(sys.argv[1])))
"""


def test_every_tag_decodes_in_a_fresh_process_that_imported_only_the_codec() -> None:
    """No module has to be imported first for its messages to decode (before, a plaintext
    message decoded only where ``secagg.schemes.plaintext`` had been imported)."""
    encoded = {tag: m.encode().hex() for tag, m in one_message_per_tag().items()}
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, json.dumps(encoded)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"decoded {len(TAGS)}"


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_every_message_is_listed_under_its_tag_and_declares_its_direction_and_stage(
    tag: int,
) -> None:
    cls = message_class(tag)
    assert tag == cls.TAG
    assert TAGS[tag] == f"{cls.__module__}:{cls.__qualname__}"
    # Declared by the class itself, never inherited from a base it happens to share.
    assert isinstance(vars(cls)["DIRECTION"], Direction)
    assert isinstance(vars(cls)["STAGE"], Stage)
    assert cls.STAGE not in (Stage.COMPLETED, Stage.ABORTED)


def test_every_message_travels_one_way() -> None:
    up, down = codec.client_messages(), codec.server_messages()
    assert not set(up) & set(down)
    assert {m.TAG for m in up + down} == set(TAGS)
    assert all(m.DIRECTION is Direction.UP for m in up)
    assert all(m.DIRECTION is Direction.DOWN for m in down)


def test_a_message_missing_from_the_table_is_refused_on_definition() -> None:
    with pytest.raises(UsageError, match="not listed in TAGS under tag 99"):

        class Stray(Message):  # pragma: no cover - never defined
            TAG: ClassVar[int] = 99
            DIRECTION: ClassVar[Direction] = Direction.UP
            STAGE: ClassVar[Stage] = Stage.UPLOAD


def test_a_message_cannot_take_a_tag_the_table_gives_another_class() -> None:
    with pytest.raises(UsageError, match="not listed in TAGS under tag 1"):

        class Impostor(Message):  # pragma: no cover - never defined
            TAG: ClassVar[int] = 1
            DIRECTION: ClassVar[Direction] = Direction.DOWN
            STAGE: ClassVar[Stage] = Stage.COMMIT


def test_defining_a_class_registers_nothing() -> None:
    """The table is the only source of tags: a refused class leaves no trace in decoding."""
    with pytest.raises(UsageError):

        class Stray(Message):  # pragma: no cover - never defined
            TAG: ClassVar[int] = 99

    with pytest.raises(DecodeError, match="unknown message tag 99"):
        codec.decode(codec.MAGIC + bytes([codec.VERSION, 99]))
    assert not hasattr(Message, "_registry")


def test_the_masking_client_message_of_each_stage_is_what_was_listed_before() -> None:
    before = {
        Stage.COMMIT: Commitment,
        Stage.REVEAL: Reveal,
        Stage.ADVERTISE: AdvertiseKeys,
        Stage.SHARE: EncryptedShares,
        Stage.MASKED_INPUT: MaskedInput,
        Stage.CONSISTENCY: ConsistencySignature,
        Stage.UNMASK: UnmaskResponse,
    }
    assert before == CLIENT_MESSAGE
    assert list(CLIENT_MESSAGE) == [s for s in Stage if s in CLIENT_MESSAGE]  # stage order


def test_every_client_message_names_the_stage_it_answers() -> None:
    # Masking's, then what service.client listed by hand for CKKS, then plaintext's.
    for stage, kind in CLIENT_MESSAGE.items():
        assert kind.STAGE is stage
    samples = one_message_per_tag()
    assert stage_answered_by(samples[CkksUpload.TAG]) is Stage.UPLOAD
    assert stage_answered_by(samples[CkksResult.TAG]) is Stage.DECRYPT
    assert stage_answered_by(samples[PlainUpdate.TAG]) is Stage.UPLOAD
    for cls in codec.server_messages():
        with pytest.raises(UsageError, match="is not a client message"):
            stage_answered_by(samples[cls.TAG])


def test_a_client_that_misses_any_stage_a_message_answers_has_its_reason() -> None:
    """What masking's server and the upload schemes' server listed by hand, and the service
    looked up by string, is one table covering every stage a client answers in."""
    before = {
        Stage.COMMIT: DropReason.MISSED_COMMIT,
        Stage.REVEAL: DropReason.MISSED_REVEAL,
        Stage.ADVERTISE: DropReason.MISSED_ADVERTISE,
        Stage.SHARE: DropReason.MISSED_SHARE,
        Stage.MASKED_INPUT: DropReason.MISSED_MASKED_INPUT,
        Stage.CONSISTENCY: DropReason.MISSED_CONSISTENCY,
        Stage.UNMASK: DropReason.MISSED_UNMASK,
        Stage.UPLOAD: DropReason.MISSED_UPLOAD,
        Stage.DECRYPT: DropReason.MISSED_DECRYPT,
    }
    assert {stage: missed(stage) for stage in before} == before
    for cls in codec.client_messages():
        assert missed(cls.STAGE).value == f"missed-{cls.STAGE.value}"


@bounded(400)
@given(st.sampled_from(sorted(TAGS)), st.binary(max_size=300))
def test_any_body_behind_any_tag_of_the_table_is_a_message_or_a_decode_error(
    tag: int, body: bytes
) -> None:
    """One decoder for every scheme's messages: junk behind any tag is a ``DecodeError``, and
    what decodes is canonical (it encodes to the very bytes it came from)."""
    data = codec.MAGIC + bytes([codec.VERSION, tag]) + body
    try:
        message = codec.decode(data)
    except DecodeError:
        return
    assert message.encode() == data
    assert type(message) is message_class(tag)
