"""The round ledger's storage API: ``Ledger``, every round the coordinator ran, written as it
happens and read back as ``LedgerRound``s.

A round is written when it starts, so that a coordinator killed mid-round leaves a
``running`` row behind; ``recover()`` turns such rows into aborted rounds at the next start. A
completed round's aggregate is committed (``synchronous=FULL``: fsynced) before
``complete_round`` returns, and so before anyone is told that the round completed. Every
write method commits its own transaction, and a write that fails is rolled back whole, so the
ledger stays as it was before the call; all SQL is parameterised. Opening the file (the
writer's lock, creation, upgrade, the reader's modes) is ``secagg.ledger.files``; decoding
what is read, ``secagg.ledger.rows``.

What the file, the disk or another program refuses is a ``LedgerError`` naming the file, in
one line; ``UsageError`` is our own code calling the ledger wrongly.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, SupportsIndex

import numpy as np
from numpy.typing import NDArray

from secagg.dp.calibrate import DpPlan
from secagg.dp.round_privacy import RoundPrivacy, dp_series, round_privacy
from secagg.errors import ConfigurationError, LedgerError, UsageError
from secagg.ledger.files import (
    FileState,
    configure_writer,
    connect,
    file_state,
    open_reader,
    open_writer,
    resolve,
    take_lock,
)
from secagg.ledger.rows import (
    HASH_BYTES,
    PRIVACY_COLUMNS,
    ROUND_COLUMNS,
    SESSION_COLUMNS,
    DropRecord,
    LedgerRound,
    decode_aggregate,
    decode_round,
)
from secagg.ledger.schema import (
    PRIVACY_VERSION,
    SCHEMA_VERSION,
    SESSION_VERSION,
    create_schema,
)
from secagg.protocol.runner import RoundOutcome

__all__ = ["RECOVERED_REASON", "Ledger", "account_round"]

RECOVERED_REASON = "coordinator restarted mid-round"
_MAX_SQLITE_INT = 2**63 - 1

_ROUNDS_JOINED = "FROM rounds AS r LEFT JOIN aggregates AS a ON a.round_id = r.round_id"
_PRIVACY_JOINED = " LEFT JOIN dp_rounds AS d ON d.round_id = r.round_id"
_SESSION_JOINED = " LEFT JOIN session_rounds AS s ON s.round_id = r.round_id"


def _rounds_query(version: int) -> str:
    """The rounds query of a schema version: what it has no table for reads as NULL."""
    privacy = version >= PRIVACY_VERSION
    session = version >= SESSION_VERSION
    columns = (
        ROUND_COLUMNS
        + (PRIVACY_COLUMNS if privacy else ("NULL",) * len(PRIVACY_COLUMNS))
        + (SESSION_COLUMNS if session else ("NULL",) * len(SESSION_COLUMNS))
    )
    joins = (_PRIVACY_JOINED if privacy else "") + (_SESSION_JOINED if session else "")
    return f"SELECT {', '.join(columns)} {_ROUNDS_JOINED}{joins}"


# The rounds query of each schema version this secagg reads.
_ROUNDS_FROM: dict[int, str] = {v: _rounds_query(v) for v in range(1, SCHEMA_VERSION + 1)}
# Two fixed variants of each query (every round, or one round); the id is always a parameter.
_QUERIES: dict[bool, tuple[str, str, str, str]] = {
    False: (
        " ORDER BY r.round_id",
        "SELECT round_id, client_id, included FROM cohort ORDER BY round_id, client_id",
        "SELECT round_id, stage, seconds FROM stage_timings ORDER BY rowid",
        "SELECT round_id, client_id, stage, reason, detail FROM drops ORDER BY drop_id",
    ),
    True: (
        " WHERE r.round_id = ?",
        "SELECT round_id, client_id, included FROM cohort WHERE round_id = ? ORDER BY client_id",
        "SELECT round_id, stage, seconds FROM stage_timings WHERE round_id = ? ORDER BY rowid",
        "SELECT round_id, client_id, stage, reason, detail FROM drops WHERE round_id = ?"
        " ORDER BY drop_id",
    ),
}


class Ledger:
    """The durable record of rounds, in one SQLite file (``":memory:"`` for tests).

    ``Ledger(path)`` opens the writer: see ``secagg.ledger.files`` for the lock and for what it
    creates or refuses (always with ``LedgerError``). ``initialise=True`` lets it write a new
    ledger into an existing empty file, for an operator who starts over on purpose.
    ``max_pages`` caps the database at that many pages (SQLite's ``max_page_count``, pages of
    4 KiB): a hard size limit, and how the tests fill the "disk" for real. Call ``recover()``
    once when the coordinator starts. ``Ledger.open_readonly(path)`` opens a reader. A ledger
    may be shared between threads: one lock serialises its use of the connection.
    """

    _conn: sqlite3.Connection | None
    _lock_file: BinaryIO | None  # the writer's hold on <ledger>.lock, for as long as it is open
    # Set when a reader had to open its file as immutable (read-only directory): the file
    # and what it looked like then, so that a checkpoint landing under a read is detected.
    _frozen: tuple[Path, FileState] | None
    # Why the connection was given up mid-way (a rollback that failed), if it was.
    _broken: str | None
    # The schema version of the open file (a writer upgrades to the newest on opening).
    _version: int

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        initialise: bool = False,
        max_pages: int | None = None,
    ) -> None:
        if max_pages is not None and (
            isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1
        ):
            raise ConfigurationError(f"max_pages must be a positive int, got {max_pages!r}")
        self._setup(str(path), clock=clock, read_only=False)
        if self._path == ":memory:":
            conn = connect(self._path, self._path)
            try:
                configure_writer(conn, self._path, max_pages)
                create_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._version = SCHEMA_VERSION
            return
        file = resolve(path)
        if file.is_dir():
            raise LedgerError(f"{self._path} is a directory, not a round ledger")
        # The lock comes first: whatever follows (creating, checking, recovering) happens
        # with no other writer on the file.
        self._lock_file = take_lock(file, self._path)
        try:
            self._conn = open_writer(file, self._path, initialise=initialise, max_pages=max_pages)
            self._version = SCHEMA_VERSION
        except BaseException:
            self._release()
            raise

    @classmethod
    def open_readonly(cls, path: str | Path) -> Ledger:
        """A reader: never creates, initialises, migrates, locks or recovers anything.

        Its write methods raise ``UsageError``. A missing, empty, foreign, corrupt or
        unreadable file, or a directory, is a ``LedgerError`` naming it.
        """
        if str(path) == ":memory:":
            raise UsageError("an in-memory ledger cannot be opened read-only: it would be empty")
        self = cls.__new__(cls)
        self._setup(str(path), clock=time.time, read_only=True)
        file = resolve(path)
        self._conn, frozen, self._version = open_reader(file, self._path)
        if frozen is not None:
            self._frozen = (file, frozen)
        return self

    def _setup(self, path: str, *, clock: Callable[[], float], read_only: bool) -> None:
        self._path = path
        self._clock = clock
        self._read_only = read_only
        self._lock = threading.RLock()
        self._conn = None
        self._lock_file = None
        self._frozen = None
        self._broken = None
        self._version = SCHEMA_VERSION

    @property
    def path(self) -> str:
        """The path the ledger was opened with, as given."""
        return self._path

    @property
    def schema_version(self) -> int:
        """The schema version of the open file (a reader may hold an older one)."""
        return self._version

    @property
    def read_only(self) -> bool:
        """True for a ledger from ``open_readonly``: its write methods raise ``UsageError``."""
        return self._read_only

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the file and release the writer's lock (idempotent). Writes are committed."""
        with self._lock:
            try:
                if self._conn is not None:
                    self._conn.close()
            finally:
                self._conn = None
                self._release()

    def _release(self) -> None:
        # Closing the lock file releases the flock; the file itself stays (see take_lock).
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

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
        mode = ", read-only" if self._read_only else ""
        return f"Ledger({self._path!r}, {state}{mode})"

    @contextlib.contextmanager
    def _transaction(self, begin: str, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                if self._broken is not None:
                    raise LedgerError(self._broken)
                raise UsageError("the round ledger is closed")
            try:
                conn.execute(begin)
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    # Also after a failed COMMIT (disk full, I/O error): nothing half-written
                    # stays pending, and the caller sees the error, so it never reports success.
                    if conn.in_transaction:
                        self._roll_back(conn)
                    raise
            except sqlite3.ProgrammingError:
                raise  # our own SQL or API use is wrong: a bug, not the operator's problem
            except sqlite3.DatabaseError as exc:
                # The file, the disk or another program refused: one line for the operator.
                raise LedgerError(f"round ledger {self._path}: could not {action}: {exc}") from exc

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            # A connection that cannot even roll back is in an unknown state; closing it
            # makes SQLite discard the transaction (and recover from the log at the next
            # opening), and every later call says why the ledger is no longer usable.
            self._conn = None
            self._broken = f"round ledger {self._path}: given up after a failed rollback: {exc}"
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _write(self, action: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        if self._read_only:
            raise UsageError(f"the round ledger {self._path} was opened read-only: cannot {action}")
        # IMMEDIATE takes the write lock up front: the state checks a write method makes
        # (is the round still running?) cannot be invalidated before its update lands.
        return self._transaction("BEGIN IMMEDIATE", f"{action} (nothing was written)")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # One read transaction per call: a record is assembled from one consistent snapshot
        # even while another process (the coordinator) writes.
        with self._transaction("BEGIN", "read it") as conn:
            yield conn
        if self._frozen is not None and file_state(self._frozen[0]) != self._frozen[1]:
            raise LedgerError(
                f"round ledger {self._path} changed while it was being read: run this again"
            )

    # ----------------------------------------------------------------- writing
    def recover(self) -> list[int]:
        """Abort every round left running by a coordinator that died; return their ids."""
        now = self._clock()
        with self._write("recover the rounds left running") as conn:
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
        session_round: int | None = None,
    ) -> None:
        """Record a new round as running, before its first message goes out; a round of a
        session that spans rounds gives its ``session_round`` (1: the one that also runs the
        session's set-up; None: a one-shot round)."""
        round_id = _round_id(round_id)
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
        if session_round is not None:
            session_round = _int(session_round, "session round", minimum=1)
        now = self._clock()
        with self._write(f"start round {round_id}") as conn:
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
            if session_round is not None:
                conn.execute(
                    "INSERT INTO session_rounds (round_id, round_number) VALUES (?, ?)",
                    (round_id, session_round),
                )

    def record_stage(self, round_id: int, stage: str, seconds: float) -> None:
        """Record how long one stage of a running round took (once per stage)."""
        round_id = _round_id(round_id)
        stage = _text(stage, "stage")
        seconds = _amount(seconds, "stage seconds")
        with self._write(f"record how long round {round_id} spent in {stage}") as conn:
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
        round_id = _round_id(round_id)
        client_id = _int(client_id, "client id")
        stage = _text(stage, "stage")
        reason = _text(reason, "drop reason")
        if not isinstance(detail, str):
            raise UsageError("a drop's detail must be a str")
        with self._write(f"record that round {round_id} dropped client {client_id}") as conn:
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
        privacy: RoundPrivacy | None = None,
    ) -> None:
        """Record a round as completed with its aggregate (and, under distributed DP, its
        ``privacy``: ``account_round``); durable once this returns.

        All or nothing, in one transaction: if the write fails (``LedgerError``: disk full,
        I/O error) the round is still ``running``, without aggregate or privacy record, and
        ``recover()`` at the next start aborts it; a completed round always has its aggregate.
        """
        round_id = _round_id(round_id)
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
        if privacy is not None and not isinstance(privacy, RoundPrivacy):
            raise UsageError(f"privacy must be a RoundPrivacy, got {type(privacy).__name__}")
        now = self._clock()
        with self._write(f"complete round {round_id}") as conn:
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
            if privacy is not None:
                conn.execute(
                    "INSERT INTO dp_rounds (round_id, series, mechanism, delta, epsilon,"
                    " epsilon_spent, epsilon_target, target_rounds)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        round_id,
                        privacy.series,
                        privacy.mechanism,
                        float(privacy.delta),
                        float(privacy.epsilon),
                        float(privacy.epsilon_spent),
                        float(privacy.epsilon_target),
                        privacy.target_rounds,
                    ),
                )

    def abort_round(self, round_id: int, reason: str) -> None:
        """Record a running round as aborted, with a human-readable reason (no aggregate)."""
        round_id = _round_id(round_id)
        reason = _text(reason, "abort reason")
        now = self._clock()
        with self._write(f"abort round {round_id}") as conn:
            _require_running(conn, round_id)
            conn.execute(
                "UPDATE rounds SET outcome = ?, abort_reason = ?, finished_at = ?"
                " WHERE round_id = ?",
                (RoundOutcome.ABORTED.value, reason, now, round_id),
            )

    # ----------------------------------------------------------------- reading
    def rounds(self) -> list[LedgerRound]:
        """Every round, ordered by round id."""
        with self._read() as conn:
            return _load(conn, None, self._version)

    def round(self, round_id: int) -> LedgerRound:
        """One round; ``UsageError`` if the ledger has no such round."""
        round_id = _round_id(round_id)
        with self._read() as conn:
            records = _load(conn, round_id, self._version)
        if not records:
            raise UsageError(f"no round {round_id}")
        return records[0]

    def dp_inputs(self, series: bytes) -> list[int]:
        """How many inputs each completed round of DP ``series`` revealed, by round id: what
        ``account_round`` composes (empty for a version-1 ledger)."""
        series = _hash(series, "a DP series")
        if self._version < PRIVACY_VERSION:
            return []
        with self._read() as conn:
            rows = conn.execute(
                "SELECT COUNT(c.client_id) FROM dp_rounds AS d"
                " JOIN cohort AS c ON c.round_id = d.round_id AND c.included = 1"
                " WHERE d.series = ? GROUP BY d.round_id ORDER BY d.round_id",
                (series,),
            ).fetchall()
        return [int(n) for (n,) in rows]

    def latest_completed(self) -> LedgerRound | None:
        """The completed round with the largest id, if any."""
        with self._read() as conn:
            (latest,) = conn.execute(
                "SELECT MAX(round_id) FROM rounds WHERE outcome = ?",
                (RoundOutcome.COMPLETED.value,),
            ).fetchone()
            if latest is None:
                return None
            return _load(conn, latest, self._version)[0]

    def aggregate(self, round_id: int) -> NDArray[np.float64]:
        """The stored aggregate of a completed round, exactly as it was committed.

        ``UsageError`` if the round is unknown or did not complete; ``DecodeError`` if what
        is stored is not the aggregate that was written (wrong length or digest).
        """
        round_id = _round_id(round_id)
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
        return decode_aggregate(
            round_id, dim=dim, present=bool(present), length=length, digest=digest, data=data
        )


