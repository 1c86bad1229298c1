"""The ledger's file: one writer at a time, a new ledger made whole, nothing that is not a
ledger ever opened as one, and readers wherever they can read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from secagg.errors import LedgerError
from secagg.ledger import LOCK_SUFFIX, RECOVERED_REASON, DropRecord, Ledger
from secagg.protocol.runner import RoundOutcome
from tests.ledger.helpers import (
    SRC,
    _aggregate,
    _as_unprivileged,
    _attempts,
    _complete,
    _one_line_naming,
    _raw,
    _start,
    _unprivileged,
)

# A coordinator in a process of its own: it starts round 1 and waits for a line on stdin,
# then completes round 1, starts round 2 and waits again.
HOLDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from secagg.ledger import Ledger
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
