"""The contract every scheme keeps, one test per clause, run over every scheme of the harness
(``tests/schemes/contract.py``: SecAgg, SecAgg+, SecAgg in active mode, SecAgg with
distributed DP, CKKS, plaintext).

A new scheme gets these tests by adding its line to ``CONTENDERS``. Each clause reads as a
sentence of the specification; where one does not apply to a scheme, the test is skipped and
says why, and a case a scheme fails for a reason of its own is a strict xfail in
``KNOWN_GAPS`` that says what is wrong. Rounds run through the round engine as
``secagg.simulate`` drives it, with every message encoded and decoded, cohorts of 5 to 8,
``dim`` 16 and deterministic randomness. The clauses:

- an honest round gives the weighted mean of every input, within the error the scheme states;
- at every stage, a client that sends junk, a truncated answer, an answer with a trailing
  byte or under an unknown tag, another client's answer, a message of another stage, what the
  server sent it or its answer of another round is dropped with its typed reason (the server
  never raises), and the round completes over the rest; messages from an id outside the
  cohort change nothing; one flipped bit never makes the server raise, nor reveal a wrong sum
  of the others or an impossible total weight; a retransmitted answer changes nothing, and
  what a client sends besides its answer never changes the sum (the client is in it exactly
  when its input arrived);
- one client silent from any stage on leaves a round over exactly the survivors (a client
  whose input had already reached the server is one of them); a silence the scheme cannot
  survive (masking: all but t - 1; CKKS: every key holder; plaintext: all but
  ``min_cohort`` - 1) aborts the round and reveals nothing;
- every decoder of the scheme's messages rejects trailing bytes and truncation with a
  ``DecodeError``, and every tag of the codec's table is sent by some scheme of the harness;
- the round record accounts for every client, every drop (typed, at a stage the scheme runs)
  and every stage that ran (a time for each).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest

from secagg.errors import DecodeError, DropReason, RoundAborted
from secagg.protocol.codec import TAGS, Message, decode, defined_in, message_class
from secagg.protocol.runner import RoundOutcome
from secagg.protocol.stages import MISSED_REASONS, Stage, missed
from tests.schemes.contract import (
    CONTENDERS,
    Contender,
    Misbehaviour,
    Round,
    another_round,
    highest,
    honest_rounds,
    run_round,
)


def _available(contender: Contender) -> bool:
    return contender.needs is None or importlib.util.find_spec(contender.needs) is not None


def _skip_unless_available(contender: Contender) -> list[pytest.MarkDecorator]:
    if _available(contender):
        return []
    return [pytest.mark.skip(reason=f"{contender.name} needs {contender.needs}, not installed")]


def _schemes() -> list[object]:
    return [pytest.param(c, id=c.name, marks=_skip_unless_available(c)) for c in CONTENDERS]


# Cases that break a clause, by (scheme, stage, variant): each a gap in the scheme, not in the
# test. Strict xfails: fixing one turns the suite red until its mark goes.
KNOWN_GAPS: dict[tuple[str, Stage, str | None], str] = {
    ("ckks", Stage.UPLOAD, "middle-byte"): (
        "CKKS: the server cannot check a ciphertext, so one client's well-framed but corrupt "
        "upload goes into the sum, every key holder then fails to decrypt it (a "
        "malformed-message abort) and the round aborts at decrypt: any one client can deny "
        "every CKKS round (DESIGN 3: abort only when too few remain; THREAT_MODEL's CKKS "
        "section states it as a limit of the scheme)"
    ),
}


def _stages(*variants: str) -> list[object]:
    """(scheme, stage), or (scheme, stage, variant) for each of ``variants``, for every stage
    each scheme runs (learnt from the scheme itself); a case of KNOWN_GAPS is a strict xfail."""
    params: list[object] = []
    for c in CONTENDERS:
        if not _available(c):
            values = (c, None, *variants[:1])
            params.append(pytest.param(*values, id=c.name, marks=_skip_unless_available(c)))
            continue
        for stage in c.scheme.stages:
            for variant in variants or (None,):
                values = (c, stage) if variant is None else (c, stage, variant)
                case = "-".join(str(v) for v in (c.name, stage.value, variant) if v)
                gap = KNOWN_GAPS.get((c.name, stage, variant))
                marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
                params.append(pytest.param(*values, id=case, marks=marks))
    return params


def _position(contender: Contender, stage: Stage) -> int:
    return contender.scheme.stages.index(stage)


def _assert_aggregate_is_the_mean_of_exactly_the_included(
    contender: Contender, result: Round
) -> None:
    """The aggregate is the weighted mean of the included clients' (clipped) inputs, within
    the error bound the round states, and its weight is theirs."""
    record = result.record
    aggregate = record.aggregate
    assert aggregate is not None
    assert aggregate.included == record.included
    exact = result.exact_mean(contender.scheme, record.included)
    error = float(np.max(np.abs(aggregate.mean - exact)))
    assert error <= aggregate.error_bound + 1e-12, (error, aggregate.error_bound)
    assert aggregate.total_weight == pytest.approx(sum(result.weights[i] for i in record.included))


def _survivors(
    contender: Contender, result: Round, silent: set[int], stage: Stage
) -> tuple[int, ...]:
    """Who a round with ``silent`` gone from ``stage`` must include: everyone else, and the
    silent too when their input had reached the server before they went."""
    assert result.input_stage is not None
    before_input = _position(contender, stage) <= _position(contender, result.input_stage)
    cohort = range(contender.n)
    return tuple(i for i in cohort if not (before_input and i in silent))


# ---------------------------------------------------------------------------- an honest round


@pytest.mark.parametrize("contender", _schemes())
def test_an_honest_round_gives_the_weighted_mean_of_every_input_within_the_stated_error(
    contender: Contender,
) -> None:
    result = honest_rounds(contender.name)[0]
    record = result.record
    assert record.outcome is RoundOutcome.COMPLETED, record.abort
    assert record.included == tuple(range(contender.n))
    assert not record.drops and not result.client_aborts
    _assert_aggregate_is_the_mean_of_exactly_the_included(contender, result)
    assert record.aggregate is not None
    stated = contender.scheme.error_bound(contender.n)
    assert record.aggregate.error_bound <= stated + 1e-12
    _assert_record_is_consistent(contender, result)


# ------------------------------------------------------ the server never raises because of a client


def _junk(bad: int, own: bytes, others: Mapping[int, bytes]) -> bytes:
    del bad, own, others
    return hashlib.sha256(b"junk").digest() * 3


def _truncated(bad: int, own: bytes, others: Mapping[int, bytes]) -> bytes:
    del bad, others
    return own[:-1]


def _trailing(bad: int, own: bytes, others: Mapping[int, bytes]) -> bytes:
    del bad, others
    return own + b"\x00"


def _another_clients(bad: int, own: bytes, others: Mapping[int, bytes]) -> bytes:
    del bad, own
    return others[min(others)]


def _unknown_tag(bad: int, own: bytes, others: Mapping[int, bytes]) -> bytes:
    del bad, others
    return own[:3] + bytes([255]) + own[4:]  # magic and version kept; no message has tag 255


Make = Callable[[int, bytes, Mapping[int, bytes]], bytes]

# What a misbehaving client sends, and the reason the server must drop it for.
CORRUPT: dict[str, tuple[Make, frozenset[DropReason]]] = {
    "junk-bytes": (_junk, frozenset({DropReason.MALFORMED})),
    "truncated-answer": (_truncated, frozenset({DropReason.MALFORMED})),
    "answer-with-trailing-byte": (_trailing, frozenset({DropReason.MALFORMED})),
    "answer-under-an-unknown-tag": (_unknown_tag, frozenset({DropReason.MALFORMED})),
    # The same round's message of another client: it claims another sender.
    "another-clients-answer": (_another_clients, frozenset({DropReason.MALFORMED})),
}


def _check_dropped_and_completed(
    contender: Contender, stage: Stage, result: Round, reasons: frozenset[DropReason]
) -> None:
    record = result.record
    bad = result.misbehaved
    assert bad is not None, "nobody misbehaved: the stage asked nobody to answer"
    drop = record.drops[bad]
    assert drop.stage is stage
    assert drop.reason in reasons, drop
    assert set(record.drops) == {bad}
    # Every scheme of the harness survives one misbehaving client (CONTENDERS' tolerates).
    assert record.outcome is RoundOutcome.COMPLETED, record.abort
    assert record.included == _survivors(contender, result, {bad}, stage)
    _assert_aggregate_is_the_mean_of_exactly_the_included(contender, result)


@pytest.mark.parametrize("kind", sorted(CORRUPT))
@pytest.mark.parametrize(("contender", "stage"), _stages())
def test_a_client_that_sends_bytes_that_are_not_its_answer_is_dropped_with_a_typed_reason(
    contender: Contender, stage: Stage, kind: str
) -> None:
    make, reasons = CORRUPT[kind]
    # A server that raised here would fail the test.
    result = run_round(contender, misbehaviour=Misbehaviour(stage, highest, make))
    _check_dropped_and_completed(contender, stage, result, reasons)
    _assert_record_is_consistent(contender, result)


def _other_stage_answer(contender: Contender, stage: Stage, honest: Round) -> Message | None:
    """An honest client's answer at the first other stage that has one."""
    for other in contender.scheme.stages:
        if other is stage:
            continue
        for at, _, message in honest.up:
            if at is other:
                return message
    return None


