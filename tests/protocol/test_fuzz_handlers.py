"""Fuzzing: every decoder, every server-side handler and every client handler, fed junk.

Decoders (``decode`` and each ``Message.decode``) get arbitrary bytes behind a valid header,
mutations of valid encodings (bit flips, truncations, insertions, deletions, duplicated
regions, length fields set to huge values) and structurally valid messages with random
fields; the only outcomes allowed are a ``DecodeError`` or a message that re-encodes to the
very same bytes. Encoding a message whose fields have the wrong size or range is our misuse
and must raise ``UsageError``.

The server gets, at every stage and in both modes, junk, mutations and semantically wrong
messages (another session, another sender, wrong sizes, unknown ids, non-peers, shares out of
the field) from senders in and out of the cohort, before and after the honest messages.
``receive`` must never raise; then the round is finished with the clients left and must
either abort (``RoundAborted``) or give exactly the sum of the inputs it took.

Each client gets, through its one entry point, random server messages of the kind it expects
(and random inputs to mask, given to ``set_input`` first): it may only answer or raise
``ClientAbort`` (``InputError`` or ``ConfigurationError`` for an input vector it cannot
encode, leaving it as it was), and an answer never reveals both shares of a peer.

With atheris installed, ``tests/fuzz/fuzz_decode.py`` also runs for a bounded number of
iterations under libFuzzer's coverage guidance.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from secagg.errors import (
    AbortReason,
    ClientAbort,
    ConfigurationError,
    DecodeError,
    InputError,
    RoundAborted,
    UsageError,
)
from secagg.hazmat.ring import Ring
from secagg.hazmat.shamir import SHARE_VALUE_BYTES
from secagg.protocol.codec import MAX_ID, Message, decode
from secagg.schemes.masking import derivations as derive
from secagg.schemes.masking.client import (
    Aborted,
    AwaitingSurvivorList,
    AwaitingUnmaskRequest,
    Client,
    Completed,
)
from secagg.schemes.masking.messages import (
    CIPHERTEXT_BYTES,
    KEY_BYTES,
    SIGNATURE_BYTES,
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    PeerKeyEntry,
    PeerKeys,
    PeerShares,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.schemes.masking.server import Stage
from tests.protocol.harness import SERVER_STAGE, Harness

MESSAGE_TYPES: list[type[Message]] = [
    RoundConfig,
    AdvertiseKeys,
    PeerKeys,
    EncryptedShares,
    PeerShares,
    MaskedInput,
    UnmaskRequest,
    SurvivorList,
    ConsistencySignature,
    UnmaskResponse,
]
HEADER = b"SA\x01"
STRANGERS = (1_000_000, MAX_ID)
REPO = Path(__file__).resolve().parents[2]


def bounded(examples: int) -> settings:
    """Settings that keep the whole file well under a minute on two cores."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def expect_decode_error_or_canonical(data: bytes | bytearray | memoryview) -> Message | None:
    """The decoder contract: a DecodeError, or a message whose encoding is these bytes."""
    try:
        message = decode(data)
    except DecodeError:
        message = None
    if message is not None:
        assert message.encode() == bytes(data)
    for cls in MESSAGE_TYPES:
        try:
            typed = cls.decode(data)
        except DecodeError:
            assert not isinstance(message, cls)
            continue
        assert typed == message and type(typed) is cls
    return message


