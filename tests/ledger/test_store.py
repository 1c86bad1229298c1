"""The round ledger's storage API: durable, honest about crashes, and refusing misuse."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import secagg
from secagg.dp.calibrate import achieved_epsilon, epsilon_spent
from secagg.dp.round_privacy import dp_series
from secagg.errors import ConfigurationError, LedgerError, UsageError
from secagg.ledger import RECOVERED_REASON, DropRecord, Ledger
from secagg.protocol.runner import RoundOutcome
from tests.ledger.helpers import (
    COHORT,
    DIM,
    SESSION,
    SRC,
    TASK,
    Clock,
    _aggregate,
    _complete,
    _complete_dp,
    _one_line_naming,
    _plan,
    _raw,
    _start,
)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    with Ledger(":memory:", clock=Clock()) as opened:
        yield opened


# ----------------------------------------------------------------- rounds


def test_a_completed_round_round_trips_every_field_and_its_aggregate_exactly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path, clock=Clock(100.0)) as ledger:
        _start(ledger, 7)  # clock reads 101
        ledger.record_stage(7, "advertise", 0.25)
        ledger.record_stage(7, "share", 0.5)
        ledger.record_drop(7, 5, "share", "missed-share", "no reply before the deadline")
        ledger.record_stage(7, "masked-input", 1.0)
        ledger.record_stage(7, "unmask", 0.125)
        _complete(ledger, 7)  # clock reads 102
    with Ledger(path) as ledger:  # everything came back from the file, not from memory
        record = ledger.round(7)
        assert record.round_id == 7
        assert record.session_id == SESSION
        assert record.task_hash == TASK
        assert record.protocol == "secagg+"
        assert record.cohort == COHORT
        assert (record.degree, record.threshold, record.dim) == (4, 3, DIM)
        assert (record.started_at, record.finished_at) == (101.0, 102.0)
        assert record.outcome is RoundOutcome.COMPLETED
        assert record.abort_reason is None
        assert record.included == (3, 8, 13, 21)
        assert list(record.stage_seconds.items()) == [
            ("advertise", 0.25),
            ("share", 0.5),
            ("masked-input", 1.0),
            ("unmask", 0.125),
        ]
        assert record.drops == (
            DropRecord(5, "share", "missed-share", "no reply before the deadline"),
        )
        assert record.upload_bytes_per_client == 1234.5
        assert record.download_bytes_per_client == 678.0
        assert record.has_aggregate
        assert record.total_weight == 40
        stored = ledger.aggregate(7)
        assert stored.dtype == np.float64
        assert stored.tobytes() == _aggregate(7).tobytes()  # bit for bit
        assert ledger.rounds() == [record]
        assert ledger.latest_completed() == record


def test_an_aborted_round_stores_its_reason_and_no_aggregate(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
        ledger.record_stage(1, "advertise", 0.1)
        ledger.abort_round(1, "2 clients left, threshold 3")
        record = ledger.round(1)
        assert record.outcome is RoundOutcome.ABORTED
        assert record.abort_reason == "2 clients left, threshold 3"
        assert record.finished_at is not None
        assert record.included == ()
        assert not record.has_aggregate
        assert record.total_weight is None
        assert record.upload_bytes_per_client is None
        assert ledger.latest_completed() is None
        with pytest.raises(UsageError, match="did not complete"):
            ledger.aggregate(1)
    with _raw(path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM aggregates").fetchone() == (0,)


def test_drops_are_recorded_per_stage_in_the_order_they_happened(ledger: Ledger) -> None:
    _start(ledger, 1)
    ledger.record_drop(1, 21, "advertise", "missed-advertise")
    ledger.record_drop(1, 5, "share", "bad-ciphertext", "tag mismatch")
    ledger.record_drop(1, 99, "share", "unknown-client")  # not in the cohort: still a drop
    ledger.record_drop(1, 8, "unmask", "missed-unmask")
    drops = ledger.round(1).drops
    assert drops == (
        DropRecord(21, "advertise", "missed-advertise", ""),
        DropRecord(5, "share", "bad-ciphertext", "tag mismatch"),
        DropRecord(99, "share", "unknown-client", ""),
        DropRecord(8, "unmask", "missed-unmask", ""),
    )
    by_stage = {s: [d.client_id for d in drops if d.stage == s] for s in ("share", "unmask")}
    assert by_stage == {"share": [5, 99], "unmask": [8]}


def test_a_running_round_is_listed_as_running_with_nothing_final(ledger: Ledger) -> None:
    _start(ledger, 1)
    record = ledger.round(1)
    assert record.outcome is RoundOutcome.RUNNING
    assert record.finished_at is None
    assert record.included == ()
    assert not record.has_aggregate


def test_rounds_are_listed_by_id_and_latest_completed_is_the_highest(ledger: Ledger) -> None:
    for rid in (1, 2, 3, 4):
        _start(ledger, rid)
    _complete(ledger, 2)
    _complete(ledger, 3)
    ledger.abort_round(4, "too few")
    assert [r.round_id for r in ledger.rounds()] == [1, 2, 3, 4]
    latest = ledger.latest_completed()
    assert latest is not None and latest.round_id == 3


# ----------------------------------------------------------------- crash and restart


def test_round_left_running_is_recorded_as_aborted_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
        _complete(ledger, 1)
        _start(ledger, 2)
        ledger.record_stage(2, "advertise", 0.5)
        # closed without completing or aborting round 2: the coordinator went away
    with Ledger(path, clock=lambda: 5000.0) as ledger:
        assert ledger.round(2).outcome is RoundOutcome.RUNNING
        assert ledger.recover() == [2]
        aborted = ledger.round(2)
        assert aborted.outcome is RoundOutcome.ABORTED
        assert aborted.abort_reason == RECOVERED_REASON
        assert aborted.finished_at == 5000.0
        assert dict(aborted.stage_seconds) == {"advertise": 0.5}
        assert not aborted.has_aggregate
        completed = ledger.round(1)
        assert completed.outcome is RoundOutcome.COMPLETED
        assert completed.included == (3, 8, 13, 21)
        assert ledger.aggregate(1).tobytes() == _aggregate(1).tobytes()
        assert ledger.recover() == []  # recovering twice changes nothing


def test_a_coordinator_killed_mid_round_leaves_committed_rounds_intact(tmp_path: Path) -> None:
    # A real SIGKILL: no close(), no checkpoint, the write-ahead log left as it was.
    path = tmp_path / "ledger.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from secagg.ledger import Ledger
        ledger = Ledger({str(path)!r})
        common = dict(session_id=bytes(32), task_hash=bytes(32), protocol="secagg",
                      cohort=[1, 2, 3], degree=2, threshold=2, dim=3)
        ledger.start_round(round_id=1, **common)
        ledger.complete_round(1, included=[1, 2, 3], aggregate=np.array([0.5, -1.25, 3.0]),
                              total_weight=3, upload_bytes_per_client=10.0,
                              download_bytes_per_client=20.0)
        ledger.start_round(round_id=2, **common)
        ledger.record_drop(2, 3, "share", "missed-share")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    src = Path(secagg.__file__).resolve().parents[1]
    child = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(src)},
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert (tmp_path / "ledger.db-wal").exists()  # the rounds are still only in the log
    with Ledger(path) as ledger:
        assert ledger.recover() == [2]
        assert ledger.round(2).drops == (DropRecord(3, "share", "missed-share", ""),)
        assert ledger.aggregate(1).tolist() == [0.5, -1.25, 3.0]
        assert ledger.next_round_id() == 3


def test_next_round_id_never_repeats_after_recover(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        assert ledger.next_round_id() == 1
        _start(ledger, ledger.next_round_id())
        _complete(ledger, 1)
        _start(ledger, ledger.next_round_id())
        ledger.abort_round(2, "too few")
        _start(ledger, ledger.next_round_id())  # round 3: left running
    with Ledger(path) as ledger:
        assert ledger.recover() == [3]
        assert ledger.next_round_id() == 4  # the aborted rounds' ids are not handed out again
        with pytest.raises(UsageError, match="already exists"):
            _start(ledger, 3)


# ----------------------------------------------------------------- misuse


@pytest.mark.parametrize("ending", ["completed", "aborted", "unknown"])
def test_completing_or_aborting_a_round_that_is_not_running_is_a_usage_error(
    ledger: Ledger, ending: str
) -> None:
    if ending != "unknown":
        _start(ledger, 1)
        if ending == "completed":
            _complete(ledger, 1)
        else:
            ledger.abort_round(1, "too few")
    before = ledger.rounds()
    with pytest.raises(UsageError):
        _complete(ledger, 1)
    with pytest.raises(UsageError):
        ledger.abort_round(1, "again")
    with pytest.raises(UsageError):
        ledger.record_stage(1, "unmask", 1.0)
    with pytest.raises(UsageError):
        ledger.record_drop(1, 3, "unmask", "missed-unmask")
    assert ledger.rounds() == before  # a refused call changed nothing


def test_an_unknown_round_is_a_usage_error_naming_it(ledger: Ledger) -> None:
    with pytest.raises(UsageError, match="no round 42"):
        ledger.round(42)
    with pytest.raises(UsageError, match="no round 42"):
        ledger.aggregate(42)


def test_an_aggregate_that_does_not_fit_the_round_is_refused_and_nothing_is_written(
    ledger: Ledger,
) -> None:
    _start(ledger, 1)
    with pytest.raises(UsageError, match="dim"):
        _complete(ledger, 1, aggregate=np.zeros(DIM + 1))
    with pytest.raises(UsageError, match="1-D float"):
        _complete(ledger, 1, aggregate=np.zeros((2, DIM // 2)))
    with pytest.raises(UsageError, match="not in cohort"):
        ledger.complete_round(
            1,
            included=(3, 4, 5),
            aggregate=_aggregate(),
            total_weight=3,
            upload_bytes_per_client=1.0,
            download_bytes_per_client=1.0,
        )
    with pytest.raises(UsageError, match="below the threshold"):
        ledger.complete_round(
            1,
            included=(3, 5),
            aggregate=_aggregate(),
            total_weight=2,
            upload_bytes_per_client=1.0,
            download_bytes_per_client=1.0,
        )
    assert ledger.round(1).outcome is RoundOutcome.RUNNING


def test_a_stage_is_timed_once_and_bad_arguments_are_usage_errors(ledger: Ledger) -> None:
    _start(ledger, 1)
    ledger.record_stage(1, "share", 0.5)
    with pytest.raises(UsageError, match="already timed"):
        ledger.record_stage(1, "share", 0.7)
    with pytest.raises(UsageError):
        ledger.record_stage(1, "unmask", float("nan"))
    with pytest.raises(UsageError, match="32 bytes"):
        ledger.start_round(
            round_id=2,
            session_id=b"short",
            task_hash=TASK,
            protocol="secagg",
            cohort=COHORT,
            degree=4,
            threshold=3,
            dim=DIM,
        )
    with pytest.raises(UsageError, match="twice"):
        _start(ledger, 2, cohort=(1, 2, 2))


def test_a_closed_ledger_is_a_usage_error(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(UsageError, match="closed"):
        ledger.rounds()


def test_max_pages_must_be_a_positive_int(tmp_path: Path) -> None:
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ConfigurationError, match="max_pages"):
            Ledger(tmp_path / "ledger.db", max_pages=bad)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_readers_write_methods_are_usage_errors_and_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer:
        _start(writer, 1)
    with Ledger.open_readonly(path) as reader:
        before = reader.rounds()
        attempts: list[Callable[[], object]] = [
            reader.recover,
            lambda: _start(reader, 2),
            lambda: reader.record_stage(1, "share", 0.5),
            lambda: reader.record_drop(1, 3, "share", "missed-share"),
            lambda: _complete(reader, 1),
            lambda: reader.abort_round(1, "no"),
        ]
        for attempt in attempts:
            with pytest.raises(UsageError, match="opened read-only"):
                attempt()
        assert reader.rounds() == before
    with pytest.raises(UsageError, match="in-memory"):
        Ledger.open_readonly(":memory:")


# ----------------------------------------------------------------- a full disk


def _page_count(path: Path) -> int:
    with _raw(path) as raw:
        (pages,) = raw.execute("PRAGMA page_count").fetchone()
    return int(pages)


BIG = 20_000  # 160 kB of aggregate: 40 pages where the cap leaves room for two


def test_a_full_disk_at_completion_leaves_the_round_running_without_aggregate(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        ledger.start_round(
            round_id=1,
            session_id=SESSION,
            task_hash=TASK,
            protocol="secagg",
            cohort=COHORT,
            degree=4,
            threshold=3,
            dim=BIG,
        )
    with Ledger(path, max_pages=_page_count(path) + 2) as ledger:
        with pytest.raises(LedgerError, match="database or disk is full") as full:
            ledger.complete_round(
                1,
                included=COHORT,
                aggregate=np.ones(BIG),
                total_weight=5,
                upload_bytes_per_client=1.0,
                download_bytes_per_client=1.0,
            )
        message = _one_line_naming(full.value, path)
        assert "complete round 1" in message and "nothing was written" in message
        record = ledger.round(1)  # rolled back whole: not completed, nobody included
        assert record.outcome is RoundOutcome.RUNNING
        assert record.included == () and not record.has_aggregate
        ledger.record_drop(1, 5, "unmask", "missed-unmask")  # what fits is still written
    with _raw(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert raw.execute("SELECT COUNT(*) FROM aggregates").fetchone() == (0,)
    with Ledger(path) as ledger:  # space freed: the next start recovers the round
        assert ledger.recover() == [1]
        assert ledger.round(1).drops == (DropRecord(5, "unmask", "missed-unmask", ""),)


def test_a_full_disk_at_the_start_of_a_round_writes_nothing_of_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with Ledger(path, max_pages=_page_count(path) + 1) as ledger:
        with pytest.raises(LedgerError, match=r"start round 1.*disk is full"):
            _start(ledger, 1, cohort=tuple(range(BIG)))
        assert ledger.rounds() == []
        assert ledger.next_round_id() == 1
        _start(ledger, 1)  # a round that fits
        assert ledger.round(1).cohort == COHORT


# ----------------------------------------------------------------- bad ids


@pytest.mark.parametrize("round_id", [2**70, 2**63, -1, 0, True])
def test_an_impossible_round_id_is_a_usage_error_never_an_overflow(
    ledger: Ledger, tmp_path: Path, round_id: int
) -> None:
    _start(ledger, 1)
    _complete(ledger, 1)
    out = tmp_path / "out.npy"
    calls: list[Callable[[], object]] = [
        lambda: ledger.round(round_id),
        lambda: ledger.aggregate(round_id),
        lambda: ledger.abort_round(round_id, "no"),
        lambda: ledger.record_stage(round_id, "share", 1.0),
        lambda: ledger.record_drop(round_id, 3, "share", "missed-share"),
        lambda: _complete(ledger, round_id),
    ]
    for call in calls:
        with pytest.raises(UsageError, match="round id must be"):
            call()
    assert not out.exists()


# ----------------------------------------------------------------- exporting


def test_the_ledger_core_does_not_need_the_clis_presentation_library() -> None:
    probe = "import sys, secagg.ledger; print('rich' in sys.modules)"
    child = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout.strip() == "False", child.stderr


# ----------------------------------------------------------------- distributed DP


def test_each_dp_round_records_its_sums_epsilon_and_the_epsilon_spent_over_its_series(
    tmp_path: Path,
) -> None:
    plan = _plan()
    path = tmp_path / "ledger.db"
    counts = [(3, 5, 8, 13, 21), (3, 8, 13), (5, 8, 13, 21)]
    with Ledger(path) as ledger:
        for round_id, included in enumerate(counts, start=1):
            _complete_dp(ledger, round_id, plan, included)
        _start(ledger, 4)
        ledger.abort_round(4, "too few")  # reveals nothing, spends nothing
    with Ledger.open_readonly(path) as reader:
        records = reader.rounds()
    privacy = [r.privacy for r in records]
    assert privacy[3] is None
    spent = []
    for i, p in enumerate(privacy[:3]):
        assert p is not None
        assert p.series == dp_series(plan) and p.mechanism == "skellam" and p.delta == 1e-5
        # The sum's own epsilon: for the number of inputs it held (more inputs, more noise).
        assert p.epsilon == achieved_epsilon(plan, len(counts[i]))
        # Spent: the rounds so far composed (RDP), exactly what secagg.dp computes.
        assert p.epsilon_spent == epsilon_spent(plan, [len(c) for c in counts[: i + 1]])
        assert p.epsilon_target == plan.epsilon_total and p.target_rounds == 4
        spent.append(p.epsilon_spent)
    assert spent == sorted(spent) and spent[-1] <= plan.epsilon_total  # 3 of its 4 rounds


def test_another_dp_configuration_is_another_series_accounted_apart(ledger: Ledger) -> None:
    first, second = _plan(8.0), _plan(4.0)
    assert dp_series(first) != dp_series(second)
    _complete_dp(ledger, 1, first, COHORT)
    _complete_dp(ledger, 2, second, COHORT)
    _complete_dp(ledger, 3, first, COHORT)
    spent = {r.round_id: r.privacy.epsilon_spent for r in ledger.rounds() if r.privacy}
    assert spent[2] == epsilon_spent(second, [len(COHORT)])
    assert spent[3] == epsilon_spent(first, [len(COHORT)] * 2)
    assert ledger.dp_inputs(dp_series(first)) == [len(COHORT)] * 2