@pytest.mark.parametrize(("contender", "stage"), _stages())
def test_a_client_that_sends_a_message_of_another_stage_is_dropped_as_wrong_stage(
    contender: Contender, stage: Stage
) -> None:
    honest = honest_rounds(contender.name)[0]
    other = _other_stage_answer(contender, stage, honest)
    if other is None:
        pytest.skip(f"{contender.name} runs one stage: no client message of another stage exists")
    data = other.encode()
    result = run_round(
        contender, misbehaviour=Misbehaviour(stage, highest, lambda bad, own, others: data)
    )
    _check_dropped_and_completed(contender, stage, result, frozenset({DropReason.WRONG_STAGE}))
    _assert_record_is_consistent(contender, result)


@pytest.mark.parametrize(("contender", "stage"), _stages())
def test_a_client_that_sends_back_what_the_server_sent_it_is_dropped_as_wrong_stage(
    contender: Contender, stage: Stage
) -> None:
    honest = honest_rounds(contender.name)[0]

    def echo(bad: int, own: bytes, others: Mapping[int, bytes]) -> bytes:
        del own, others
        (message,) = [m for at, i, m in honest.down if at is stage and i == bad][:1]
        return message.encode()

    result = run_round(contender, misbehaviour=Misbehaviour(stage, highest, echo))
    _check_dropped_and_completed(contender, stage, result, frozenset({DropReason.WRONG_STAGE}))
    _assert_record_is_consistent(contender, result)


