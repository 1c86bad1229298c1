"""A session's messages: canonical bytes, one typed message per step, junk refused.

Specification: every session message encodes to bytes that decode to an equal message and
encode again to the same bytes; a truncated, extended or mistagged message is a
``DecodeError``; a session configuration whose caps are not the ones its round configuration
carries does not decode; next-key signatures are empty or 64 bytes.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.errors import DecodeError
from secagg.protocol.codec import Message, decode
from secagg.schemes.masking.session.messages import (
    ROUND_CIPHERTEXT_BYTES,
    SETUP_CIPHERTEXT_BYTES,
    ForwardedShare,
    PeerSetupShares,
    RoundMessage,
    RoundTask,
    SessionConfig,
    SessionSignature,
    SessionSurvivorList,
    SessionUnmaskRequest,
    SessionUnmaskResponse,
    SetupShares,
)
from tests.sessions.cohort import Cohort, task_of

SID = bytes(range(32))


def session_samples() -> list[Message]:
    """One of every session message."""
    terms = Cohort(4).terms
    key, other = b"k" * 32, b"c" * 32
    return [
        SessionConfig.of(terms),
        SetupShares(SID, 1, ((2, b"s" * SETUP_CIPHERTEXT_BYTES),)),
        PeerSetupShares(SID, 2, ((1, b"s" * SETUP_CIPHERTEXT_BYTES),)),
        RoundTask(SID, 1, 3, task_of(3)),
        RoundMessage(
            SID, 1, 3, b"m" * 32, key, other, b"g" * 64, ((2, b"r" * ROUND_CIPHERTEXT_BYTES),), b"v"
        ),
        SessionSurvivorList(SID, 1, 3, (1, 2, 3)),
        SessionSignature(SID, 1, 3, b"g" * 64),
        SessionUnmaskRequest(
            SID,
            1,
            3,
            (2,),
            (3,),
            (ForwardedShare(2, b"r" * ROUND_CIPHERTEXT_BYTES, key, other, b""),),
            ((2, b"g" * 64),),
        ),
        SessionUnmaskResponse(SID, 1, 3, ((2, b"a" * 33),), ((3, b"b" * 33),)),
    ]


@pytest.mark.parametrize("message", session_samples(), ids=lambda m: type(m).__name__)
def test_every_session_message_round_trips_to_the_same_bytes(message: Message) -> None:
    data = message.encode()
    assert decode(data) == message
    assert decode(data).encode() == data


@pytest.mark.parametrize("message", session_samples(), ids=lambda m: type(m).__name__)
def test_a_truncated_or_extended_session_message_is_refused(message: Message) -> None:
    data = message.encode()
    with pytest.raises(DecodeError):
        decode(data[:-1])
    with pytest.raises(DecodeError):
        decode(data + b"\x00")


def test_a_session_configuration_must_carry_its_own_caps() -> None:
    config = SessionConfig.of(Cohort(4).terms)
    forged = dataclasses.replace(config, max_rounds=config.max_rounds + 1)
    with pytest.raises(DecodeError, match="does not carry these session terms"):
        decode(forged.encode())


def test_a_next_key_signature_is_empty_or_64_bytes() -> None:
    message = session_samples()[4]
    assert isinstance(message, RoundMessage)
    with pytest.raises(DecodeError, match="empty or 64 bytes"):
        decode(dataclasses.replace(message, next_signature=b"x" * 10).encode())


def test_secrets_stay_out_of_every_repr() -> None:
    for message in session_samples():
        text = repr(message)
        for secret in (b"s" * 8, b"r" * 8, b"a" * 8, b"b" * 8, b"g" * 8):
            assert repr(secret)[2:-1] not in text, type(message).__name__


@given(st.sampled_from(session_samples()), st.binary(max_size=200))
def test_junk_behind_a_session_tag_is_a_message_or_a_decode_error(
    sample: Message, body: bytes
) -> None:
    data = sample.encode()[:4] + body
    try:
        message = decode(data)
    except DecodeError:
        return
    assert message.encode() == data


def _sent_in_an_honest_session(active: bool) -> dict[type[Message], bytes]:
    """One encoding of every message an honest session sends, either way, by class."""
    cohort = Cohort(6, threshold=4 if active else 3, active=active)
    found: dict[type[Message], bytes] = {}

    def note(u: int, message: Message) -> Message:
        found.setdefault(type(message), message.encode())
        return message

    local = cohort.local
    local.lie = note
    outgoing = cohort.server.start()
    while not cohort.server.between_rounds:
        for answer in local.send(outgoing).values():
            note(0, answer)
        outgoing = cohort.server.close_stage()
    local.send(outgoing)
    for r in (1, 2):
        outgoing = local.open_round(task_of(r))
        for u, (values, weight) in cohort.updates().items():
            cohort.clients[u].set_input(values, weight, task_of(r))
        while not cohort.server.between_rounds:
            for answer in local.send(outgoing).values():
                note(0, answer)
            outgoing = cohort.server.close_stage()
    return found


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_every_message_of_an_honest_session_rejects_trailing_bytes_and_truncation(
    active: bool,
) -> None:
    """The decoder clause of the scheme contract suite, for the messages a session sends."""
    found = _sent_in_an_honest_session(active)
    session_classes = {type(m) for m in session_samples()} - {SessionConfig}
    if not active:
        session_classes -= {SessionSurvivorList, SessionSignature}
    assert session_classes <= set(found)
    for cls, data in found.items():
        assert decode(data).encode() == data, cls
        for extra in (b"\x00", b"\x01" * 7):
            with pytest.raises(DecodeError):
                decode(data + extra)
        step = max(1, (len(data) - 80) // 40)
        for cut in sorted({*range(min(len(data), 80)), *range(80, len(data), step)}):
            with pytest.raises(DecodeError):
                cls.decode(data[:cut])