# ------------------------------------------------------------------------------ strategies
def sized(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


u32 = st.integers(0, MAX_ID)
small_ids = st.one_of(st.integers(0, 12), u32)
id_lists = st.lists(small_ids, max_size=6).map(tuple)
signature = st.one_of(st.just(b""), sized(SIGNATURE_BYTES))


def entries(size: int, max_size: int = 4) -> st.SearchStrategy[tuple[tuple[int, bytes], ...]]:
    return st.lists(st.tuples(small_ids, sized(size)), max_size=max_size).map(tuple)


@st.composite
def round_configs(draw: st.DrawFn) -> RoundConfig:
    n = draw(st.integers(3, 12))
    ids = tuple(sorted(draw(st.sets(small_ids, min_size=n, max_size=n))))
    harary = n >= 4 and draw(st.booleans())
    degree = 2 * draw(st.integers(1, (n - 2) // 2)) if harary else n - 1
    value_bits = draw(st.integers(1, 16))
    max_weight = draw(st.integers(1, 1000))
    needed = (n * max_weight * (2**value_bits - 1)).bit_length()
    return RoundConfig(
        round_id=draw(st.integers(0, 2**64 - 1)),
        nonce=draw(sized(16)),
        protocol=draw(st.sampled_from(["secagg", "secagg+"])),
        server_model=draw(st.sampled_from(["semi-honest", "semi-malicious"])),
        client_ids=ids,
        degree=degree,
        threshold=draw(st.integers(2, degree)),
        ring_bits=draw(st.integers(max(2, needed), 62)),
        dim=draw(st.integers(1, MAX_ID - 1)),
        clip=draw(st.floats(min_value=1e-300, max_value=1e300)),
        value_bits=value_bits,
        max_weight=max_weight,
        task_hash=draw(sized(32)),
        min_cohort=draw(st.integers(1, n)),
    )


sid = sized(32)
key = sized(KEY_BYTES)
peer_entries = st.lists(st.builds(PeerKeyEntry, small_ids, key, key, signature), max_size=4).map(
    tuple
)

MESSAGES: st.SearchStrategy[Message] = st.one_of(
    round_configs(),
    st.builds(AdvertiseKeys, sid, small_ids, key, key, signature),
    st.builds(PeerKeys, sid, small_ids, peer_entries),
    st.builds(EncryptedShares, sid, small_ids, sized(32), entries(CIPHERTEXT_BYTES)),
    st.builds(PeerShares, sid, small_ids, entries(CIPHERTEXT_BYTES)),
    st.builds(MaskedInput, sid, small_ids, id_lists, st.binary(max_size=64)),
    st.builds(UnmaskRequest, sid, small_ids, id_lists, id_lists, entries(SIGNATURE_BYTES, 3)),
    st.builds(SurvivorList, sid, small_ids, id_lists),
    st.builds(ConsistencySignature, sid, small_ids, sized(SIGNATURE_BYTES)),
    st.builds(
        UnmaskResponse, sid, small_ids, entries(SHARE_VALUE_BYTES), entries(SHARE_VALUE_BYTES)
    ),
)


# Fields of the wrong size or out of range: encoding them is a misuse of ours.
def loose(n: int) -> st.SearchStrategy[bytes]:
    return st.one_of(sized(n), st.binary(max_size=n + 3))


loose_ids = st.one_of(small_ids, st.integers(-3, -1), st.integers(MAX_ID + 1, 2**40))
loose_entries = st.lists(st.tuples(loose_ids, loose(CIPHERTEXT_BYTES)), max_size=3).map(tuple)
LOOSE_MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(AdvertiseKeys, loose(32), loose_ids, loose(32), loose(32), loose(64)),
    st.builds(
        PeerKeys,
        loose(32),
        loose_ids,
        st.lists(
            st.builds(PeerKeyEntry, loose_ids, loose(32), loose(32), loose(64)), max_size=3
        ).map(tuple),
    ),
    st.builds(EncryptedShares, loose(32), loose_ids, loose(32), loose_entries),
    st.builds(PeerShares, loose(32), loose_ids, loose_entries),
    st.builds(
        MaskedInput, loose(32), loose_ids, st.lists(loose_ids, max_size=3).map(tuple), loose(8)
    ),
    st.builds(
        UnmaskRequest,
        loose(32),
        loose_ids,
        st.lists(loose_ids, max_size=3).map(tuple),
        st.lists(loose_ids, max_size=3).map(tuple),
        st.lists(st.tuples(loose_ids, loose(64)), max_size=2).map(tuple),
    ),
    st.builds(SurvivorList, loose(32), loose_ids, st.lists(loose_ids, max_size=3).map(tuple)),
    st.builds(ConsistencySignature, loose(32), loose_ids, loose(64)),
    st.builds(
        UnmaskResponse,
        loose(32),
        loose_ids,
        st.lists(st.tuples(loose_ids, loose(33)), max_size=2).map(tuple),
        st.lists(st.tuples(loose_ids, loose(33)), max_size=2).map(tuple),
    ),
)

HUGE = (MAX_ID, 2**31, 2**31 - 1, 2**24, 0x01000000)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """A valid encoding put through one to four random mutations."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                ["flip", "set", "truncate", "insert", "delete", "duplicate", "huge", "count"]
            )
        )
        position = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[position] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del out[position:]
        elif kind == "insert":
            out[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[position : position + draw(st.integers(1, 8))]
        elif kind == "duplicate":
            end = position + draw(st.integers(1, 40))
            out[end:end] = out[position:end]
        elif kind in ("huge", "count") and len(out) >= 4:
            # A u32 length or count somewhere, or right after session id and sender id.
            where = min(40, len(out) - 4) if kind == "count" else min(position, len(out) - 4)
            value = draw(st.sampled_from([*HUGE, len(out), len(out) + 1]))
            out[where : where + 4] = struct.pack(">I", value)
    return bytes(out)


# ------------------------------------------------------------------------------ decoders
@bounded(300)
@given(MESSAGES)
def test_structurally_valid_messages_round_trip_and_only_their_own_decoder_takes_them(
    message: Message,
) -> None:
    data = message.encode()
    assert decode(data) == message
    assert decode(bytearray(data)) == message
    assert decode(memoryview(data)) == message
    for cls in MESSAGE_TYPES:
        if isinstance(message, cls):
            assert cls.decode(data) == message
        else:
            with pytest.raises(DecodeError):
                cls.decode(data)


@bounded(300)
@given(LOOSE_MESSAGES)
def test_encoding_fields_of_the_wrong_size_or_range_is_a_usage_error(message: Message) -> None:
    try:
        data = message.encode()
    except UsageError:
        return
    assert decode(data) == message


@bounded(400)
@given(st.sampled_from(MESSAGE_TYPES), st.binary(max_size=300))
def test_any_body_behind_a_valid_header_is_a_message_or_a_decode_error(
    cls: type[Message], body: bytes
) -> None:
    expect_decode_error_or_canonical(HEADER + bytes([cls.TAG]) + body)


@bounded(300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_a_message_or_a_decode_error(data: bytes) -> None:
    expect_decode_error_or_canonical(data)


@bounded(600)
@given(st.data())
def test_mutated_encodings_are_a_message_or_a_decode_error(data: st.DataObject) -> None:
    original = data.draw(MESSAGES).encode()
    expect_decode_error_or_canonical(data.draw(mutated(original)))


@pytest.mark.parametrize("junk", [None, 7, 1.5, "SA\x01\x02", [83, 65, 1, 2], object()])
def test_decoders_refuse_what_is_not_bytes(junk: object) -> None:
    with pytest.raises(DecodeError):
        decode(junk)  # type: ignore[arg-type]
    for cls in MESSAGE_TYPES:
        with pytest.raises(DecodeError):
            cls.decode(junk)  # type: ignore[arg-type]


@pytest.mark.parametrize("round_id", [-1, 2**64])
def test_round_config_refuses_a_round_id_outside_u64_with_a_usage_error(round_id: int) -> None:
    config = Harness(3, threshold=2).config
    with pytest.raises(UsageError):
        replace(config, round_id=round_id)


# ------------------------------------------------------------------------------ server
SERVER_STAGES = [
    (stage, active)
    for active in (False, True)
    for stage in ("advertise", "share", "mask", "consistency", "unmask")
    if active or stage != "consistency"
]


def answers(h: Harness, stage: str, skip: set[int]) -> dict[int, Message]:
    """The honest answers of this stage from every client that can give one."""
    if stage == "advertise":
        return {i: h.adverts[i] for i in h.clients if i not in skip}
    out: dict[int, Message] = {}
    for i, m in h.outgoing.items():
        if i in skip:
            continue
        try:
            out[i] = h.respond(i, m)
        except ClientAbort:
            # Only a client whose earlier message the server did not keep as sent (it
            # took junk from it instead) can be confused; it is then out of the round.
            assert i in h.server.drops
    return out


def flip(data: bytes, position: int = 0) -> bytes:
    if not data:
        return b"\x01"
    position %= len(data)
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]


def wrong_variants(h: Harness, m: Message, sender: int) -> list[Message]:
    """Semantically wrong versions of an honest message ``m``, claimed by ``sender``."""
    ids = list(h.config.client_ids)
    stranger = STRANGERS[0]
    out: list[Message] = [
        replace(m, session_id=bytes(32)),  # another session
        replace(m, client_id=sender),  # another client's message under this sender's id
        replace(m, client_id=stranger),
    ]
    if isinstance(m, AdvertiseKeys):
        out += [
            replace(m, client_id=sender, cipher_public=bytes(32)),  # a small-order point
            replace(m, client_id=sender, mask_public=m.cipher_public),  # one key twice
            replace(m, client_id=sender, cipher_public=flip(m.cipher_public)),
            replace(m, client_id=sender, signature=bytes(SIGNATURE_BYTES)),
            replace(m, client_id=sender, signature=b""),
        ]
    elif isinstance(m, EncryptedShares):
        cts = m.ciphertexts
        out += [
            replace(m, client_id=sender, ciphertexts=cts[1:]),
            replace(m, client_id=sender, ciphertexts=(*cts, cts[0])),
            replace(m, client_id=sender, ciphertexts=(*cts[1:], (stranger, cts[0][1]))),
            replace(m, client_id=sender, ciphertexts=(*cts[1:], (sender, cts[0][1]))),
            replace(m, client_id=sender, ciphertexts=tuple((v, flip(c)) for v, c in cts)),
            replace(m, client_id=sender, self_mask_commitment=flip(m.self_mask_commitment)),
            replace(m, client_id=sender, ciphertexts=()),
        ]
    elif isinstance(m, MaskedInput):
        v = m.packed_vector
        out += [
            replace(m, client_id=sender, packed_vector=v[:-1]),
            replace(m, client_id=sender, packed_vector=v + b"\x00"),
            replace(m, client_id=sender, packed_vector=b""),
            replace(m, client_id=sender, packed_vector=b"\xff" * len(v)),
            replace(m, client_id=sender, packed_vector=flip(v)),  # another input, validly
            replace(m, client_id=sender, missing_shares=(stranger,)),
            replace(m, client_id=sender, missing_shares=(sender,)),
            replace(m, client_id=sender, missing_shares=tuple(ids)),
            replace(m, client_id=sender, missing_shares=(ids[0], ids[0])),
        ]
    elif isinstance(m, ConsistencySignature):
        out += [
            replace(m, client_id=sender, signature=flip(m.signature)),
            replace(m, client_id=sender, signature=bytes(SIGNATURE_BYTES)),
        ]
    elif isinstance(m, UnmaskResponse):
        s, k = m.self_mask_shares, m.key_shares
        over = b"\xff" * SHARE_VALUE_BYTES  # not a field element
        out += [
            replace(m, client_id=sender, self_mask_shares=k, key_shares=s),  # kinds swapped
            replace(m, client_id=sender, self_mask_shares=(*s, (stranger, over))),
            replace(m, client_id=sender, key_shares=(*k, (sender, over))),
            replace(m, client_id=sender, self_mask_shares=s[1:]),
            replace(m, client_id=sender, self_mask_shares=(*s, *s[:1])),
            replace(m, client_id=sender, self_mask_shares=tuple((u, over) for u, _ in s)),
            replace(m, client_id=sender, key_shares=tuple((u, over) for u, _ in k)),
            # In the field but wrong: the server must out-vote or refuse it, never use it.
            replace(m, client_id=sender, self_mask_shares=tuple((u, flip(y, -1)) for u, y in s)),
            replace(m, client_id=sender, key_shares=tuple((u, flip(y, -1)) for u, y in k)),
        ]
    return out


@st.composite
def fuzz_payloads(draw: st.DrawFn, h: Harness, honest: dict[int, Message], sender: int) -> bytes:
    """Something that is not the sender's honest message of this stage (or is, again)."""
    kind = draw(st.sampled_from(["junk", "mutated", "wrong", "random", "other-kind"]))
    if kind == "junk" or not honest:
        return draw(st.binary(max_size=120))
    own = sender in honest and draw(st.booleans())  # often a variant of its own message
    m = honest[sender if own else draw(st.sampled_from(sorted(honest)))]
    if kind == "mutated":
        return draw(mutated(m.encode()))
    if kind == "wrong":
        return draw(st.sampled_from(wrong_variants(h, m, sender))).encode()
    if kind == "random":
        message = draw(MESSAGES)
        if hasattr(message, "client_id") and draw(st.booleans()):
            message = replace(message, session_id=h.session_id, client_id=sender)
        return message.encode()
    return draw(st.sampled_from([h.config, *h.outgoing.values()])).encode()


@pytest.mark.parametrize(("stage", "active"), SERVER_STAGES)
@bounded(35)
@given(data=st.data())
def test_server_survives_any_input_and_the_round_stays_exact(
    stage: str, active: bool, data: st.DataObject
) -> None:
    n = data.draw(st.integers(3, 7), label="n")
    harary = n >= 5 and data.draw(st.booleans(), label="harary")
    degree = 4 if harary else None
    k = 4 if harary else n - 1
    h = Harness(
        n,
        degree=degree,
        threshold=data.draw(st.integers(2, max(2, k // 2 + 1)), label="t"),
        active=active,
        dim=data.draw(st.integers(1, 3), label="dim"),
        seed=data.draw(st.integers(0, 2**16), label="seed"),
    )
    stages = ["advertise", "share", "mask", *(["consistency"] if active else []), "unmask"]
    ring = Ring(h.config.ring_bits)
    length = h.config.vector_length
    server = h.server
    for before in stages[: stages.index(stage)]:  # an honest round up to the fuzzed stage
        for i, m in answers(h, before, set()).items():
            server.receive(i, m.encode())
        h.outgoing = server.close_stage()
    assert server.stage is SERVER_STAGE[stage]

    honest = answers(h, stage, set())
    cohort = list(h.config.client_ids)
    # Each client's honest message arrives before the junk, after it, or never.
    when = {
        i: data.draw(st.sampled_from(["before", "after"] * 3 + ["never"]), label=f"{i} when")
        for i in honest
    }
    silent: set[int] = {i for i, w in when.items() if w == "never"}
    sent: set[int] = set()  # whose message of this stage the server took
    deltas: dict[int, np.ndarray] = {}  # masked inputs taken in place of the honest ones
    spoofed: set[int] = set()

    def deliver(sender: int, payload: bytes, fuzzing: bool = True) -> None:
        waiting = sender in server.waiting_for()
        server.receive(sender, payload)  # must never raise
        if not fuzzing or not waiting or sender in server.waiting_for():
            return
        if sender in server.drops:
            return
        sent.add(sender)
        if sender in honest and payload == honest[sender].encode():
            return
        # The server took this as the sender's message: the sender is a client that chose to
        # say something else (its own keys, its own input...). After other keys or shares
        # than its own it cannot go on; after another input it goes on as if it had sent
        # its own, and the sum holds the input it did send.
        spoofed.add(sender)
        if stage in ("advertise", "share"):
            silent.add(sender)
        if stage == "mask":
            taken = decode(payload)
            assert isinstance(taken, MaskedInput)
            own = honest[sender]
            assert isinstance(own, MaskedInput)
            deltas[sender] = ring.unpack(taken.packed_vector, length).astype(
                np.uint64
            ) - ring.unpack(own.packed_vector, length).astype(np.uint64)

    for i in sorted(honest):
        if when[i] == "before":
            deliver(i, honest[i].encode())
    events = data.draw(
        st.lists(st.sampled_from([*cohort, *STRANGERS]), max_size=8), label="senders"
    )
    for sender in events:
        deliver(sender, data.draw(fuzz_payloads(h, honest, sender), label="payload"))
    touched = bool(server.drops or silent or spoofed)
    event(f"{len(server.drops)} dropped by the junk")
    if spoofed:
        event(f"a message other than the honest one was taken at {stage}")
    for i in sorted(honest):
        if when[i] == "after" and i not in silent | spoofed:
            deliver(i, honest[i].encode())

    # Finish the round with every client left answering honestly.
    try:
        h.outgoing = server.close_stage()
        for later in stages[stages.index(stage) + 1 :]:
            for i, m in answers(h, later, silent).items():
                deliver(i, m.encode(), fuzzing=False)
            h.outgoing = server.close_stage()
    except RoundAborted:
        event("aborted")
        assert server.stage is Stage.ABORTED
        with pytest.raises(UsageError):
            _ = server.result
        assert touched or "never" in when.values(), "an undisturbed round must not abort"
        return
    result = server.result
    event("completed")
    expected = h.expected_total(result.included)
    for i, delta in deltas.items():
        event("a masked input other than the honest one is in the sum")
        if i in result.included:
            expected = (expected + delta) % np.uint64(2**h.config.ring_bits)
    np.testing.assert_array_equal(result.total, expected)
    if stage == "mask":  # exactly the clients whose masked input was taken
        assert set(result.included) == sent
    if not touched and "never" not in when.values():
        assert set(result.included) == set(cohort)


def test_one_bad_share_does_not_stop_reconstruction_when_t_good_ones_remain() -> None:
    """A share that lies in the field but off the polynomial is out-voted by the others."""
    h = Harness(5, threshold=2)
    h.advertise()
    h.share()
    h.mask()
    for i, m in sorted(h.outgoing.items()):
        reply = h.respond(i, m)
        assert isinstance(reply, UnmaskResponse)
        if i == 1:  # one holder lies about client 0's self-mask share
            reply = replace(
                reply,
                self_mask_shares=tuple(
                    (u, flip(y, -1) if u == 0 else y) for u, y in reply.self_mask_shares
                ),
            )
        h.server.receive(i, reply.encode())
    h.server.close_stage()
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(5)))
    assert [a.client_id for a in h.server.anomalies] == [1]


@pytest.mark.parametrize("active", [False, True])
def test_server_drops_a_client_that_advertises_one_key_twice(active: bool) -> None:
    h = Harness(4, threshold=2, active=active)
    for i in h.clients:
        advert = h.adverts[i]
        if i == 0:  # client 0 advertises its cipher key as its mask key too (and signs that)
            advert = replace(advert, mask_public=advert.cipher_public)
            if active:
                signed = derive.advertise_signed_bytes(
                    h.session_id, 0, advert.cipher_public, advert.mask_public
                )
                advert = replace(advert, signature=h.identities[0].sign(signed))
        h.server.receive(i, advert.encode())
    h.outgoing = h.server.close_stage()
    assert 0 in h.server.drops  # as it drops a client reusing another client's key
    for i in sorted(h.outgoing):
        h.respond(i, h.outgoing[i])  # no honest client aborts


def test_a_bad_share_between_good_ones_is_out_voted() -> None:
    h = Harness(4, threshold=2)  # client 0's self-mask seed has 3 holders: 1, 2, 3
    h.advertise()
    h.share()
    h.mask()
    for i, m in sorted(h.outgoing.items()):
        reply = h.respond(i, m)
        assert isinstance(reply, UnmaskResponse)
        if i == 2:  # the middle holder lies about client 0's self-mask share
            reply = replace(
                reply,
                self_mask_shares=tuple(
                    (u, flip(y, -1) if u == 0 else y) for u, y in reply.self_mask_shares
                ),
            )
        h.server.receive(i, reply.encode())
    h.server.close_stage()  # shares 1 and 3 are t = 2 good ones
    np.testing.assert_array_equal(h.server.result.total, h.expected_total(range(4)))


# ------------------------------------------------------------------------------ clients
HANDLER_STAGES = [
    (stage, active)
    for active in (False, True)
    for stage in ("share", "mask", "consistency", "unmask")
    if active or stage != "consistency"
]


@functools.cache
def base_round(stage: str, active: bool, harary: bool) -> Harness:
    """A round run honestly up to ``stage`` (client 6 drops before masking, so that unmask
    requests name a dropped peer); its clients wait for the server's message."""
    h = Harness(7, degree=4 if harary else None, threshold=3, active=active, dim=3, seed=5)
    stages = ["advertise", "share", "mask", *(["consistency"] if active else []), "unmask"]
    for before in stages[: stages.index(stage)]:
        skip = {6} if before == "mask" else set()
        for i, m in answers(h, before, skip).items():
            h.server.receive(i, m.encode())
        h.outgoing = h.server.close_stage()
    return h


@st.composite
def server_messages(draw: st.DrawFn, h: Harness, c: int) -> Message:
    """Random messages of the kind client c expects, built from plausible parts."""
    honest = h.outgoing[c]
    cohort = list(h.config.client_ids)
    some_id = st.sampled_from([*cohort, *STRANGERS])
    some_ids = st.lists(some_id, max_size=8).map(tuple)
    session = st.sampled_from([h.session_id, bytes(32)])
    recipient = st.sampled_from([c, c, (c + 1) % len(cohort), STRANGERS[0]])
    kind = draw(st.sampled_from(["random", "perturbed", "mutated"]))
    if kind == "mutated":
        try:
            message = decode(draw(mutated(honest.encode())))
        except DecodeError:
            return honest
        return message if type(message) is type(honest) else honest
    if isinstance(honest, PeerKeys):
        peers = list(honest.peers)
        real = st.sampled_from(peers)
        any_key = st.one_of(key, st.sampled_from([p.cipher_public for p in peers]))
        entry = st.one_of(
            real,
            st.builds(PeerKeyEntry, some_id, any_key, any_key, signature),
            real.flatmap(lambda p: st.builds(replace, st.just(p), client_id=some_id)),
        )
        entries_ = st.lists(entry, max_size=8).map(tuple)
        if kind == "perturbed":
            return replace(honest, peers=draw(st.permutations(peers).flatmap(_sublists)))
        return draw(st.builds(PeerKeys, session, recipient, entries_))
    if isinstance(honest, PeerShares):
        cts = list(honest.ciphertexts)
        sealed = st.one_of(st.sampled_from([ct for _, ct in cts]), sized(CIPHERTEXT_BYTES))
        entry2 = st.tuples(some_id, sealed)
        if kind == "perturbed":
            return replace(honest, ciphertexts=draw(st.permutations(cts).flatmap(_sublists)))
        return draw(
            st.builds(PeerShares, session, recipient, st.lists(entry2, max_size=8).map(tuple))
        )
    if isinstance(honest, SurvivorList):
        if kind == "perturbed":
            return replace(honest, survivors=draw(_perturbed_ids(honest.survivors, cohort)))
        return draw(st.builds(SurvivorList, session, recipient, some_ids))
    assert isinstance(honest, UnmaskRequest)
    signatures = list(honest.signatures)
    sig_entry = st.one_of(
        st.sampled_from(signatures or [(c, bytes(64))]),
        st.tuples(some_id, sized(SIGNATURE_BYTES)),
    )
    if kind == "perturbed":
        return replace(
            honest,
            survivors=draw(_perturbed_ids(honest.survivors, cohort)),
            dropped=draw(_perturbed_ids(honest.dropped, cohort)),
            signatures=draw(st.permutations(signatures).flatmap(_sublists)),
        )
    return draw(
        st.builds(
            UnmaskRequest,
            session,
            recipient,
            some_ids,
            some_ids,
            st.lists(sig_entry, max_size=6).map(tuple),
        )
    )


def _sublists(items: list[object]) -> st.SearchStrategy[tuple[object, ...]]:
    """A prefix of a permutation, possibly with an item repeated."""
    if not items:
        return st.just(())
    return st.tuples(st.integers(0, len(items)), st.booleans()).map(
        lambda a: (*items[: a[0]], items[0]) if a[1] else tuple(items[: a[0]])
    )


def _perturbed_ids(ids: tuple[int, ...], cohort: list[int]) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(
        st.sets(st.sampled_from(ids)) if ids else st.just(frozenset()),
        st.sets(st.sampled_from([*cohort, *STRANGERS]), max_size=2),
        st.booleans(),
    ).map(lambda a: tuple(sorted(a[0] | a[1])) if a[2] else tuple(sorted(a[0] | a[1]))[::-1])


def values_for(h: Harness, c: int) -> st.SearchStrategy[np.ndarray]:
    dim = h.config.dim
    return st.one_of(
        st.just(h.values(c)),
        st.just(h.values(c)),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=dim + 1).map(np.asarray),
        st.just(np.zeros((dim, 2))),
    )


@pytest.mark.parametrize(("stage", "active"), HANDLER_STAGES)
@bounded(120)
@given(data=st.data())
def test_client_handlers_answer_or_abort_and_never_reveal_both_shares(
    stage: str, active: bool, data: st.DataObject
) -> None:
    h = base_round(stage, active, data.draw(st.booleans(), label="harary"))
    c = data.draw(st.sampled_from(sorted(h.outgoing)), label="client")
    client: Client = copy.copy(h.clients[c])  # the cached round stays as it is
    before = client.state
    message = data.draw(server_messages(h, c), label="message")
    message = decode(message.encode())  # every message travels as bytes
    assert isinstance(message, PeerKeys | PeerShares | SurvivorList | UnmaskRequest)
    allowed: tuple[type[Exception], ...] = (ClientAbort,)
    update: tuple[np.ndarray, int] | None = None
    if isinstance(message, PeerShares):
        values = data.draw(values_for(h, c), label="values")
        weight = data.draw(st.sampled_from([h.weights[c], 0, -1, h.config.max_weight + 1]))
        try:
            client.set_input(values, weight)
            update = (values, weight)
        except InputError:
            event("refused: InputError")
            assert client.state is before  # a bad input vector: nothing happened
            update = (h.values(c), h.weights[c])  # and the message is still put to the test
        allowed = (ClientAbort, InputError, ConfigurationError)

    def handler() -> Message:
        """What a driver does: the input when the message uses it, then the message."""
        if update is not None:
            client.set_input(*update)
        return client.receive(message)

    try:
        reply = handler()
    except allowed as exc:
        event(f"refused: {exc.reason if isinstance(exc, ClientAbort) else type(exc).__name__}")
        if isinstance(exc, ClientAbort):
            assert isinstance(client.state, Aborted)
            assert client.state.reason is exc.reason
            with pytest.raises(ClientAbort):  # it never answers again
                handler()
        else:
            assert client.state is before  # a bad input vector: nothing happened
        return
    event("answered")
    assert decode(reply.encode()) == reply
    if isinstance(reply, UnmaskResponse):
        assert isinstance(message, UnmaskRequest)
        assert isinstance(before, AwaitingUnmaskRequest)
        state = client.state
        assert isinstance(state, Completed)
        revealed_self = {u for u, _ in reply.self_mask_shares}
        revealed_keys = {u for u, _ in reply.key_shares}
        assert not revealed_self & revealed_keys
        assert revealed_self <= set(message.survivors) & before.masked_with
        assert revealed_keys <= set(message.dropped) & before.masked_with
        assert len(message.survivors) >= h.config.threshold
        if active:  # only what follows from the survivor set the client signed
            assert before.survivors is not None
            assert set(message.survivors) == before.masked_with & set(before.survivors)
    elif isinstance(reply, EncryptedShares):
        assert isinstance(message, PeerKeys)
        assert [v for v, _ in reply.ciphertexts] == [p.client_id for p in message.peers]
    elif isinstance(reply, ConsistencySignature):
        assert isinstance(before, AwaitingSurvivorList)
        assert c in message.survivors  # type: ignore[union-attr]


@pytest.mark.parametrize("stage", ["share", "mask", "unmask"])
def test_a_handler_given_another_kind_of_message_aborts(stage: str) -> None:
    h = base_round(stage, False, False)
    c = sorted(h.outgoing)[0]
    client = copy.copy(h.clients[c])
    sid = h.session_id
    wrong: Message = {
        "share": UnmaskRequest(sid, c, (), ()),
        "mask": PeerKeys(sid, c, ()),
        "unmask": PeerShares(sid, c, ()),
    }[stage]
    client.set_input(h.values(c))  # so a misplaced PeerShares is the server's fault, not ours
    with pytest.raises(ClientAbort) as info:
        client.receive(wrong)
    assert info.value.reason is AbortReason.UNEXPECTED_MESSAGE


# ------------------------------------------------------------------------------ atheris
# A bounded run (20,000 inputs, about 15 s on a quiet machine) takes minutes on a starved one:
# the limits are waits for a hang, never a judgement of speed.
FUZZ_RUN_TIMEOUT = 840


@pytest.mark.timeout(FUZZ_RUN_TIMEOUT + 60)
def test_atheris_fuzzes_the_decoder_for_a_bounded_run(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    h = Harness(5, threshold=2, active=True)
    seeds: list[Message] = [h.config]
    for stage in ("advertise", "share", "mask", "consistency", "unmask"):
        replies = answers(h, stage, set())
        seeds += replies.values()
        for i, m in replies.items():
            h.server.receive(i, m.encode())
        h.outgoing = h.server.close_stage()
        seeds += h.outgoing.values()
    for number, message in enumerate(seeds):
        (corpus / f"seed-{number}").write_bytes(message.encode())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "fuzz" / "fuzz_decode.py"),
            "-runs=20000",
            "-max_len=4096",
            "-seed=1",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_RUN_TIMEOUT,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 20000 runs" in run.stderr
