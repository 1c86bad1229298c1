"""The contract every scheme keeps, one test per clause, run over every scheme of the harness
(``tests/schemes/contract.py``: SecAgg, SecAgg+, SecAgg in active mode, CKKS, plaintext).

A new scheme gets these tests by adding its line to ``CONTENDERS``. Each clause reads as a
sentence of the specification; where one does not apply to a scheme, the test is skipped and
says why. Rounds run through the round engine as ``secagg.simulate`` drives it, with every
message encoded and decoded, small cohorts, ``dim`` 16 and deterministic randomness.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest

from secagg.errors import DecodeError, DropReason, RoundAborted
from secagg.protocol.codec import TAGS, Message, decode, message_class
from secagg.protocol.runner import RoundOutcome
from secagg.protocol.stages import MISSED_REASONS, Stage, missed
from tests.schemes.contract import (
    CONTENDERS,
    Contender,
    Misbehaviour,
    Round,
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


def _stages() -> list[object]:
    """(scheme, stage) for every stage each scheme runs (learnt from the scheme itself)."""
    params: list[object] = []
    for c in CONTENDERS:
        if not _available(c):
            params.append(pytest.param(c, None, id=c.name, marks=_skip_unless_available(c)))
            continue
        params += [pytest.param(c, s, id=f"{c.name}-{s.value}") for s in c.scheme.stages]
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


def _survivors(contender: Contender, result: Round, silent: set[int], stage: Stage) -> tuple:
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


# ------------------------------------------------------ the server never raises because of a client


def _junk(own: bytes, others: Mapping[int, bytes], honest: Mapping[Stage, bytes]) -> bytes:
    del own, others, honest
    return hashlib.sha256(b"junk").digest() * 3


def _truncated(own: bytes, others: Mapping[int, bytes], honest: Mapping[Stage, bytes]) -> bytes:
    del others, honest
    return own[:-1]


def _trailing(own: bytes, others: Mapping[int, bytes], honest: Mapping[Stage, bytes]) -> bytes:
    del others, honest
    return own + b"\x00"


def _another_clients(
    own: bytes, others: Mapping[int, bytes], honest: Mapping[Stage, bytes]
) -> bytes:
    del own, honest
    return others[min(others)]


Make = Callable[[bytes, Mapping[int, bytes], Mapping[Stage, bytes]], bytes]

# What a misbehaving client sends, and the reason the server must drop it for.
CORRUPT: dict[str, tuple[Make, frozenset[DropReason]]] = {
    "junk-bytes": (_junk, frozenset({DropReason.MALFORMED})),
    "truncated-answer": (_truncated, frozenset({DropReason.MALFORMED})),
    "answer-with-trailing-byte": (_trailing, frozenset({DropReason.MALFORMED})),
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
    honest = honest_rounds(contender.name)[0]
    result = run_round(
        contender, misbehaviour=Misbehaviour(stage, highest, make), honest=honest
    )  # a server that raised here would fail the test
    _check_dropped_and_completed(contender, stage, result, reasons)


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
        contender,
        misbehaviour=Misbehaviour(stage, highest, lambda own, others, mine: data),
        honest=honest,
    )
    _check_dropped_and_completed(contender, stage, result, frozenset({DropReason.WRONG_STAGE}))


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


@pytest.mark.parametrize("contender", _schemes())
def test_the_round_record_accounts_for_every_client_every_drop_and_every_stage(
    contender: Contender,
) -> None:
    scheme = contender.scheme
    cohort = set(range(contender.n))
    for result in _record_rounds(contender):
        record = result.record
        included, dropped = set(record.included), set(record.drops)
        # Included and dropped cover the cohort; they overlap only in clients dropped after
        # their input reached the server (still in the sum).
        if record.completed:
            assert included | dropped == cohort
            assert result.input_stage is not None
            late = {
                i
                for i, d in record.drops.items()
                if _position(contender, d.stage) > _position(contender, result.input_stage)
            }
            assert included & dropped == late
        else:
            assert record.included == () and record.aggregate is None
            assert isinstance(record.abort, RoundAborted)
            assert Stage(record.abort.stage) in scheme.stages
            assert dropped <= cohort
        # Every drop: a cohort member, a typed reason, a stage the scheme runs; a silent
        # client is dropped for missing exactly the stage it went silent in.
        for client_id, drop in record.drops.items():
            assert drop.client_id == client_id and client_id in cohort
            assert isinstance(drop.reason, DropReason)
            assert drop.stage in scheme.stages
            if client_id in result.gone and drop.reason in MISSED_REASONS:
                assert drop.reason is missed(result.gone[client_id])
        assert sorted(result.heard, key=lambda d: d.client_id) == sorted(
            record.drops.values(), key=lambda d: d.client_id
        )
        # A time for each stage that ran (a stage run twice adds up), none for any other.
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
