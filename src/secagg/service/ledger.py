"""The round ledger: every round the coordinator ran, durably, in one SQLite file.

For each round the ledger keeps its public configuration (session id, task hash, protocol,
cohort, degree, threshold, dimension), when it started and ended, how long each stage took,
which clients were dropped at which stage and why, its outcome, and, for a completed round
only, the final aggregate and the total weight behind it. A round is written when it starts,
so that a coordinator killed mid-round leaves a ``running`` row behind; ``recover()`` turns
such rows into aborted rounds at the next start. A completed round's aggregate is committed
(``synchronous=FULL``: fsynced) before ``complete_round`` returns, and so before anyone is
told that the round completed.

No secret (key, seed, share) and no individual update, masked or not, is ever stored: no
method takes one. The only vector in the file is the aggregate of a completed round, which
the protocol reveals anyway; the only other blobs are the two public 32-byte hashes.

Every write method commits its own transaction; all SQL is parameterised.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
import os
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, SupportsIndex

import numpy as np
from numpy.typing import NDArray
from rich.table import Table
from rich.text import Text

from secagg.errors import ConfigurationError, DecodeError, UsageError

__all__ = [
    "RECOVERED_REASON",
    "SCHEMA_VERSION",
    "DropRecord",
    "Ledger",
    "RoundOutcome",
    "RoundRecord",
    "export_aggregate",
    "format_rounds_table",
]

SCHEMA_VERSION = 1
RECOVERED_REASON = "coordinator restarted mid-round"
HASH_BYTES = 32
_MAX_SQLITE_INT = 2**63 - 1


class RoundOutcome(StrEnum):
    """Where a round stands: running until it completes or aborts; then final."""

    RUNNING = "running"
    COMPLETED = "completed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class DropRecord:
    """One client the server stopped waiting for: at which stage, why, and any detail."""

    client_id: int
    stage: str
    reason: str
    detail: str


@dataclass(frozen=True)
class RoundRecord:
    """One round as the ledger holds it. ``cohort`` and ``included`` are in ascending order."""

    round_id: int
    session_id: bytes
    task_hash: bytes
    protocol: str
    cohort: tuple[int, ...]
    degree: int
    threshold: int
    dim: int
    started_at: float
    finished_at: float | None
    outcome: RoundOutcome
    abort_reason: str | None
    included: tuple[int, ...]
    # A read-only mapping, in the order the stages were recorded; left out of the hash so
    # that records stay hashable like every other frozen dataclass.
    stage_seconds: Mapping[str, float] = field(hash=False)
    drops: tuple[DropRecord, ...]
    upload_bytes_per_client: float | None
    download_bytes_per_client: float | None
    has_aggregate: bool
    total_weight: int | None = None  # the weight behind the aggregate (completed rounds only)


# Cohort and included ids live in a child table rather than as JSON text: the primary key
# makes a repeated id impossible, "included" becomes a flag on a cohort member so an included
# client outside the cohort cannot even be written, and every column stays a scalar, which
# keeps the "only vector in the file is the aggregate" property checkable from the schema.
# The aggregate has its own table so that listing rounds never reads the blobs.
_SCHEMA = (
    """
    CREATE TABLE schema_version (
        version INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE rounds (
        round_id INTEGER PRIMARY KEY CHECK (round_id >= 1),
        session_id BLOB NOT NULL CHECK (length(session_id) = 32),
        task_hash BLOB NOT NULL CHECK (length(task_hash) = 32),
        protocol TEXT NOT NULL,
        degree INTEGER NOT NULL,
        threshold INTEGER NOT NULL,
        dim INTEGER NOT NULL CHECK (dim >= 1),
        started_at REAL NOT NULL,
        finished_at REAL,
        outcome TEXT NOT NULL CHECK (outcome IN ('running', 'completed', 'aborted')),
        abort_reason TEXT,
        upload_bytes_per_client REAL,
        download_bytes_per_client REAL,
        CHECK ((outcome = 'running') = (finished_at IS NULL)),
        CHECK ((outcome = 'aborted') = (abort_reason IS NOT NULL)),
        CHECK ((outcome = 'completed') = (upload_bytes_per_client IS NOT NULL))
    )
    """,
    # Once a round has ended its row is history: refuse any later change, so that a bug
    # elsewhere cannot rewrite a completed round.
    """
    CREATE TRIGGER finished_rounds_are_final BEFORE UPDATE ON rounds
    WHEN OLD.outcome <> 'running'
    BEGIN
        SELECT RAISE(ABORT, 'a finished round cannot be changed');
    END
    """,
    """
    CREATE TABLE cohort (
        round_id INTEGER NOT NULL REFERENCES rounds (round_id),
        client_id INTEGER NOT NULL CHECK (client_id >= 0),
        included INTEGER NOT NULL DEFAULT 0 CHECK (included IN (0, 1)),
        PRIMARY KEY (round_id, client_id)
    ) WITHOUT ROWID
    """,
    # The implicit rowid (never reused: nothing is ever deleted) keeps the recording order.
    """
    CREATE TABLE stage_timings (
        round_id INTEGER NOT NULL REFERENCES rounds (round_id),
        stage TEXT NOT NULL,
        seconds REAL NOT NULL CHECK (seconds >= 0),
        PRIMARY KEY (round_id, stage)
    )
    """,
    """
    CREATE TABLE drops (
        drop_id INTEGER PRIMARY KEY,
        round_id INTEGER NOT NULL REFERENCES rounds (round_id),
        client_id INTEGER NOT NULL,
        stage TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    )
    """,
    "CREATE INDEX drops_by_round ON drops (round_id)",
    # SQLite does not checksum its pages; the digest turns silent corruption of the one
    # number that matters into a DecodeError instead of a wrong model.
    """
    CREATE TABLE aggregates (
        round_id INTEGER PRIMARY KEY REFERENCES rounds (round_id),
        length INTEGER NOT NULL CHECK (length >= 1),
        total_weight INTEGER NOT NULL CHECK (total_weight >= 0),
        sha256 BLOB NOT NULL,
        data BLOB NOT NULL
    )
    """,
)

_ROUND_COLUMNS = """
    SELECT r.round_id, r.session_id, r.task_hash, r.protocol, r.degree, r.threshold, r.dim,
           r.started_at, r.finished_at, r.outcome, r.abort_reason,
           r.upload_bytes_per_client, r.download_bytes_per_client,
           a.round_id IS NOT NULL, a.total_weight
    FROM rounds AS r LEFT JOIN aggregates AS a ON a.round_id = r.round_id
"""
# Two fixed variants of each query (every round, or one round); the id is always a parameter.
_QUERIES: dict[bool, tuple[str, str, str, str]] = {
    False: (
        _ROUND_COLUMNS + " ORDER BY r.round_id",
        "SELECT round_id, client_id, included FROM cohort ORDER BY round_id, client_id",
        "SELECT round_id, stage, seconds FROM stage_timings ORDER BY rowid",
        "SELECT round_id, client_id, stage, reason, detail FROM drops ORDER BY drop_id",
    ),
    True: (
        _ROUND_COLUMNS + " WHERE r.round_id = ?",
        "SELECT round_id, client_id, included FROM cohort WHERE round_id = ? ORDER BY client_id",
        "SELECT round_id, stage, seconds FROM stage_timings WHERE round_id = ? ORDER BY rowid",
        "SELECT round_id, client_id, stage, reason, detail FROM drops WHERE round_id = ?"
        " ORDER BY drop_id",
    ),
}


class Ledger:
    """The durable record of rounds, in one SQLite file (``":memory:"`` for tests).

    Opening creates the schema in a new file and refuses a file written by a newer secagg
    (or one that is not a ledger) with ``ConfigurationError``. Call ``recover()`` once when
    the coordinator starts. The ledger may be shared between threads: one lock serialises
    its use of the connection.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = str(path)
        self._clock = clock
        self._lock = threading.RLock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is
            # exactly one method call and nothing is left open between calls.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the round ledger {self._path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            # WAL lets `secagg rounds` read while the coordinator writes; synchronous=FULL
            # fsyncs the log at every commit, so a committed round survives a power cut.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._ensure_schema()
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._conn = None
            raise ConfigurationError(f"{self._path} is not a usable round ledger: {exc}") from exc
        except BaseException:
            conn.close()
            self._conn = None
            raise

    def _ensure_schema(self) -> None:
        with self._write() as conn:
            tables = {
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = ?", ("table",)
                )
            }
            if "schema_version" not in tables:
                if tables:
                    raise ConfigurationError(
                        f"{self._path} is a SQLite database but not a secagg round ledger"
                    )
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
            if len(rows) != 1 or not isinstance(rows[0][0], int):
                raise ConfigurationError(f"{self._path}: the ledger's schema version is unreadable")
            version = rows[0][0]
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self._path} has ledger schema version {version}, newer than this secagg "
                    f"understands ({SCHEMA_VERSION}): upgrade secagg to read it"
                )
            if version != SCHEMA_VERSION:
                raise ConfigurationError(f"{self._path}: unknown ledger schema version {version}")

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the file (idempotent). Every write has already been committed."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"Ledger({self._path!r}, {state})"

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise UsageError("the round ledger is closed")
            conn.execute(begin)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full, I/O error): nothing half-written
                # stays pending, and the caller sees the error, so it never reports success.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: the state checks a write method makes
        # (is the round still running?) cannot be invalidated before its update lands.
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        # One read transaction per call: a record is assembled from one consistent snapshot
        # even while another process (the coordinator) writes.
        return self._transaction("BEGIN")

    # ----------------------------------------------------------------- writing
    def recover(self) -> list[int]:
        """Abort every round left running by a coordinator that died; return their ids."""
        now = self._clock()
        with self._write() as conn:
            ids = [
                round_id
                for (round_id,) in conn.execute(
                    "SELECT round_id FROM rounds WHERE outcome = ? ORDER BY round_id",
                    (RoundOutcome.RUNNING.value,),
                )
            ]
            conn.execute(
                "UPDATE rounds SET outcome = ?, abort_reason = ?, finished_at = ?"
                " WHERE outcome = ?",
                (RoundOutcome.ABORTED.value, RECOVERED_REASON, now, RoundOutcome.RUNNING.value),
            )
        return ids

    def next_round_id(self) -> int:
        """One more than the largest round id ever recorded: ids never repeat, even aborted."""
        with self._read() as conn:
            (largest,) = conn.execute("SELECT COALESCE(MAX(round_id), 0) FROM rounds").fetchone()
        return int(largest) + 1

    def start_round(
        self,
        *,
        round_id: int,
        session_id: bytes,
        task_hash: bytes,
        protocol: str,
        cohort: Sequence[int],
        degree: int,
        threshold: int,
        dim: int,
    ) -> None:
        """Record a new round as running, before its first message goes out."""
        round_id = _int(round_id, "round id", minimum=1)
        session_id = _hash(session_id, "session id")
        task_hash = _hash(task_hash, "task hash")
        protocol = _text(protocol, "protocol")
        members = [_int(c, "client id") for c in cohort]
        if not members:
            raise UsageError("a round needs a non-empty cohort")
        if len(set(members)) != len(members):
            raise UsageError("the cohort lists a client id twice")
        degree = _int(degree, "degree")
        threshold = _int(threshold, "threshold", minimum=1)
        dim = _int(dim, "dim", minimum=1)
        if threshold > len(members):
            raise UsageError(f"threshold {threshold} exceeds the cohort of {len(members)}")
        now = self._clock()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM rounds WHERE round_id = ?", (round_id,)).fetchone():
                raise UsageError(f"round {round_id} already exists in the ledger")
            conn.execute(
                "INSERT INTO rounds (round_id, session_id, task_hash, protocol, degree, threshold,"
                " dim, started_at, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    round_id,
                    session_id,
                    task_hash,
                    protocol,
                    degree,
                    threshold,
                    dim,
                    now,
                    RoundOutcome.RUNNING.value,
                ),
            )
            conn.executemany(
                "INSERT INTO cohort (round_id, client_id) VALUES (?, ?)",
                [(round_id, c) for c in members],
            )

    def record_stage(self, round_id: int, stage: str, seconds: float) -> None:
        """Record how long one stage of a running round took (once per stage)."""
        stage = _text(stage, "stage")
        seconds = _amount(seconds, "stage seconds")
        with self._write() as conn:
            _require_running(conn, round_id)
            if conn.execute(
                "SELECT 1 FROM stage_timings WHERE round_id = ? AND stage = ?", (round_id, stage)
            ).fetchone():
                # Overwriting would silently lose a measurement; a second timing is our bug.
                raise UsageError(f"round {round_id}: stage {stage!r} was already timed")
            conn.execute(
                "INSERT INTO stage_timings (round_id, stage, seconds) VALUES (?, ?, ?)",
                (round_id, stage, seconds),
            )

    def record_drop(
        self, round_id: int, client_id: int, stage: str, reason: str, detail: str = ""
    ) -> None:
        """Record that a client was dropped from a running round, at which stage and why.

        The client need not be in the cohort: a message from an unknown client is a drop too.
        """
        client_id = _int(client_id, "client id")
        stage = _text(stage, "stage")
        reason = _text(reason, "drop reason")
        if not isinstance(detail, str):
            raise UsageError("a drop's detail must be a str")
        with self._write() as conn:
            _require_running(conn, round_id)
            conn.execute(
                "INSERT INTO drops (round_id, client_id, stage, reason, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (round_id, client_id, stage, reason, str(detail)),
            )

    def complete_round(
        self,
        round_id: int,
        *,
        included: Sequence[int],
        aggregate: NDArray[np.floating[Any]],
        total_weight: int,
        upload_bytes_per_client: float,
        download_bytes_per_client: float,
    ) -> None:
        """Record a round as completed with its aggregate; durable once this returns."""
        members = [_int(c, "client id") for c in included]
        if len(set(members)) != len(members):
            raise UsageError("the included clients list an id twice")
        values = np.asarray(aggregate)
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.floating):
            raise UsageError(f"the aggregate must be a 1-D float array, got {values.dtype}")
        # float64 little-endian whatever the host: the file moves between machines, and a
        # float32 aggregate widens exactly.
        data = values.astype("<f8").tobytes()
        total_weight = _int(total_weight, "total weight")
        up = _amount(upload_bytes_per_client, "upload bytes per client")
        down = _amount(download_bytes_per_client, "download bytes per client")
        now = self._clock()
        with self._write() as conn:
            _require_running(conn, round_id)
            threshold, dim = conn.execute(
                "SELECT threshold, dim FROM rounds WHERE round_id = ?", (round_id,)
            ).fetchone()
            if values.size != dim:
                raise UsageError(f"round {round_id}: aggregate of {values.size} values, dim {dim}")
            cohort = {
                c
                for (c,) in conn.execute(
                    "SELECT client_id FROM cohort WHERE round_id = ?", (round_id,)
                )
            }
            outsiders = sorted(set(members) - cohort)
            if outsiders:
                raise UsageError(f"round {round_id}: included clients {outsiders} not in cohort")
            # A round that ends with fewer than t inputs broke the protocol's promise; the
            # ledger refuses to certify it rather than store an aggregate of too few.
            if len(members) < threshold:
                raise UsageError(
                    f"round {round_id}: {len(members)} included, below the threshold {threshold}"
                )
            conn.execute(
                "UPDATE rounds SET outcome = ?, finished_at = ?, upload_bytes_per_client = ?,"
                " download_bytes_per_client = ? WHERE round_id = ?",
                (RoundOutcome.COMPLETED.value, now, up, down, round_id),
            )
            conn.executemany(
                "UPDATE cohort SET included = 1 WHERE round_id = ? AND client_id = ?",
                [(round_id, c) for c in members],
            )
            conn.execute(
                "INSERT INTO aggregates (round_id, length, total_weight, sha256, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (round_id, values.size, total_weight, hashlib.sha256(data).digest(), data),
            )

    def abort_round(self, round_id: int, reason: str) -> None:
        """Record a running round as aborted, with a human-readable reason (no aggregate)."""
        reason = _text(reason, "abort reason")
        now = self._clock()
        with self._write() as conn:
            _require_running(conn, round_id)
            conn.execute(
                "UPDATE rounds SET outcome = ?, abort_reason = ?, finished_at = ?"
                " WHERE round_id = ?",
                (RoundOutcome.ABORTED.value, reason, now, round_id),
            )

    # ----------------------------------------------------------------- reading
    def rounds(self) -> list[RoundRecord]:
        """Every round, ordered by round id."""
        with self._read() as conn:
            return _load(conn, None)

    def round(self, round_id: int) -> RoundRecord:
        """One round; ``UsageError`` if the ledger has no such round."""
        with self._read() as conn:
            records = _load(conn, round_id)
        if not records:
            raise UsageError(f"no round {round_id}")
        return records[0]

    def latest_completed(self) -> RoundRecord | None:
        """The completed round with the largest id, if any."""
        with self._read() as conn:
            (latest,) = conn.execute(
                "SELECT MAX(round_id) FROM rounds WHERE outcome = ?",
                (RoundOutcome.COMPLETED.value,),
            ).fetchone()
            if latest is None:
                return None
            return _load(conn, latest)[0]

    def aggregate(self, round_id: int) -> NDArray[np.float64]:
        """The stored aggregate of a completed round, exactly as it was committed.

        ``UsageError`` if the round is unknown or did not complete; ``DecodeError`` if what
        is stored is not the aggregate that was written (wrong length or digest).
        """
        with self._read() as conn:
            row = conn.execute(
                "SELECT r.outcome, r.dim, a.round_id IS NOT NULL, a.length, a.sha256, a.data"
                " FROM rounds AS r LEFT JOIN aggregates AS a ON a.round_id = r.round_id"
                " WHERE r.round_id = ?",
                (round_id,),
            ).fetchone()
        if row is None:
            raise UsageError(f"no round {round_id}")
        outcome, dim, present, length, digest, data = row
        if outcome != RoundOutcome.COMPLETED.value:
            raise UsageError(f"round {round_id} did not complete ({outcome}): it has no aggregate")
        if not present:
            raise DecodeError(f"round {round_id} completed but its aggregate is missing")
        if not isinstance(data, bytes) or length != dim or len(data) != 8 * dim:
            size = len(data) if isinstance(data, bytes | str) else None
            raise DecodeError(
                f"round {round_id}: stored aggregate of {size} bytes, expected {dim} float64"
            )
        if hashlib.sha256(data).digest() != digest:
            raise DecodeError(f"round {round_id}: stored aggregate does not match its digest")
        return np.frombuffer(data, dtype="<f8").astype(np.float64)