@pytest.mark.parametrize("contender", _schemes())
def test_messages_from_an_id_outside_the_cohort_change_nothing(contender: Contender) -> None:
    result = run_round(contender, stranger=contender.n + 1000)
    record = result.record
    assert record.outcome is RoundOutcome.COMPLETED, record.abort
    assert not record.drops
    assert record.included == tuple(range(contender.n))
    _assert_aggregate_is_the_mean_of_exactly_the_included(contender, result)
    _assert_record_is_consistent(contender, result)


@pytest.mark.parametrize(("contender", "stage"), _stages())
def test_a_client_that_replays_its_answer_of_another_round_is_dropped_as_wrong_session(
    contender: Contender, stage: Stage
) -> None:
    other = another_round(contender.name)

    def replay(bad: int, own: bytes, others: Mapping[int, bytes]) -> bytes:
        del own, others
        (message,) = [m for at, i, m in other.up if at is stage and i == bad][:1]
        return message.encode()

    result = run_round(contender, misbehaviour=Misbehaviour(stage, highest, replay))
    _check_dropped_and_completed(contender, stage, result, frozenset({DropReason.WRONG_SESSION}))
    _assert_record_is_consistent(contender, result)


def _again(bad: int, own: bytes, others: Mapping[int, bytes]) -> list[bytes]:
    del bad, others
    return [own, own]


def _then_junk(bad: int, own: bytes, others: Mapping[int, bytes]) -> list[bytes]:
    return [own, _junk(bad, own, others)]


