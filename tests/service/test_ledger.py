"""The round ledger: durable, honest about crashes, and holding nothing but public facts."""

from __future__ import annotations

import io
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from rich.console import Console

import secagg
from secagg.errors import ConfigurationError, DecodeError, UsageError
from secagg.service.ledger import (
    RECOVERED_REASON,
    SCHEMA_VERSION,
    DropRecord,
    Ledger,
    RoundOutcome,
    export_aggregate,
    format_rounds_table,
)

SESSION = bytes(range(32))
TASK = bytes(range(100, 132))
COHORT = (3, 5, 8, 13, 21)
DIM = 6


class Clock:
    """A clock that ticks one second per reading, so timestamps are known exactly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    with Ledger(":memory:", clock=Clock()) as opened:
        yield opened


def _start(ledger: Ledger, round_id: int, *, cohort: tuple[int, ...] = COHORT) -> None:
    ledger.start_round(
        round_id=round_id,
        session_id=SESSION,
        task_hash=TASK,
        protocol="secagg+",
        cohort=cohort,
        degree=4,
        threshold=3,
        dim=DIM,
    )


def _aggregate(seed: int = 0) -> NDArray[np.float64]:
    # Thirds and sevenths: values float32 cannot hold, so exactness means float64 storage.
    return np.arange(1, DIM + 1, dtype=np.float64) / 3.0 + seed / 7.0


def _complete(
    ledger: Ledger, round_id: int, *, aggregate: NDArray[np.float64] | None = None
) -> None:
    ledger.complete_round(
        round_id,
        included=(3, 8, 13, 21),
        aggregate=_aggregate(round_id) if aggregate is None else aggregate,
        total_weight=40,
        upload_bytes_per_client=1234.5,
        download_bytes_per_client=678.0,
    )


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# ----------------------------------------------------------------- schema


def test_a_new_file_gets_the_schema_its_version_and_write_ahead_logging(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with _raw(path) as raw:
        tables = {n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        expected = {"schema_version", "rounds", "cohort", "stage_timings", "drops", "aggregates"}
        assert tables == expected
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with Ledger(path) as reopened:  # opening an existing ledger keeps it as it is
        assert reopened.rounds() == []
        assert reopened.next_round_id() == 1


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with _raw(path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigurationError, match="newer than this secagg"):
        Ledger(path)


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, just some bytes" * 100)
    with pytest.raises(ConfigurationError):
        Ledger(junk)
    other = tmp_path / "other.db"
    with _raw(other) as raw:
        raw.execute("CREATE TABLE t (x)")
    with pytest.raises(ConfigurationError, match="not a secagg round ledger"):
        Ledger(other)


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
        from secagg.service.ledger import Ledger
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


# ----------------------------------------------------------------- integrity and secrecy


def test_a_corrupted_aggregate_blob_is_a_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
        _complete(ledger, 1)
        _start(ledger, 2)
        _complete(ledger, 2)
    with _raw(path) as raw:
        raw.execute("UPDATE aggregates SET data = ? WHERE round_id = 1", (b"\x00" * 13,))
        # Same length, one bit flipped: caught by the digest.
        (data,) = raw.execute("SELECT data FROM aggregates WHERE round_id = 2").fetchone()
        flipped = bytes([data[0] ^ 1]) + data[1:]
        raw.execute("UPDATE aggregates SET data = ? WHERE round_id = 2", (flipped,))
    with Ledger(path) as ledger:
        with pytest.raises(DecodeError, match="13 bytes"):
            ledger.aggregate(1)
        with pytest.raises(DecodeError, match="digest"):
            ledger.aggregate(2)
        with pytest.raises(DecodeError):
            export_aggregate(ledger, 1, tmp_path / "out.npy")
        assert not (tmp_path / "out.npy").exists()


def test_the_file_holds_no_secret_and_no_vector_but_the_aggregate(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    updates = rng.uniform(-1, 1, (len(COHORT), DIM))  # the clients' individual updates
    secret = secrets.token_bytes(32)  # stands for any key, seed or share of the round
    mean = updates[[0, 2, 3, 4]].mean(axis=0)
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
        ledger.record_stage(1, "share", 0.5)
        ledger.record_drop(1, 5, "masked-input", "missed-masked-input")
        _complete(ledger, 1, aggregate=mean)
        _start(ledger, 2)
        ledger.abort_round(2, "too few")
    files = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]
    raw_bytes = b"".join(p.read_bytes() for p in files)
    assert secret not in raw_bytes
    for update in updates:
        assert update.astype("<f8").tobytes() not in raw_bytes
        assert update.astype("<f4").tobytes() not in raw_bytes
    assert mean.astype("<f8").tobytes() in raw_bytes  # the scan does see stored vectors

    # What may hold a value at all: an allow-list, so a new column is a conscious decision.
    with _raw(path) as raw:
        tables = [n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        columns = {t: [c[1] for c in raw.execute(f"PRAGMA table_info({t})")] for t in tables}
        assert columns == {
            "schema_version": ["version"],
            "rounds": [
                "round_id", "session_id", "task_hash", "protocol", "degree", "threshold", "dim",
                "started_at", "finished_at", "outcome", "abort_reason",
                "upload_bytes_per_client", "download_bytes_per_client",
            ],
            "cohort": ["round_id", "client_id", "included"],
            "stage_timings": ["round_id", "stage", "seconds"],
            "drops": ["drop_id", "round_id", "client_id", "stage", "reason", "detail"],
            "aggregates": ["round_id", "length", "total_weight", "sha256", "data"],
        }  # fmt: skip
        blobs = {
            (t, c, bytes(v))
            for t, cs in columns.items()
            for c in cs
            for (v,) in raw.execute(f"SELECT {c} FROM {t} WHERE typeof({c}) = 'blob'")
        }
    (digest,) = [v for t, c, v in blobs if c == "sha256"]
    assert blobs == {
        ("rounds", "session_id", SESSION),
        ("rounds", "task_hash", TASK),
        ("aggregates", "sha256", digest),
        ("aggregates", "data", mean.astype("<f8").tobytes()),
    }


# ----------------------------------------------------------------- the CLI's helpers


def test_export_writes_the_aggregate_as_float32_npy(ledger: Ledger, tmp_path: Path) -> None:
    _start(ledger, 1)
    _complete(ledger, 1)
    out = tmp_path / "mean"  # no suffix: the file is written at exactly this path
    export_aggregate(ledger, 1, out)
    loaded = np.load(out)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, _aggregate(1).astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["mean"]  # no temporary file left behind


def test_export_of_a_round_without_aggregate_is_a_usage_error(
    ledger: Ledger, tmp_path: Path
) -> None:
    _start(ledger, 1)
    with pytest.raises(UsageError):
        export_aggregate(ledger, 1, tmp_path / "out.npy")
    assert list(tmp_path.iterdir()) == []


def test_format_rounds_table_shows_outcome_drops_by_stage_seconds_and_reason(
    ledger: Ledger,
) -> None:
    _start(ledger, 1)
    ledger.record_stage(1, "advertise", 0.25)
    ledger.record_stage(1, "share", 0.5)
    ledger.record_drop(1, 21, "share", "missed-share")
    ledger.record_drop(1, 5, "share", "bad-share")
    ledger.record_stage(1, "unmask", 0.75)
    ledger.record_drop(1, 13, "unmask", "missed-unmask")
    _complete(ledger, 1)
    _start(ledger, 2)
    ledger.abort_round(2, "2 clients left, threshold 3")
    _start(ledger, 3)
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(format_rounds_table(ledger.rounds()))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "outcome" in line)
    columns = ("round", "outcome", "cohort size", "included", "dropped", "seconds", "up B/client")
    for column in (*columns, "reason"):
        assert column in header
    rows: dict[str, str] = {}
    for line in text.splitlines():
        cells = line.split()  # "│ 1 │ completed │ ...": the round id is the second cell
        if len(cells) > 1 and cells[1].isdigit():
            rows[cells[1]] = line
    assert "completed" in rows["1"]
    assert "share 2, unmask 1" in rows["1"]
    assert "1.50" in rows["1"]
    assert "1,234" in rows["1"]  # up B/client, whole bytes
    assert "aborted" in rows["2"] and "2 clients left, threshold 3" in rows["2"]
    assert "running" in rows["3"]
