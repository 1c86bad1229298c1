"""Every message round-trips through its canonical bytes, and every decoder rejects junk."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.dp.layers import NoiseLayers
from secagg.dp.message import DpRound
from secagg.errors import ConfigurationError, DecodeError, UsageError
from secagg.protocol.codec import MAX_ID, SHARED_PART_BYTES, Message, decode
from secagg.schemes.masking.messages import (
    CIPHERTEXT_BYTES,
    AdvertiseKeys,
    Commitment,
    CommitmentDigest,
    CommitRequest,
    ContributionList,
    Contributions,
    EncryptedShares,
    LayerAnswer,
    MaskedInput,
    PeerKeyEntry,
    PeerKeys,
    PeerShares,
    Reveal,
    RoundConfig,
    UnmaskRequest,
    UnmaskResponse,
    ciphertext_bytes,
)
from secagg.schemes.masking.parameters import check_round_config

SID = bytes(range(32))


def _config(**overrides: object) -> RoundConfig:
    fields: dict[str, object] = dict(
        round_id=7,
        nonce=b"n" * 16,
        protocol="secagg+",
        server_model="semi-honest",
        client_ids=(1, 2, 5, 9),
        degree=2,
        threshold=2,
        ring_bits=20,
        dim=10,
        clip=1.0,
        value_bits=16,
        max_weight=1,
    )
    fields.update(overrides)
    return RoundConfig(**fields)  # type: ignore[arg-type]


def sample_messages() -> list[Message]:
    ct = bytes(CIPHERTEXT_BYTES)
    return [
        _config(),
        Commitment(SID, 3, 1, b"h" * 32),
        CommitmentDigest(SID, 3, 1, b"d" * 32, 4),
        Reveal(SID, 3, 1, b"r" * 32),
        CommitRequest(SID, 3, 2),
        Contributions(SID, 3, 1, ((1, b"r" * 32), (3, b"q" * 32))),
        Contributions(SID, 3, 3, ()),
        AdvertiseKeys(SID, 3, b"c" * 32, b"m" * 32),
        PeerKeys(
            SID, 3, (PeerKeyEntry(1, b"a" * 32, b"b" * 32), PeerKeyEntry(4, b"d" * 32, b"e" * 32))
        ),
        PeerKeys(SID, 3, ()),
        EncryptedShares(SID, 3, b"h" * 32, ((1, ct), (4, ct))),
        PeerShares(SID, 3, ((1, ct),)),
        MaskedInput(SID, 3, (4,), b"\x01\x02\x03"),
        MaskedInput(SID, 3, (), b""),
        UnmaskRequest(SID, 3, (1, 2), (4,)),
        UnmaskResponse(SID, 3, ((1, b"s" * 33),), ((4, b"k" * 33), (5, b"k" * 33))),
    ]


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_its_bytes(message: Message) -> None:
    data = message.encode()
    assert decode(data) == message
    assert type(message).decode(data) == message
    assert decode(data).encode() == data


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_decoder_rejects_every_truncation(message: Message) -> None:
    data = message.encode()
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:cut])


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_decoder_rejects_trailing_bytes(message: Message) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode(message.encode() + b"\x00")


def layered_messages() -> list[Message]:
    """The messages of a round with removable noise layers (docs/XNOISE.md): each carries
    its layer section last, and only then."""
    layered = ciphertext_bytes(3)
    dp = DpRound("skellam", 16, 1.0, 2.0, 3.0, 0.0, NoiseLayers.for_cohort(6, 10))
    return [
        _config(dp=dp),
        EncryptedShares(
            SID, 3, b"h" * 32, ((1, bytes(layered)), (4, bytes(layered))), (b"c" * 32,) * 3
        ),
        EncryptedShares(SID, 3, b"h" * 32, (), (b"c" * 32,) * 3),
        PeerShares(SID, 3, ((1, bytes(layered)),)),
        UnmaskRequest(SID, 3, (1, 2), (4,), (), 9),
        UnmaskResponse(
            SID,
            3,
            ((1, b"s" * 33),),
            ((4, b"k" * 33),),
            LayerAnswer(9, 1, 12, ((1, 0, b"l" * 33),)),
        ),
        UnmaskResponse(SID, 3, (), (), LayerAnswer(6, 1, 0)),
    ]


@pytest.mark.parametrize("message", layered_messages(), ids=lambda m: type(m).__name__)
def test_every_layered_message_round_trips_and_rejects_trailing_bytes(message: Message) -> None:
    data = message.encode()
    assert decode(data) == message
    assert decode(data).encode() == data
    with pytest.raises(DecodeError, match="trailing"):
        decode(data + b"\x00")


@pytest.mark.parametrize("message", layered_messages(), ids=lambda m: type(m).__name__)
def test_a_truncated_layered_message_never_decodes_to_itself(message: Message) -> None:
    """The layer section is optional, so a message cut exactly before it decodes as one
    without it (or, for sealed shares, with another layer count): never as the message
    sent. A client or server of a layered round refuses the other shapes (a server drops an
    answer without its layer section; a client counts a request without a count as none)."""
    data = message.encode()
    for cut in range(len(data)):
        try:
            decoded = decode(data[:cut])
        except DecodeError:
            continue
        assert decoded != message


def test_a_dp_block_without_layers_keeps_its_bytes() -> None:
    dp = DpRound("skellam", 16, 1.0, 2.0, 3.0, 0.0)
    plain = _config(dp=dp).encode()
    with_layers = _config(dp=DpRound("skellam", 16, 1.0, 2.0, 3.0, 0.0, NoiseLayers(6, 10, 8)))
    assert with_layers.encode()[: len(plain)] != plain  # the flag byte says 2, not 1
    assert len(with_layers.encode()) == len(plain) + 9  # m, M (u32 each) and the bits (u8)
    assert decode(plain) == _config(dp=dp)


def test_decoder_rejects_bad_magic_version_and_tag() -> None:
    data = AdvertiseKeys(SID, 3, b"c" * 32, b"m" * 32).encode()
    with pytest.raises(DecodeError, match="magic"):
        decode(b"XX" + data[2:])
    with pytest.raises(DecodeError, match="version"):
        decode(data[:2] + b"\x09" + data[3:])
    with pytest.raises(DecodeError, match="tag"):
        decode(data[:3] + b"\xee" + data[4:])


def test_typed_decode_rejects_another_message_type() -> None:
    data = UnmaskRequest(SID, 3, (1,), ()).encode()
    with pytest.raises(DecodeError, match="expected PeerKeys"):
        PeerKeys.decode(data)


def test_oversize_count_is_refused_before_allocation() -> None:
    header = UnmaskRequest(SID, 3, (), ()).encode()[:4]
    # A count of 2**32 - 1 ids in a message of a few bytes.
    data = header + SID + struct.pack(">I", 3) + struct.pack(">I", 2**32 - 1)
    with pytest.raises(DecodeError, match="count"):
        decode(data)


def test_oversize_vector_length_is_refused() -> None:
    data = MaskedInput(SID, 3, (), b"abc").encode()
    forged = data[:-7] + struct.pack(">I", 2**31) + b"abc"
    with pytest.raises(DecodeError, match="length"):
        decode(forged)


def test_config_with_invalid_fields_does_not_decode() -> None:
    data = bytearray(_config().encode())
    # The protocol code sits right after the header, round id and nonce.
    data[4 + 8 + 16] = 9
    with pytest.raises(DecodeError, match="protocol"):
        decode(bytes(data))


def test_a_ring_too_narrow_for_its_cohort_is_a_parameter_rule_not_a_wire_rule() -> None:
    config = _config(ring_bits=17)  # representable on the wire ...
    with pytest.raises(ConfigurationError, match="wrap"):
        check_round_config(config)  # ... refused before anyone acts on it


def test_config_rejects_unsorted_or_repeated_client_ids() -> None:
    with pytest.raises(UsageError):
        _config(client_ids=(2, 1, 5, 9))
    with pytest.raises(UsageError):
        _config(client_ids=(1, 1, 5, 9))


def test_config_ids_are_checked_on_one_array_and_refused_by_the_same_rules() -> None:
    """Every client decodes the whole cohort: its ids are packed and compared as one array,
    and anything that fails is named by the rules one id at a time, as before."""
    assert _config(client_ids=tuple(range(0, 30_000, 3))).id_array.tolist() == list(
        range(0, 30_000, 3)
    )
    assert _config(client_ids=(0, MAX_ID)).id_array.tolist() == [0, MAX_ID]
    for ids, match in (
        ((1, 5, 5), "strictly increasing"),
        ((5, 1), "strictly increasing"),
        ((-1, 2), "u32"),
        ((1, MAX_ID + 1), "u32"),
        ((1, 2.5), "u32"),
        ((1, np.int64(2)), "u32"),
    ):
        with pytest.raises(UsageError, match=match):
            _config(client_ids=ids)


def test_ids_are_packed_in_one_call_exactly_as_one_u32_at_a_time() -> None:
    ids = (*range(0, 15_000, 3), MAX_ID)
    message = UnmaskRequest(SID, 3, ids, ())
    data = message.encode()
    assert struct.pack(">I", len(ids)) + b"".join(struct.pack(">I", i) for i in ids) in data
    assert decode(data) == message
    for bad in ((1, MAX_ID + 1), (-1,)):
        with pytest.raises(UsageError, match="u32"):
            UnmaskRequest(SID, 3, bad, ()).encode()


def test_a_contribution_list_is_its_entries_held_as_their_wire_bytes() -> None:
    """What every client of a round decodes and checks: a sequence of (id, contribution)
    equal to the tuple of its entries, over exactly the bytes the wire carries."""
    entries = ((1, b"r" * 32), (3, b"q" * 32), (MAX_ID, b"z" * 32))
    listed = ContributionList.of(entries)
    assert listed == entries and tuple(listed) == entries and list(listed) == list(entries)
    assert len(listed) == 3 and hash(listed) == hash(entries)
    assert listed[1] == entries[1] and listed[-1] == entries[-1]
    assert listed[1:] == entries[1:] and listed[::2] == entries[::2]
    assert listed.wire == b"".join(struct.pack(">I", c) + r for c, r in entries)
    assert listed.ids.tolist() == [1, 3, MAX_ID]
    assert listed.contribution_of(3) == b"q" * 32 and listed.contribution_of(2) is None
    assert pickle.loads(pickle.dumps(listed)) == listed
    message = Contributions(SID, 3, 1, entries)
    assert isinstance(message.entries, ContributionList)
    assert message.encode().endswith(struct.pack(">I", 3) + listed.wire)
    decoded = decode(message.encode())
    assert isinstance(decoded, Contributions) and decoded.contributions.wire == listed.wire
    for bad in (((1, b"short"),), ((MAX_ID + 1, b"r" * 32),), ((-1, b"r" * 32),)):
        with pytest.raises(UsageError):
            Contributions(SID, 3, 1, bad)
    with pytest.raises(IndexError):
        listed[3]


def test_a_threshold_of_one_or_an_odd_harary_degree_is_refused_before_use() -> None:
    with pytest.raises(ConfigurationError, match="threshold"):
        check_round_config(_config(threshold=1))
    with pytest.raises(ConfigurationError, match="degree"):
        check_round_config(_config(degree=3, client_ids=tuple(range(8))))


def test_config_id_changes_with_every_field() -> None:
    base = _config().config_id
    assert _config(round_id=8).config_id != base
    assert _config(nonce=b"m" * 16).config_id != base
    assert _config(task_hash=b"t" * 32).config_id != base
    assert _config(dim=11).config_id != base
    assert _config().config_id == base


def test_repr_of_messages_hides_keys_shares_and_vectors() -> None:
    secretish = [
        b"c" * 32,
        b"m" * 32,
        b"s" * 33,
        b"r" * 32,
        b"\x01\x02\x03",
        bytes(CIPHERTEXT_BYTES),
    ]
    for message in sample_messages():
        text = repr(message)
        for blob in secretish:
            assert repr(blob) not in text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_turns_arbitrary_bytes_into_a_message_or_a_decode_error(data: bytes) -> None:
    try:
        message = decode(data)
    except DecodeError:
        return
    assert message.encode() == data


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sample_messages()), st.data())
def test_decoder_survives_any_single_byte_corruption(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(message.encode())
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(encoded))
    except DecodeError:
        return
    assert decoded.encode() == bytes(encoded)


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_every_message_encoded_in_parts_is_its_bytes(message: Message) -> None:
    assert b"".join(message.encode_parts()) == message.encode()


def test_a_large_list_is_one_object_in_the_parts_of_every_recipients_message() -> None:
    """The simulator sends each worker a chunk of deliveries in parts: the cohort's ids and
    the contributions list, written into every recipient's message, are one object there
    (pickled once a chunk); each message joined is still its own bytes."""
    cohort = tuple(range(0, 9_000, 3))
    config = _config(client_ids=cohort)
    big = [p for p in config.encode_parts() if len(p) >= SHARED_PART_BYTES]
    assert big == [struct.pack(f">{len(cohort)}I", *cohort)]
    assert big[0] is config.encode_parts()[1]  # the same object each time it is encoded
    entries = ContributionList.of((i, bytes([i % 251]) * 32) for i in cohort)
    first, second = Contributions(SID, 3, 1, entries), Contributions(SID, 6, 1, entries)
    parts = first.encode_parts(), second.encode_parts()
    shared = [[p for p in ps if len(p) >= SHARED_PART_BYTES] for ps in parts]
    assert shared[0] == [entries.wire] and shared[0][0] is shared[1][0] is entries.wire
    assert [b"".join(ps) for ps in parts] == [first.encode(), second.encode()]
    assert first.encode() != second.encode()  # the recipient differs


def test_a_decoded_configuration_equals_its_original_and_its_ids_are_still_checked() -> None:
    """Decoding takes the cohort's ids from their packed bytes (not packed and type-checked
    again); the order is still checked, and a configuration compares its cohort as bytes."""
    cohort = tuple(range(0, 30_000, 3))
    config = _config(client_ids=cohort)
    decoded = decode(config.encode())
    assert isinstance(decoded, RoundConfig)
    assert decoded == config and hash(decoded) == hash(config)
    assert type(decoded.client_ids) is tuple and decoded.client_ids == cohort
    assert decoded != _config(client_ids=(*cohort[:-1], cohort[-1] + 1))
    assert decoded != _config(client_ids=cohort, dim=11)
    data = bytearray(config.encode())
    at = bytes(data).index(struct.pack(">3I", *cohort[:3]))
    data[at : at + 8] = struct.pack(">2I", cohort[1], cohort[0])  # two ids swapped
    with pytest.raises(DecodeError, match="strictly increasing"):
        decode(bytes(data))
    data[at : at + 8] = struct.pack(">2I", cohort[0], cohort[0])  # one id twice
    with pytest.raises(DecodeError, match="strictly increasing"):
        decode(bytes(data))