def _then_another_clients(bad: int, own: bytes, others: Mapping[int, bytes]) -> list[bytes]:
    return [own, _another_clients(bad, own, others)]


def _junk_then_answer(bad: int, own: bytes, others: Mapping[int, bytes]) -> list[bytes]:
    return [_junk(bad, own, others), own]


# A client that sends its answer and something more: whether its input is in the sum
# (given the position of the stage against the stage that carries the input: -1 before it,
# 0 that stage, 1 after it).
MORE: dict[str, tuple[Make, Callable[[int], bool]]] = {
    "answer-then-junk": (_then_junk, lambda at: at >= 0),
    "answer-then-another-clients": (_then_another_clients, lambda at: at >= 0),
    "junk-then-answer": (_junk_then_answer, lambda at: at > 0),
}


@pytest.mark.parametrize(("contender", "stage"), _stages())
def test_a_retransmitted_answer_changes_nothing(contender: Contender, stage: Stage) -> None:
    result = run_round(
        contender, misbehaviour=Misbehaviour(stage, highest, _again, silent_after=False)
    )
    record = result.record
    assert record.outcome is RoundOutcome.COMPLETED, record.abort
    assert not record.drops
    assert record.included == tuple(range(contender.n))
    _assert_aggregate_is_the_mean_of_exactly_the_included(contender, result)
    _assert_record_is_consistent(contender, result)


@pytest.mark.parametrize(("contender", "stage", "kind"), _stages(*MORE))
def test_what_a_client_sends_besides_its_answer_never_changes_the_sum_of_the_others(
    contender: Contender, stage: Stage, kind: str
) -> None:
    """The first well-formed answer counts or the client is dropped; either way the sum is
    the exact mean of the included, and the client is in it exactly when its input arrived."""
    make, in_sum = MORE[kind]
    result = run_round(contender, misbehaviour=Misbehaviour(stage, highest, make))
    record = result.record
    bad = result.misbehaved
    assert bad is not None and result.input_stage is not None
    assert record.outcome is RoundOutcome.COMPLETED, record.abort
    at = _position(contender, stage) - _position(contender, result.input_stage)
    assert (bad in record.included) == in_sum((at > 0) - (at < 0))
    _assert_aggregate_is_the_mean_of_exactly_the_included(contender, result)
    _assert_record_is_consistent(contender, result)


# Where a client flips one bit of its answer: the tag, the middle and the last byte (the
# first bytes of the body are the binding, which the replay of another round covers).
FLIPS: dict[str, Callable[[int], int]] = {
    "tag-byte": lambda size: 3,
    "middle-byte": lambda size: size // 2,
    "last-byte": lambda size: size - 1,
}


@pytest.mark.parametrize(("contender", "stage", "flip"), _stages(*FLIPS))
def test_a_client_that_flips_a_bit_of_its_answer_never_costs_the_others_a_correct_round(
    contender: Contender, stage: Stage, flip: str
) -> None:
    """Whatever one flipped bit does (a drop, an accepted change of the client's own input, a
    broken share or signature), the server never raises, never reveals a wrong sum of the
    others and never a total weight the included clients could not have given. Before the
    stage that carries the input, the others still get their round; at it, a flipped weight
    inside a masked input aborts the round by name (no one can tell whose it was); after it,
    an abort is allowed (CKKS's two key holders disagreeing: the server cannot tell who
    lied)."""

    def make(bad: int, own: bytes, others: Mapping[int, bytes]) -> bytes:
        del bad, others
        flipped = bytearray(own)
        flipped[FLIPS[flip](len(own))] ^= 0x01
        return bytes(flipped)

    result = run_round(contender, misbehaviour=Misbehaviour(stage, highest, make))
    record = result.record
    bad = result.misbehaved
    assert bad is not None and result.input_stage is not None
    _assert_record_is_consistent(contender, result)
    after_input = _position(contender, stage) > _position(contender, result.input_stage)
    if not after_input:
        if stage is result.input_stage and record.outcome is RoundOutcome.ABORTED:
            # A bit flipped inside a masked input is that client's own input as far as anyone
            # can tell, unless it makes the sum impossible (a weight or count no included
            # client could give): then the round aborts and says so, revealing nothing.
            assert record.aggregate is None
            assert "malformed weight" in str(record.abort) or "inputs, not" in str(record.abort), (
                record.abort
            )
        else:
            assert record.outcome is RoundOutcome.COMPLETED, record.abort
    if record.completed and (after_input or bad not in record.included):
        # A sum the flipped bit could not have entered as the client's own input is exact.
        _assert_aggregate_is_the_mean_of_exactly_the_included(contender, result)
    if record.completed:
        # Whatever one client sent, the revealed total weight is one the included clients
        # could have given: a server that knows better never reveals an impossible mean.
        assert record.aggregate is not None
        most = len(record.included) * contender.max_weight
        assert record.aggregate.total_weight <= most, (record.aggregate.total_weight, most)


