"""The round ledger: durable, honest about crashes, and holding nothing but public facts."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

import secagg
from secagg.dp.calibrate import DpConfig, DpPlan, achieved_epsilon, calibrate, epsilon_spent
from secagg.errors import ConfigurationError, DecodeError, LedgerError, UsageError
from secagg.service.ledger import (
    LOCK_SUFFIX,
    RECOVERED_REASON,
    SCHEMA_VERSION,
    DropRecord,
    Ledger,
    RoundOutcome,
    RoundPrivacy,
    account_round,
    dp_series,
)
from tests.launcher import without_file_capabilities

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


@contextlib.contextmanager
def _raw(path: Path) -> Iterator[sqlite3.Connection]:
    """SQLite itself, in autocommit, closed on leaving (which checkpoints its log)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
        yield raw


SRC = Path(secagg.__file__).resolve().parents[1]

# A coordinator in a process of its own: it starts round 1 and waits for a line on stdin,
# then completes round 1, starts round 2 and waits again.
HOLDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from secagg.service.ledger import Ledger
    ledger = Ledger(sys.argv[1])
    common = dict(session_id=bytes(32), task_hash=bytes(32), protocol="secagg",
                  cohort=[1, 2, 3], degree=2, threshold=2, dim=3)
    ledger.start_round(round_id=1, **common)
    print("running 1", flush=True)
    sys.stdin.readline()
    ledger.complete_round(1, included=[1, 2, 3], aggregate=np.array([0.5, -1.25, 3.0]),
                          total_weight=3, upload_bytes_per_client=10.0,
                          download_bytes_per_client=20.0)
    ledger.start_round(round_id=2, **common)
    print("running 2", flush=True)
    sys.stdin.readline()
    """
)


def _last_words(child: subprocess.Popen[str]) -> str:
    """What a child that went wrong wrote on stderr (stopped first, so reading cannot hang)."""
    child.kill()
    child.wait(timeout=30)
    return child.stderr.read() if child.stderr is not None else ""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """The HOLDER coordinator on ``tmp_path / "ledger.db"``, once round 1 is running."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "ledger.db")],
        env={"PYTHONPATH": str(SRC)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "running 1\n", _last_words(child)
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()


_ATTEMPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from secagg.service.ledger import Ledger

    def attempt(label, action):
        try:
            result = action()
        except Exception as exc:
            print(label, type(exc).__name__, exc, sep="\\t")
        else:
            print(label, "ok", result, sep="\\t")

    """
)


def _unprivileged(script: str, *args: Path) -> subprocess.Popen[str]:
    """Start ``script`` where file permissions apply (as root too), with pipes to talk to it.

    ``attempt(label, action)`` prints one tab-separated line: label, outcome (``ok`` or the
    exception's class) and the result or message; a message of two lines would not parse.
    """
    command = [sys.executable, "-c", _ATTEMPT + textwrap.dedent(script), *map(str, args)]
    if os.geteuid() == 0:
        command = without_file_capabilities(command)
    try:
        return subprocess.Popen(
            command,
            env={"PYTHONPATH": str(SRC)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot give up root's file capabilities here: {exc}")


def _attempts(stdout: str) -> dict[str, tuple[str, str]]:
    results = {}
    for line in stdout.splitlines():
        label, outcome, detail = line.split("\t")
        results[label] = (outcome, detail)
    return results


def _as_unprivileged(script: str, *args: Path) -> dict[str, tuple[str, str]]:
    """Run ``script`` (see ``_unprivileged``) to its end and collect its attempts."""
    child = _unprivileged(script, *args)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    return _attempts(stdout)


def _one_line_naming(error: BaseException, path: Path) -> str:
    message = str(error)
    assert "\n" not in message
    assert str(path) in message
    return message


# ----------------------------------------------------------------- schema


def test_a_new_file_gets_the_schema_its_version_and_write_ahead_logging(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with _raw(path) as raw:
        tables = {n for (n,) in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        expected = {
            "schema_version", "rounds", "cohort", "stage_timings", "drops", "aggregates",
            "dp_rounds",
        }  # fmt: skip
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
    with pytest.raises(LedgerError, match="newer than this secagg"):
        Ledger(path)
    with pytest.raises(LedgerError, match="newer than this secagg"):
        Ledger.open_readonly(path)


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, just some bytes" * 100)
    with pytest.raises(LedgerError, match="not an SQLite database"):
        Ledger(junk)
    other = tmp_path / "other.db"
    with _raw(other) as raw:
        raw.execute("CREATE TABLE t (x)")
    with pytest.raises(LedgerError, match="not a secagg round ledger"):
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
            "dp_rounds": [
                "round_id", "series", "mechanism", "delta", "epsilon", "epsilon_spent",
                "epsilon_target", "target_rounds",
            ],
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


# ----------------------------------------------------------------- one writer at a time


def test_a_second_coordinator_is_refused_with_the_holders_pid_and_the_first_carries_on(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    path = tmp_path / "ledger.db"
    with pytest.raises(LedgerError) as refused:
        Ledger(path)
    message = _one_line_naming(refused.value, path)
    assert f"pid {holder.pid}" in message and "in use by another coordinator" in message
    # The refused one never got as far as recover(): the first one's round is still running.
    with Ledger.open_readonly(path) as reader:
        assert reader.round(1).outcome is RoundOutcome.RUNNING
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "running 2\n", _last_words(holder)  # round 1 completed
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    with Ledger(path) as ledger:  # a clean exit released the lock too
        assert ledger.round(1).outcome is RoundOutcome.COMPLETED
        assert ledger.recover() == [2]


def test_a_sigkilled_coordinator_releases_its_lock_and_a_restart_recovers_its_round(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    path = tmp_path / "ledger.db"
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    # The lock file is still there, with the dead coordinator's pid in it: no matter.
    assert (tmp_path / f"ledger.db{LOCK_SUFFIX}").read_text().strip() == str(holder.pid)
    with Ledger(path, clock=lambda: 5000.0) as ledger:
        assert ledger.recover() == [1]
        assert ledger.round(1).abort_reason == RECOVERED_REASON
        assert ledger.next_round_id() == 2
        assert (tmp_path / f"ledger.db{LOCK_SUFFIX}").read_text().strip() == str(os.getpid())


def test_a_second_writer_in_the_same_process_or_through_a_symlink_is_refused_until_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    alias = tmp_path / "alias.db"
    alias.symlink_to(path)
    with Ledger(path) as first:
        _start(first, 1)
        for name in (path, alias):
            with pytest.raises(LedgerError, match=f"pid {os.getpid()}"):
                Ledger(name)
        assert first.round(1).outcome is RoundOutcome.RUNNING
    with Ledger(alias) as second:  # closed: the next writer gets the lock
        assert second.recover() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.db", "ledger.db", "ledger.db.lock"]


# ----------------------------------------------------------------- what a writer creates


def test_a_new_ledger_appears_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        assert ledger.next_round_id() == 1
        assert not ledger.read_only and ledger.path == str(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.db", "ledger.db.lock"]
    with _raw(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    umask = os.umask(0o022)
    os.umask(umask)
    # Readable as SQLite would make it, so `secagg rounds` works from another account.
    assert path.stat().st_mode & 0o777 == 0o644 & ~umask


def test_an_empty_file_is_never_silently_made_a_new_ledger(tmp_path: Path) -> None:
    # What operators hit: the file had been emptied, a new ledger was written into it, round
    # ids began again at 1, and two different "round 2" aggregates existed.
    path = tmp_path / "ledger.db"
    path.touch()
    for opening in (Ledger, Ledger.open_readonly):
        with pytest.raises(LedgerError, match="is an empty file") as refused:
            opening(path)
        _one_line_naming(refused.value, path)
    assert path.stat().st_size == 0  # left exactly as it was
    assert not (tmp_path / "ledger.db-wal").exists()


def test_an_empty_file_becomes_a_ledger_when_the_operator_asks(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.touch()
    with Ledger(path, initialise=True) as ledger:
        _start(ledger, ledger.next_round_id())
    with Ledger(path, initialise=True) as ledger:  # an existing ledger is opened as it is
        assert [r.round_id for r in ledger.rounds()] == [1]
    with _raw(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _foreign_sqlite(path: Path) -> None:
    with _raw(path) as raw:
        raw.execute("CREATE TABLE accounts (id INTEGER, balance REAL)")


def _empty_sqlite(path: Path) -> None:
    with _raw(path) as raw:
        raw.execute("PRAGMA user_version = 7")  # a valid database file with nothing in it


def _older_version(path: Path) -> None:
    Ledger(path).close()
    with _raw(path) as raw:
        raw.execute("UPDATE schema_version SET version = 0")


def _no_trigger(path: Path) -> None:
    Ledger(path).close()
    with _raw(path) as raw:
        raw.execute("DROP TRIGGER finished_rounds_are_final")


def _truncated(path: Path) -> None:
    Ledger(path).close()
    path.write_bytes(path.read_bytes()[:100])  # a valid header and then nothing


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p.write_bytes(b"PK\x03\x04 a zip archive, say" * 50), "not an SQLite database"),
        (lambda p: p.write_bytes(b"x"), "not an SQLite database"),
        (_foreign_sqlite, "not a secagg round ledger \\(tables: accounts\\)"),
        (_empty_sqlite, "SQLite database with nothing in it"),
        (_older_version, "schema version 0, which this secagg does not know"),
        (_no_trigger, "damaged round ledger: finished_rounds_are_final missing"),
        (_truncated, "malformed|not a database"),
    ],
    ids=["zip", "one-byte", "other-schema", "empty-sqlite", "version-0", "no-trigger", "torn"],
)
def test_what_is_not_a_ledger_of_this_version_is_refused_in_one_line_and_left_unchanged(
    tmp_path: Path, make: Callable[[Path], object], what: str
) -> None:
    path = tmp_path / "file.db"
    make(path)
    before = path.read_bytes()
    for opening in (Ledger, Ledger.open_readonly):
        with pytest.raises(LedgerError, match=what) as refused:
            opening(path)
        _one_line_naming(refused.value, path)
    if what != "SQLite database with nothing in it":
        with pytest.raises(LedgerError, match=what):
            Ledger(path, initialise=True)  # initialise starts over on empty files only
    assert path.read_bytes() == before  # not even the journal mode was switched


def test_a_stale_write_ahead_log_stops_a_new_ledger_being_made_under_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    (tmp_path / "ledger.db-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(60))
    with pytest.raises(LedgerError, match="write-ahead log") as refused:
        Ledger(path)
    _one_line_naming(refused.value, path)
    assert not path.exists()


def test_a_ledger_in_a_missing_directory_or_at_a_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "ledger.db"
    with pytest.raises(LedgerError, match="does not exist") as refused:
        Ledger(missing)
    _one_line_naming(refused.value, missing)
    for opening in (Ledger, Ledger.open_readonly):
        with pytest.raises(LedgerError, match="is a directory") as refused:
            opening(tmp_path)
        _one_line_naming(refused.value, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_max_pages_must_be_a_positive_int(tmp_path: Path) -> None:
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ConfigurationError, match="max_pages"):
            Ledger(tmp_path / "ledger.db", max_pages=bad)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- readers


def test_a_reader_reads_while_the_writer_writes_and_neither_locks_nor_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as writer:
        _start(writer, 1)
        _complete(writer, 1)
        _start(writer, 2)  # committed to the write-ahead log, not yet to the file
        with Ledger.open_readonly(path) as reader:
            assert reader.read_only and "read-only" in repr(reader)
            assert [(r.round_id, r.outcome) for r in reader.rounds()] == [
                (1, RoundOutcome.COMPLETED),
                (2, RoundOutcome.RUNNING),
            ]
            assert reader.aggregate(1).tobytes() == _aggregate(1).tobytes()
            writer.record_drop(2, 5, "share", "missed-share")  # the writer is not held up
            assert reader.round(2).drops == (DropRecord(5, "share", "missed-share", ""),)
            assert reader.next_round_id() == 3
    # A reader opened with no writer around takes no lock: a writer starts beside it.
    with Ledger.open_readonly(path) as reader, Ledger(path) as writer:
        assert writer.recover() == [2]
        assert reader.round(2).outcome is RoundOutcome.ABORTED


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


def test_a_reader_creates_nothing_and_refuses_a_missing_file_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "ledger.db"
    with pytest.raises(LedgerError, match="does not exist") as refused:
        Ledger.open_readonly(missing)
    _one_line_naming(refused.value, missing)
    assert list(tmp_path.iterdir()) == []


def test_a_reader_works_on_a_read_only_file_in_a_read_only_directory(tmp_path: Path) -> None:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    path = shelf / "ledger.db"
    with Ledger(path) as writer:
        _start(writer, 1)
        _complete(writer, 1)
        _start(writer, 2)
    listing = sorted(p.name for p in shelf.iterdir())
    assert listing == ["ledger.db", "ledger.db.lock"]  # no log: the coordinator is gone
    path.chmod(0o444)
    shelf.chmod(0o555)
    try:
        results = _as_unprivileged(
            """
            reader = Ledger.open_readonly(sys.argv[1])
            attempt("rounds", lambda: [(r.round_id, r.outcome.value) for r in reader.rounds()])
            attempt("aggregate", lambda: reader.aggregate(1).tolist())
            attempt("touch", lambda: Path(sys.argv[1]).with_name("probe").touch())
            """,
            path,
        )
    finally:
        shelf.chmod(0o755)
    assert results["touch"][0] == "PermissionError"  # the child really could not write here
    assert results["rounds"] == ("ok", "[(1, 'completed'), (2, 'running')]")
    assert results["aggregate"] == ("ok", str(_aggregate(1).tolist()))
    assert sorted(p.name for p in shelf.iterdir()) == listing


def test_a_reader_in_a_read_only_directory_sees_a_running_coordinators_log(
    tmp_path: Path,
) -> None:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    path = shelf / "ledger.db"
    with Ledger(path) as writer:
        _start(writer, 1)
        _complete(writer, 1)
        _start(writer, 2)  # in the log only, while the coordinator runs
        shelf.chmod(0o555)
        try:
            results = _as_unprivileged(
                """
                reader = Ledger.open_readonly(sys.argv[1])
                attempt("rounds", lambda: [(r.round_id, r.outcome.value) for r in reader.rounds()])
                attempt("writer", lambda: Ledger(sys.argv[1]))
                """,
                path,
            )
        finally:
            shelf.chmod(0o755)
        assert results["rounds"] == ("ok", "[(1, 'completed'), (2, 'running')]")
        assert results["writer"][0] == "LedgerError"  # it is the coordinator's, locked
        _complete(writer, 2)  # the coordinator carries on


def test_a_reader_of_a_read_only_directory_notices_a_checkpoint_under_its_reads(
    tmp_path: Path,
) -> None:
    # Without a log beside it, such a reader reads the file's bytes directly; a coordinator
    # started meanwhile by someone allowed to write there could rewrite them under it.
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    path = shelf / "ledger.db"
    with Ledger(path) as writer:
        _start(writer, 1)
    shelf.chmod(0o555)
    try:
        child = _unprivileged(
            """
            reader = Ledger.open_readonly(sys.argv[1])
            attempt("before", lambda: len(reader.rounds()))
            sys.stdout.flush()
            sys.stdin.readline()
            attempt("after", lambda: len(reader.rounds()))
            """,
            path,
        )
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "before\tok\t1\n", _last_words(child)
        if os.geteuid() != 0:
            shelf.chmod(0o755)  # the writer's permission; root has it anyway
        with Ledger(path) as writer:
            _start(writer, 2)  # checkpointed into the file when the writer closes
        stdout, stderr = child.communicate("\n", timeout=60)
    finally:
        shelf.chmod(0o755)
    outcome, message = _attempts(stdout)["after"]
    assert (outcome, message) == (
        "LedgerError",
        f"round ledger {path} changed while it was being read: run this again",
    ), stderr


def test_a_reader_in_a_read_only_directory_refuses_a_log_it_cannot_read(tmp_path: Path) -> None:
    # A crash image whose shared-memory file is gone: SQLite would need to rebuild it beside
    # the log, and reading the file alone would silently miss the rounds in the log.
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    path = shelf / "ledger.db"
    with Ledger(path) as writer:
        _start(writer, 1)
        _start(writer, 2)
        for name in ("ledger.db", "ledger.db-wal"):
            (tmp_path / name).write_bytes((shelf / name).read_bytes())
    for name in ("ledger.db", "ledger.db-wal"):  # the writer has gone, taking its files
        (shelf / name).write_bytes((tmp_path / name).read_bytes())
    assert sorted(p.name for p in shelf.iterdir()) == [
        "ledger.db",
        "ledger.db-wal",
        "ledger.db.lock",
    ]
    shelf.chmod(0o555)
    try:
        results = _as_unprivileged(
            'attempt("open", lambda: Ledger.open_readonly(sys.argv[1]))', path
        )
    finally:
        shelf.chmod(0o755)
    assert results["open"][0] == "LedgerError"
    assert "write-ahead log needs a writable directory" in results["open"][1]
    with Ledger.open_readonly(path) as reader:  # once it may, it sees every round
        assert [r.round_id for r in reader.rounds()] == [1, 2]


def test_without_permission_every_opening_fails_in_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "unreadable.db"
    frozen = tmp_path / "frozen.db"
    for path in (secret, frozen):
        with Ledger(path) as writer:
            _start(writer, 1)
    secret.chmod(0o000)
    frozen.chmod(0o444)
    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    locked_dir.chmod(0o555)
    try:
        results = _as_unprivileged(
            """
            secret, frozen, locked_dir = map(Path, sys.argv[1:])
            attempt("read unreadable", lambda: Ledger.open_readonly(secret))
            attempt("write unreadable", lambda: Ledger(secret))
            attempt("write read-only file", lambda: Ledger(frozen))
            attempt("read read-only file", lambda: Ledger.open_readonly(frozen).round(1).outcome)
            attempt("create in read-only dir", lambda: Ledger(locked_dir / "new.db"))
            """,
            secret,
            frozen,
            locked_dir,
        )
    finally:
        locked_dir.chmod(0o755)
    assert results["read unreadable"] == (
        "LedgerError",
        f"cannot read the round ledger {secret}: permission denied",
    )
    assert results["write unreadable"][0] == "LedgerError"
    assert "permission denied" in results["write unreadable"][1]
    assert results["write read-only file"][0] == "LedgerError"
    assert "readonly" in results["write read-only file"][1]
    assert results["read read-only file"] == ("ok", "running")
    assert results["create in read-only dir"][0] == "LedgerError"
    assert str(locked_dir / "new.db") in results["create in read-only dir"][1]
    assert list(locked_dir.iterdir()) == []


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


# ----------------------------------------------------------------- bad ids and rows


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


@pytest.mark.parametrize(
    ("column", "value"), [("outcome", "bogus"), ("session_id", b"short"), ("task_hash", 7)]
)
def test_a_corrupt_row_is_a_decode_error_naming_the_round(
    tmp_path: Path, column: str, value: object
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _start(ledger, 1)
    with _raw(path) as raw:
        raw.execute("PRAGMA ignore_check_constraints = ON")  # what a damaged page looks like
        raw.execute(f"UPDATE rounds SET {column} = ? WHERE round_id = 1", (value,))
    with (
        Ledger.open_readonly(path) as reader,
        pytest.raises(DecodeError, match="round 1 in the ledger is corrupt"),
    ):
        reader.rounds()


# ----------------------------------------------------------------- exporting


def test_the_ledger_core_does_not_need_the_clis_presentation_library() -> None:
    probe = "import sys, secagg.service.ledger; print('rich' in sys.modules)"
    child = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout.strip() == "False", child.stderr


# ----------------------------------------------------------------- distributed DP


def _plan(epsilon: float = 8.0) -> DpPlan:
    pytest.importorskip("dp_accounting")
    return calibrate(
        DpConfig(
            dim=DIM, l2_clip=1.0, bits=20, min_clients=3, max_clients=len(COHORT),
            delta=1e-5, target_epsilon=epsilon, rounds=4,
        )
    )  # fmt: skip


def _complete_dp(ledger: Ledger, round_id: int, plan: DpPlan, included: tuple[int, ...]) -> None:
    _start(ledger, round_id)
    ledger.complete_round(
        round_id,
        included=included,
        aggregate=_aggregate(round_id),
        total_weight=len(included),
        upload_bytes_per_client=100.0,
        download_bytes_per_client=50.0,
        privacy=account_round(ledger, plan, len(included)),
    )


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


def test_a_privacy_record_is_as_final_as_its_round(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _complete_dp(ledger, 1, _plan(), COHORT)
    with _raw(path) as raw, pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
        raw.execute("UPDATE dp_rounds SET epsilon_spent = 0 WHERE round_id = 1")


def test_a_privacy_record_that_spends_less_than_its_own_round_is_refused() -> None:
    with pytest.raises(UsageError, match="below the round's"):
        RoundPrivacy(bytes(32), "skellam", 1e-5, 2.0, 1.0, 8.0, 4)
    with pytest.raises(UsageError, match="delta"):
        RoundPrivacy(bytes(32), "skellam", 1.5, 1.0, 1.0, 8.0, 4)


def test_a_corrupt_privacy_record_is_a_decode_error_naming_the_round(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _complete_dp(ledger, 1, _plan(), COHORT)
    with _raw(path) as raw:
        # What a damaged page looks like: past the CHECK constraints and the trigger.
        (trigger,) = raw.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'privacy_records_are_final'"
        ).fetchone()
        raw.execute("PRAGMA ignore_check_constraints = ON")
        raw.execute("DROP TRIGGER privacy_records_are_final")
        raw.execute("UPDATE dp_rounds SET series = ? WHERE round_id = 1", (b"short",))
        raw.execute(trigger)
    with (
        Ledger.open_readonly(path) as reader,
        pytest.raises(DecodeError, match="round 1 in the ledger is corrupt"),
    ):
        reader.rounds()


def _version_1(path: Path) -> None:
    """A ledger as secagg wrote it before distributed DP (schema version 1): the same
    tables, without the DP ones, and one completed round in it."""
    with Ledger(path) as ledger:
        _start(ledger, 1)
        _complete(ledger, 1)
    with _raw(path) as raw:
        raw.execute("DROP TRIGGER privacy_records_are_final")
        raw.execute("DROP TABLE dp_rounds")
        raw.execute("UPDATE schema_version SET version = 1")


def test_a_version_1_ledger_is_read_as_it_is_and_upgraded_whole_by_the_writer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    _version_1(path)
    before = path.read_bytes()
    with Ledger.open_readonly(path) as reader:  # a reader changes nothing
        assert reader.schema_version == 1
        (old,) = reader.rounds()
        assert old.outcome is RoundOutcome.COMPLETED and old.privacy is None
        assert reader.dp_inputs(bytes(32)) == []
    assert path.read_bytes() == before
    with Ledger(path) as writer:  # the writer upgrades, keeping every round as it was
        assert writer.schema_version == SCHEMA_VERSION
        assert writer.rounds() == [old]
        np.testing.assert_array_equal(writer.aggregate(1), _aggregate(1))
        _complete_dp(writer, 2, _plan(), COHORT)
    with _raw(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    with Ledger.open_readonly(path) as reader:
        assert [r.privacy is not None for r in reader.rounds()] == [False, True]