def _require_running(conn: sqlite3.Connection, round_id: int) -> None:
    row = conn.execute("SELECT outcome FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
    if row is None:
        raise UsageError(f"no round {round_id}")
    if row[0] != RoundOutcome.RUNNING.value:
        raise UsageError(f"round {round_id} has already ended ({row[0]})")


def _load(conn: sqlite3.Connection, round_id: int | None, version: int) -> list[LedgerRound]:
    # Four queries in all, however many rounds, rather than four per round.
    one = round_id is not None
    params: tuple[int, ...] = (round_id,) if round_id is not None else ()
    rounds_where, cohort_sql, stages_sql, drops_sql = _QUERIES[one]
    rows = conn.execute(_ROUNDS_FROM[version] + rounds_where, params).fetchall()
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
    return [decode_round(row, cohorts, included, stages, drops) for row in rows]


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


def _round_id(value: object) -> int:
    # Before any SQL: an id SQLite cannot hold (2**70) would be an OverflowError inside it.
    return _int(value, "round id", minimum=1)


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


def account_round(ledger: Ledger, plan: DpPlan, inputs: int) -> RoundPrivacy:
    """The privacy record of a round of ``plan``'s deployment whose revealed sum held
    ``inputs`` inputs: its own epsilon, and the epsilon spent by it and every completed round
    of the same series before it in ``ledger`` (``secagg.dp.round_privacy``)."""
    return round_privacy(plan, inputs, earlier=ledger.dp_inputs(dp_series(plan)))