# -------------------------------------------------------------------------- dropout at every stage


@pytest.mark.parametrize(("contender", "stage"), _stages())
def test_a_client_silent_from_any_stage_on_leaves_a_round_over_exactly_the_survivors(
    contender: Contender, stage: Stage
) -> None:
    # Every scheme of the harness tolerates one dropout at every stage it runs; a client
    # that goes after its input reached the server (masking's consistency and unmask, CKKS's
    # decrypt) is still in the sum.
    result = run_round(contender, silent={stage: highest})
    record = result.record
    (gone,) = result.gone
    assert record.outcome is RoundOutcome.COMPLETED, record.abort
    assert dict(record.drops) == {gone: record.drops[gone]}
    assert record.drops[gone].stage is stage and record.drops[gone].reason is missed(stage)
    assert record.included == _survivors(contender, result, {gone}, stage)
    _assert_aggregate_is_the_mean_of_exactly_the_included(contender, result)
    _assert_record_is_consistent(contender, result)


@pytest.mark.parametrize(("contender", "stage"), _stages())
def test_a_silence_the_scheme_cannot_survive_aborts_the_round_and_reveals_nothing(
    contender: Contender, stage: Stage
) -> None:
    # masking: all but t - 1 of those asked; CKKS: every key holder; plaintext: all but
    # min_cohort - 1 (CONTENDERS' fatal).
    def fatal(config: Message, to: Sequence[int]) -> Sequence[int]:
        return list(contender.fatal(config, stage, to))

    result = run_round(contender, silent={stage: fatal})
    record = result.record
    assert result.gone, "the silence picked nobody"
    assert record.outcome is RoundOutcome.ABORTED
    assert isinstance(record.abort, RoundAborted)
    assert record.aggregate is None and record.included == ()
    assert {d.reason for i, d in record.drops.items() if i in result.gone} == {missed(stage)}
    _assert_record_is_consistent(contender, result)


# --------------------------------------------------------------------------------- decoders


def _messages(contender: Contender) -> dict[type[Message], bytes]:
    """One encoding of every message the scheme's rounds sent, either way, by class."""
    found: dict[type[Message], bytes] = {}
    for result in honest_rounds(contender.name):
        for _, _, message in (*result.down, *result.up):
            found.setdefault(type(message), message.encode())
    return found