def _require_running(conn: sqlite3.Connection, round_id: int) -> None:
    row = conn.execute("SELECT outcome FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
    if row is None:
        raise UsageError(f"no round {round_id}")
    if row[0] != RoundOutcome.RUNNING.value:
        raise UsageError(f"round {round_id} has already ended ({row[0]})")


def _load(conn: sqlite3.Connection, round_id: int | None) -> list[RoundRecord]:
    # Four queries in all, however many rounds, rather than four per round.
    one = round_id is not None
    params: tuple[int, ...] = (round_id,) if round_id is not None else ()
    rounds_sql, cohort_sql, stages_sql, drops_sql = _QUERIES[one]
    rows = conn.execute(rounds_sql, params).fetchall()
    if not rows:
        return []
    cohorts: dict[int, list[int]] = {}
    included: dict[int, list[int]] = {}
    for rid, client, flag in conn.execute(cohort_sql, params):
        cohorts.setdefault(rid, []).append(client)
        if flag:
            included.setdefault(rid, []).append(client)
    stages: dict[int, dict[str, float]] = {}
    for rid, stage, seconds in conn.execute(stages_sql, params):
        stages.setdefault(rid, {})[stage] = seconds
    drops: dict[int, list[DropRecord]] = {}
    for rid, client, stage, reason, detail in conn.execute(drops_sql, params):
        drops.setdefault(rid, []).append(DropRecord(client, stage, reason, detail))
    records = []
    for (
        rid,
        session_id,
        task_hash,
        protocol,
        degree,
        threshold,
        dim,
        started_at,
        finished_at,
        outcome,
        abort_reason,
        up,
        down,
        has_aggregate,
        total_weight,
    ) in rows:
        records.append(
            RoundRecord(
                round_id=rid,
                session_id=bytes(session_id),
                task_hash=bytes(task_hash),
                protocol=protocol,
                cohort=tuple(cohorts.get(rid, ())),
                degree=degree,
                threshold=threshold,
                dim=dim,
                started_at=started_at,
                finished_at=finished_at,
                outcome=RoundOutcome(outcome),
                abort_reason=abort_reason,
                included=tuple(included.get(rid, ())),
                stage_seconds=MappingProxyType(stages.get(rid, {})),
                drops=tuple(drops.get(rid, ())),
                upload_bytes_per_client=up,
                download_bytes_per_client=down,
                has_aggregate=bool(has_aggregate),
                total_weight=total_weight,
            )
        )
    return records


# ----------------------------------------------------------------- argument checks
def _int(value: object, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{what} must be an int, got {value!r}")
    # SupportsIndex: Python and numpy integers, never a float that happens to be whole.
    if not isinstance(value, SupportsIndex):
        raise UsageError(f"{what} must be an int, got {type(value).__name__}")
    number = operator.index(value)
    if not minimum <= number <= _MAX_SQLITE_INT:
        raise UsageError(f"{what} must be in [{minimum}, 2**63), got {number}")
    return number


def _amount(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise UsageError(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise UsageError(f"{what} must be finite and non-negative, got {number}")
    return number


def _hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise UsageError(f"{what} must be {HASH_BYTES} bytes")
    return value


def _text(value: object, what: str) -> str:
    # str() of a StrEnum (Stage, DropReason) is its value: store the plain string.
    if not isinstance(value, str) or not value:
        raise UsageError(f"{what} must be a non-empty str")
    return str(value)


# ----------------------------------------------------------------- for the CLI
_OUTCOME_STYLE = {
    RoundOutcome.RUNNING: "yellow",
    RoundOutcome.COMPLETED: "green",
    RoundOutcome.ABORTED: "red",
}


def format_rounds_table(records: Sequence[RoundRecord]) -> Table:
    """The ledger as a table for ``secagg rounds``: one row per round."""
    table = Table(title="secagg rounds")
    table.add_column("round", justify="right")
    table.add_column("outcome")
    table.add_column("cohort size", justify="right")
    table.add_column("included", justify="right")
    table.add_column("dropped")
    table.add_column("seconds", justify="right")
    table.add_column("up B/client", justify="right")
    table.add_column("reason", overflow="fold")
    for r in records:
        # Drops are recorded as they happen, so first appearance is the protocol's order.
        by_stage = Counter(d.stage for d in r.drops)
        dropped = ", ".join(f"{stage} {n}" for stage, n in by_stage.items()) or "-"
        table.add_row(
            str(r.round_id),
            Text(r.outcome.value, style=_OUTCOME_STYLE[r.outcome]),
            str(len(r.cohort)),
            str(len(r.included)) if r.outcome is RoundOutcome.COMPLETED else "-",
            dropped,
            f"{sum(r.stage_seconds.values()):.2f}" if r.stage_seconds else "-",
            "-" if r.upload_bytes_per_client is None else f"{r.upload_bytes_per_client:,.0f}",
            r.abort_reason or "",
        )
    return table


def export_aggregate(ledger: Ledger, round_id: int, path: Path) -> None:
    """Write a completed round's aggregate to ``path`` as a float32 ``.npy`` file.

    Written beside the target and renamed into place, so ``path`` never holds half a file.
    """
    values = ledger.aggregate(round_id).astype(np.float32)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # A file object, not a name: np.save would append ".npy" to a name without it.
            np.save(f, values, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