def _cuts(size: int) -> list[int]:
    """Every prefix length of the first 80 bytes, then about 40 spread over the rest."""
    step = max(1, (size - 80) // 40)
    return sorted({*range(min(size, 80)), *range(80, size, step), size - 1})


@pytest.mark.parametrize("contender", _schemes())
def test_every_decoder_of_the_schemes_messages_rejects_trailing_bytes_and_truncation(
    contender: Contender,
) -> None:
    messages = _messages(contender)
    assert messages
    for cls, data in messages.items():
        assert decode(data).encode() == data, cls
        for extra in (b"\x00", b"\x01" * 7):
            with pytest.raises(DecodeError):
                cls.decode(data + extra)
            with pytest.raises(DecodeError):
                decode(data + extra)
        for cut in _cuts(len(data)):
            with pytest.raises(DecodeError):
                cls.decode(data[:cut])
            with pytest.raises(DecodeError):
                decode(data[:cut])


def test_every_tag_in_the_codec_table_is_sent_by_a_scheme_of_the_harness() -> None:
    """So every decoder is under the clause above: a tag whose scheme is missing from
    CONTENDERS (or whose message no round sends) fails here."""
    missing = [c.name for c in CONTENDERS if not _available(c)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: their tags cannot be sent")
    sent = {cls for c in CONTENDERS for cls in _messages(c)}
    # A session's messages span rounds: no one-round scheme sends them, and
    # tests/sessions/test_messages.py puts every one an honest session sends under this clause.
    sent |= set(defined_in("secagg.schemes.masking.session.messages"))
    unsent = sorted(f"{tag}: {TAGS[tag]}" for tag in TAGS if message_class(tag) not in sent)
    assert not unsent


# -------------------------------------------------------------------------- the round record


def _record_rounds(contender: Contender) -> list[Round]:
    """An honest round, a dropout at each stage, and a fatal silence at each stage."""
    rounds = list(honest_rounds(contender.name))
    for stage in contender.scheme.stages:

        def fatal(config: Message, to: Sequence[int], stage: Stage = stage) -> Sequence[int]:
            return list(contender.fatal(config, stage, to))

        rounds.append(run_round(contender, silent={stage: fatal}))
    return rounds


def _assert_record_is_consistent(contender: Contender, result: Round) -> None:
    """Included and dropped cover the cohort, every drop is typed and at a stage the scheme
    runs, every stage that ran has a time."""
    scheme = contender.scheme
    cohort = set(range(contender.n))
    record = result.record
    included, dropped = set(record.included), set(record.drops)
    # Included and dropped cover the cohort; they overlap only in clients dropped after their
    # input reached the server (still in the sum).
    if record.completed:
        assert included | dropped == cohort
        assert result.input_stage is not None
        # A client dropped before the stage that carries the input is not in the sum, one
        # dropped after it is; one dropped in that stage is, if its input arrived first.
        position = {i: _position(contender, d.stage) for i, d in record.drops.items()}
        input_position = _position(contender, result.input_stage)
        assert not {i for i in included if position.get(i, input_position) < input_position}
        assert {i for i in dropped if position[i] > input_position} <= included
    else:
        assert record.included == () and record.aggregate is None
        assert isinstance(record.abort, RoundAborted)
        assert Stage(record.abort.stage) in scheme.stages
        assert dropped <= cohort
    # Every drop: a cohort member, a typed reason, a stage the scheme runs; a silent client is
    # dropped for missing exactly the stage it went silent in (a misbehaving one, silent after
    # its one bad answer, no earlier than that stage).
    for client_id, drop in record.drops.items():
        assert drop.client_id == client_id and client_id in cohort
        assert isinstance(drop.reason, DropReason)
        assert drop.stage in scheme.stages
        if client_id == result.misbehaved:
            position = _position(contender, drop.stage)
            assert position >= _position(contender, result.gone[client_id])
        elif client_id in result.gone and drop.reason in MISSED_REASONS:
            assert drop.reason is missed(result.gone[client_id])
    # The listener heard each drop once.
    assert sorted(result.heard, key=lambda d: d.client_id) == sorted(
        record.drops.values(), key=lambda d: d.client_id
    )
    # A time for each stage that ran (a stage run twice adds up), none for any other; the
    # stages first ran in the scheme's order, all of them in a completed round.
    assert set(record.stage_seconds) == set(result.opened) <= set(scheme.stages)
    assert all(seconds > 0 for seconds in record.stage_seconds.values())
    assert record.seconds >= sum(record.stage_seconds.values())
    first_runs = list(dict.fromkeys(result.opened))
    assert first_runs == list(scheme.stages[: len(first_runs)])
    if record.completed:
        assert first_runs == list(scheme.stages)
    # Bytes: everyone was sent the opening message; only the cohort sent anything.
    assert set(record.bytes_down) == cohort
    assert set(record.bytes_up) <= cohort


@pytest.mark.parametrize("contender", _schemes())
def test_the_round_record_accounts_for_every_client_every_drop_and_every_stage(
    contender: Contender,
) -> None:
    for result in _record_rounds(contender):
        _assert_record_is_consistent(contender, result)
