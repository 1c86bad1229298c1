"""The round ledger: every round the coordinator ran, durably, in one SQLite file.

For each round the ledger keeps its public configuration (session id, task hash, protocol,
cohort, degree, threshold, dimension), when it started and ended, how long each stage took,
which clients were dropped at which stage and why, its outcome, and, for a completed round
only, the final aggregate and the total weight behind it and, under distributed differential
privacy, the guarantee of the sum it revealed and the epsilon spent so far (``RoundPrivacy``,
computed by ``account_round``). A round is written when it starts,
so that a coordinator killed mid-round leaves a ``running`` row behind; ``recover()`` turns
such rows into aborted rounds at the next start. A completed round's aggregate is committed
(``synchronous=FULL``: fsynced) before ``complete_round`` returns, and so before anyone is
told that the round completed.

Two ways to open a ledger:

- ``Ledger(path)``, the writer (the coordinator). It holds an exclusive lock on
  ``<path>.lock`` (``flock``, with its pid in the file) for as long as it is open, so a second
  coordinator started on the same ledger is refused before it can touch, let alone
  ``recover()``, the first one's running round. The kernel drops the lock when its holder dies,
  even by SIGKILL, so a restarted coordinator gets it back and recovers as before. A writer
  creates a new ledger only where no file exists, and creates it whole (beside the target,
  then linked into place) so that a crash never leaves half a ledger; it refuses an empty
  file unless asked to ``initialise`` it, and anything that is not a ledger of a schema
  version it knows, always. A ledger of an older version it knows is upgraded when the writer
  opens it, in one transaction (version 1, before distributed DP, gains the ``dp_rounds``
  table: its rounds are kept as they are, with no privacy record); an older secagg then
  refuses the file as newer than it understands, in one line.
- ``Ledger.open_readonly(path)``, for ``secagg rounds`` and other readers: SQLite's read-only
  mode, no lock, no recovery; the ledger is never created or changed (in a writable directory
  SQLite may leave its shared-memory file and an empty log beside it, which are harmless). It
  works on a read-only file, in a read-only directory and while a coordinator writes (WAL),
  and reads a version-1 ledger as it is (no round has a privacy record).

Every failure an operator can cause (a second coordinator, a file that is missing, empty,
foreign, unreadable or read-only, a full disk) is a ``LedgerError`` with one line naming the
file; a write that fails is rolled back whole, so the ledger stays as it was before the call.
``UsageError`` remains what it always is: our own code calling the ledger wrongly.

No secret (key, seed, share) and no individual update, masked or not, is ever stored: no
method takes one. The only vector in the file is the aggregate of a completed round, which
the protocol reveals anyway; the only other blobs are the two public 32-byte hashes and, under
distributed DP, a round's 32-byte DP series (the digest of the public DP configuration).

Every write method commits its own transaction; all SQL is parameterised.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import math
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, BinaryIO, SupportsIndex

import numpy as np
from numpy.typing import NDArray

from secagg.dp.calibrate import DpPlan, achieved_epsilon, epsilon_spent
from secagg.errors import ConfigurationError, DecodeError, LedgerError, UsageError
from secagg.hazmat.kdf import encode_fields

# The round engine's outcome: the ledger stores its values (``running`` until a round ends).
from secagg.protocol.runner import RoundOutcome

__all__ = [
    "LOCK_SUFFIX",
    "RECOVERED_REASON",
    "SCHEMA_VERSION",
    "DropRecord",
    "Ledger",
    "RoundOutcome",
    "RoundPrivacy",
    "RoundRecord",
    "account_round",
    "describe_drops",
    "dp_series",
]

SCHEMA_VERSION = 2
_FIRST_VERSION = 1  # the oldest schema a writer upgrades and a reader reads
RECOVERED_REASON = "coordinator restarted mid-round"
HASH_BYTES = 32
_MAX_SQLITE_INT = 2**63 - 1
LOCK_SUFFIX = ".lock"  # the writer's lock file sits beside the ledger: <ledger>.lock
_SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
_TABLES = frozenset({"schema_version", "rounds", "cohort", "stage_timings", "drops", "aggregates"})
_FREEZE_TRIGGER = "finished_rounds_are_final"
_DP_TABLE = "dp_rounds"
_DP_FREEZE_TRIGGER = "privacy_records_are_final"
# What each version must hold, beyond version 1's.
_SINCE: dict[int, frozenset[str]] = {2: frozenset({_DP_TABLE, _DP_FREEZE_TRIGGER})}
# How SQLite says that a read-only connection cannot set up its shared memory beside a WAL
# database, because the directory is read-only: the cue to read the file as immutable.
_NO_SHARED_MEMORY = frozenset({"SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT"})


@dataclass(frozen=True)
class DropRecord:
    """One client the server stopped waiting for: at which stage, why, and any detail."""

    client_id: int
    stage: str
    reason: str
    detail: str


# Dropped clients named in one line (a round's line, its log line, ``secagg rounds``); the
# ledger itself keeps every drop.
_NAMED_DROPS = 10


def describe_drops(drops: Sequence[DropRecord]) -> str:
    """Each dropped client, its stage, its typed reason and the detail, e.g. "dropped: client 3
    at advertise (disconnected: connection lost), client 5 at commit (client-aborted:
    update-failed: the update callback raised ValueError)": the first ten clients, then how
    many more. Empty when nobody dropped. (The round's line, its log line and ``secagg
    rounds`` all say it so.)"""
    if not drops:
        return ""
    named = [
        f"client {d.client_id} at {d.stage} ({d.reason}: {d.detail})"
        if d.detail
        else f"client {d.client_id} at {d.stage} ({d.reason})"
        for d in drops[:_NAMED_DROPS]
    ]
    if len(drops) > _NAMED_DROPS:
        named.append(f"and {len(drops) - _NAMED_DROPS} more (the ledger lists them)")
    return "dropped: " + ", ".join(named)


@dataclass(frozen=True)
class RoundPrivacy:
    """The distributed-DP guarantee of a completed round's revealed sum, and the privacy
    spent so far (all at ``delta``).

    ``epsilon`` is the guarantee of this round's sum, for the number of inputs it actually
    held; ``epsilon_spent`` composes (RDP) this round with every earlier completed round of
    the same ``series``, the digest of the public DP configuration that calibrated the
    noise (``dp_series``): rounds under another configuration, or none, belong to another
    deployment and are accounted apart. ``epsilon_target`` is the plan's epsilon over
    ``target_rounds`` rounds at the minimum cohort (the target, when one was given): spent
    stays at or below it for as many rounds, and passes it after more.
    """

    series: bytes
    mechanism: str
    delta: float
    epsilon: float
    epsilon_spent: float
    epsilon_target: float
    target_rounds: int

    def __post_init__(self) -> None:
        _hash(self.series, "a DP series")
        _text(self.mechanism, "the DP mechanism")
        if isinstance(self.delta, bool) or not (
            isinstance(self.delta, int | float) and 0.0 < self.delta < 1.0
        ):
            raise UsageError(f"delta must be in (0, 1), got {self.delta!r}")
        for name in ("epsilon", "epsilon_spent", "epsilon_target"):
            _amount(getattr(self, name), name)
        # Composition never spends less than its last round alone (to rounding).
        if self.epsilon_spent < self.epsilon * (1 - 1e-9):
            raise UsageError(
                f"epsilon spent {self.epsilon_spent!r} is below the round's {self.epsilon!r}"
            )
        _int(self.target_rounds, "target rounds", minimum=1)


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
    privacy: RoundPrivacy | None = None  # distributed DP (completed rounds of a DP deployment)


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
# Version 2: distributed DP. A table of its own (one row per completed round of a DP
# deployment, written in the same transaction as the aggregate), so that version 1 upgrades
# by adding it and no existing row changes; the number of inputs is not repeated here, it is
# the round's included clients.
_SCHEMA_V2 = (
    f"""
    CREATE TABLE {_DP_TABLE} (
        round_id INTEGER PRIMARY KEY REFERENCES rounds (round_id),
        series BLOB NOT NULL CHECK (length(series) = 32),
        mechanism TEXT NOT NULL,
        delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
        epsilon REAL NOT NULL CHECK (epsilon >= 0),
        epsilon_spent REAL NOT NULL CHECK (epsilon_spent >= 0),
        epsilon_target REAL NOT NULL CHECK (epsilon_target >= 0),
        target_rounds INTEGER NOT NULL CHECK (target_rounds >= 1)
    )
    """,
    f"CREATE INDEX dp_rounds_by_series ON {_DP_TABLE} (series)",
    # A privacy record is as final as the round it belongs to.
    f"""
    CREATE TRIGGER {_DP_FREEZE_TRIGGER} BEFORE UPDATE ON {_DP_TABLE}
    BEGIN
        SELECT RAISE(ABORT, 'a privacy record cannot be changed');
    END
    """,
)
_SCHEMA_UPGRADES: dict[int, tuple[str, ...]] = {2: _SCHEMA_V2}  # from the version before

_ROUND_COLUMNS = """
    SELECT r.round_id, r.session_id, r.task_hash, r.protocol, r.degree, r.threshold, r.dim,
           r.started_at, r.finished_at, r.outcome, r.abort_reason,
           r.upload_bytes_per_client, r.download_bytes_per_client,
           a.round_id IS NOT NULL, a.total_weight,
"""
_PRIVACY_COLUMNS = (
    "d.series, d.mechanism, d.delta, d.epsilon, d.epsilon_spent, d.epsilon_target, d.target_rounds"
)
# The rounds query of each schema version: a version-1 ledger has no privacy records.
_ROUNDS_FROM: dict[bool, str] = {
    True: _ROUND_COLUMNS
    + _PRIVACY_COLUMNS
    + """
    FROM rounds AS r LEFT JOIN aggregates AS a ON a.round_id = r.round_id
    LEFT JOIN dp_rounds AS d ON d.round_id = r.round_id
""",
    False: _ROUND_COLUMNS
    + ", ".join(["NULL"] * 7)
    + """
    FROM rounds AS r LEFT JOIN aggregates AS a ON a.round_id = r.round_id
""",
}
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


class _Found(Enum):
    """What is at a ledger's path, judged from the file system and the file's first bytes."""

    NOTHING = "nothing"
    EMPTY_FILE = "empty file"
    SQLITE = "SQLite database"
    FOREIGN = "something else"


class Ledger:
    """The durable record of rounds, in one SQLite file (``":memory:"`` for tests).

    ``Ledger(path)`` opens the writer: see the module docstring for the lock and for what it
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
    _frozen: tuple[Path, tuple[int, int, int]] | None
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
            conn = _connect(self._path, self._path)
            try:
                _configure_writer(conn, self._path, max_pages)
                _create_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._version = SCHEMA_VERSION
            return
        file = _resolve(path)
        if file.is_dir():
            raise LedgerError(f"{self._path} is a directory, not a round ledger")
        # The lock comes first: whatever follows (creating, checking, recovering) happens
        # with no other writer on the file.
        self._lock_file = _take_lock(file, self._path)
        try:
            self._conn = _open_writer(file, self._path, initialise=initialise, max_pages=max_pages)
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
        file = _resolve(path)
        self._conn, frozen, self._version = _open_reader(file, self._path)
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
        # Closing the lock file releases the flock; the file itself stays (see _take_lock).
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
        if self._frozen is not None and _stat(self._frozen[0]) != self._frozen[1]:
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
    ) -> None:
        """Record a new round as running, before its first message goes out."""
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
    def rounds(self) -> list[RoundRecord]:
        """Every round, ordered by round id."""
        with self._read() as conn:
            return _load(conn, None, self._version)

    def round(self, round_id: int) -> RoundRecord:
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
        if self._version < 2:
            return []
        with self._read() as conn:
            rows = conn.execute(
                "SELECT COUNT(c.client_id) FROM dp_rounds AS d"
                " JOIN cohort AS c ON c.round_id = d.round_id AND c.included = 1"
                " WHERE d.series = ? GROUP BY d.round_id ORDER BY d.round_id",
                (series,),
            ).fetchall()
        return [int(n) for (n,) in rows]

    def latest_completed(self) -> RoundRecord | None:
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


# ----------------------------------------------------------------- opening
def _resolve(path: str | Path) -> Path:
    # Symlinks resolved: two names for one ledger must find the same lock file.
    return Path(path).resolve()


def _stat(file: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _wal(file: Path) -> Path:
    return file.with_name(file.name + "-wal")


def _take_lock(file: Path, shown: str) -> BinaryIO:
    """Hold ``<ledger>.lock`` exclusively for the writer's life; refuse if another has it.

    ``flock`` rather than SQLite's own locks (which only last a transaction), and on a file
    of its own rather than the database: closing any descriptor of a file drops every POSIX
    lock the process holds on it, SQLite's included, and SQLite opens the database itself.
    The kernel drops a flock when its holder dies, even by SIGKILL, so a stale lock file
    never blocks a restart. The file is never deleted: unlinking it while another process
    waits to open it would let two writers lock two different files of the same name.
    """
    lock_path = file.with_name(file.name + LOCK_SUFFIX)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise LedgerError(
            f"cannot open the round ledger {shown}: directory {file.parent} does not exist"
        ) from None
    except OSError as exc:
        raise LedgerError(
            f"cannot lock the round ledger {shown}: {lock_path}: {exc.strerror}"
        ) from None
    handle = os.fdopen(fd, "r+b", buffering=0)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        handle.close()
        who = f"pid {holder}" if holder.isdigit() else "pid unknown"
        raise LedgerError(
            f"the round ledger {shown} is in use by another coordinator ({who}, lock "
            f"{lock_path}): stop that one first, or give this one its own ledger"
        ) from None
    except OSError as exc:
        handle.close()
        raise LedgerError(f"cannot lock the round ledger {shown}: {exc.strerror}") from None
    # Ours now: say who holds it, for the message a second coordinator prints.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return handle


def _identify(file: Path, shown: str) -> _Found:
    try:
        with open(file, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return _Found.NOTHING
    except IsADirectoryError:
        raise LedgerError(f"{shown} is a directory, not a round ledger") from None
    except PermissionError:
        raise LedgerError(f"cannot read the round ledger {shown}: permission denied") from None
    except OSError as exc:
        raise LedgerError(f"cannot read the round ledger {shown}: {exc.strerror}") from None
    if not head:
        return _Found.EMPTY_FILE
    return _Found.SQLITE if head == _SQLITE_MAGIC else _Found.FOREIGN


def _refuse_stale_log(file: Path, shown: str) -> None:
    # SQLite would replay a write-ahead log left beside a missing or emptied database into
    # the new one: rounds of some other ledger, or half of one, would appear in it.
    wal = _wal(file)
    with contextlib.suppress(OSError):
        if wal.stat().st_size > 0:
            raise LedgerError(
                f"refusing to start a new round ledger at {shown}: {wal} is the write-ahead log "
                "of a ledger that was there; restore that ledger or move the log away"
            )


def _connect(target: str, shown: str, *, uri: bool = False) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is
        # exactly one method call and nothing is left open between calls.
        return sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the round ledger {shown}: {exc}") from None


def _configure_writer(conn: sqlite3.Connection, shown: str, max_pages: int | None) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    # WAL lets `secagg rounds` read while the coordinator writes; synchronous=FULL fsyncs
    # the log at every commit, so a committed round survives a power cut.
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if shown != ":memory:" and str(mode).lower() != "wal":
        raise LedgerError(
            f"round ledger {shown}: SQLite cannot use write-ahead logging there (journal mode "
            f"{mode}); put the ledger on a local file system"
        )
    conn.execute("PRAGMA synchronous = FULL")
    if max_pages is not None:
        conn.execute(f"PRAGMA max_page_count = {int(max_pages)}")


@contextlib.contextmanager
def _schema_change(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on a ledger being opened (before a ``Ledger`` owns it): every
    statement lands, or the file stays as it was."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _create_schema(conn: sqlite3.Connection) -> None:
    with _schema_change(conn):
        for statement in (*_SCHEMA, *_SCHEMA_V2):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


def _check_schema(conn: sqlite3.Connection, shown: str) -> int | None:
    """The schema version of a ledger of a version we know (``_FIRST_VERSION`` up to ours),
    None for a database with nothing in it; ``LedgerError`` for anything else."""
    objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
    if not objects:
        return None
    tables = {name for kind, name in objects if kind == "table"}
    triggers = {name for kind, name in objects if kind == "trigger"}
    if "schema_version" not in tables:
        names = sorted(tables)
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") or "none"
        raise LedgerError(
            f"{shown} is an SQLite database but not a secagg round ledger (tables: {listed})"
        )
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int:
        raise LedgerError(f"{shown}: the round ledger's schema version is unreadable")
    version = rows[0][0]
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"{shown} has ledger schema version {version}, newer than this secagg "
            f"understands ({SCHEMA_VERSION}): upgrade secagg to use it"
        )
    if version < _FIRST_VERSION:
        raise LedgerError(
            f"{shown} has ledger schema version {version}, which this secagg does not know "
            f"(it reads versions {_FIRST_VERSION} to {SCHEMA_VERSION})"
        )
    expected = _TABLES | {_FREEZE_TRIGGER}
    for since, added in _SINCE.items():
        if version >= since:
            expected |= added
    missing = sorted(expected - tables - triggers)
    if missing:
        raise LedgerError(f"{shown} is a damaged round ledger: {', '.join(missing)} missing")
    return int(version)


def _upgrade(conn: sqlite3.Connection, version: int) -> None:
    """Bring a ledger of an older known ``version`` to ``SCHEMA_VERSION``, in one
    transaction: either every step lands or the file stays as it was."""
    with _schema_change(conn):
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _SCHEMA_UPGRADES[step]:
                conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


def _create(file: Path, shown: str) -> None:
    """Write a new, complete ledger beside ``file`` and link it into place.

    Either ``file`` does not exist or it holds the whole schema: a coordinator killed while
    creating its ledger leaves no empty or half-made file for the next start to refuse.
    """
    tmp = file.with_name(f".{file.name}.{os.urandom(6).hex()}.new")
    try:
        # 0o644 less the umask, as SQLite itself would create it (mkstemp would make it 0o600,
        # and an operator's `secagg rounds` under another account could not read it).
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    except OSError as exc:
        raise LedgerError(f"cannot create the round ledger {shown}: {exc.strerror}") from None
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            # The journal mode is recorded in the file's header, so the ledger is born WAL.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            _create_schema(conn)
        finally:
            conn.close()  # checkpoints the log into the file and removes it
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.link(tmp, file)  # never replaces: a file that appeared meanwhile is kept
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.rename(tmp, file)  # no hard links on this file system; we hold the lock
        dir_fd = os.open(file.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the new name is durable too
        finally:
            os.close(dir_fd)
    except FileExistsError:
        raise LedgerError(
            f"cannot create the round ledger {shown}: another program created it meanwhile"
        ) from None
    except OSError as exc:
        raise LedgerError(f"cannot create the round ledger {shown}: {exc.strerror}") from None
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot create the round ledger {shown}: {exc}") from None
    finally:
        for leftover in (tmp, _wal(tmp), tmp.with_name(tmp.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _open_writer(
    file: Path, shown: str, *, initialise: bool, max_pages: int | None
) -> sqlite3.Connection:
    found = _identify(file, shown)
    if found is _Found.FOREIGN:
        raise LedgerError(f"{shown} is not an SQLite database, so not a round ledger")
    if found is _Found.EMPTY_FILE and not initialise:
        raise LedgerError(
            f"{shown} is an empty file, not a round ledger: refusing to start a new ledger in "
            "it (round ids would begin again at 1); remove it, or initialise it on purpose"
        )
    if found is not _Found.SQLITE:
        _refuse_stale_log(file, shown)
    if found is _Found.NOTHING:
        _create(file, shown)
    conn = _connect(str(file), shown)
    try:
        # Look before touching anything: even switching the journal mode writes to the
        # file, and a database that is not ours must be left exactly as it was.
        conn.execute("BEGIN")
        version = _check_schema(conn, shown)
        conn.execute("ROLLBACK")
        is_ledger = version is not None
        if not is_ledger and not initialise:
            raise LedgerError(
                f"{shown} is an SQLite database with nothing in it, not a round ledger: "
                "remove it, or initialise it on purpose"
            )
        _configure_writer(conn, shown, max_pages)
        if is_ledger:
            # SQLite opens a file it may not write read-only without a word, and only the
            # first write would fail: find out now, with a change that is rolled back.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE schema_version SET version = version")
            conn.execute("ROLLBACK")
            if version is not None and version < SCHEMA_VERSION:
                _upgrade(conn, version)
        else:
            _create_schema(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerError(f"cannot use the round ledger {shown}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _open_reader(
    file: Path, shown: str
) -> tuple[sqlite3.Connection, tuple[int, int, int] | None, int]:
    found = _identify(file, shown)
    if found is _Found.NOTHING:
        raise LedgerError(f"no round ledger at {shown}: the file does not exist")
    if found is _Found.EMPTY_FILE:
        raise LedgerError(f"{shown} is an empty file, not a round ledger")
    if found is _Found.FOREIGN:
        raise LedgerError(f"{shown} is not an SQLite database, so not a round ledger")
    # mode=ro: SQLite itself refuses every write, and never creates the file.
    conn = _connect(file.as_uri() + "?mode=ro", shown, uri=True)
    frozen: tuple[int, int, int] | None = None
    try:
        try:
            version = _check_schema(conn, shown)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorname not in _NO_SHARED_MEMORY | {"SQLITE_CANTOPEN"}:
                raise
            conn.close()
            # The directory is read-only, so SQLite cannot create the shared-memory file
            # that WAL readers use. A log beside the file holds rounds the file lacks: say
            # so rather than read the file alone and silently miss them.
            logged = (_stat(_wal(file)) or (0, 0, 0))[1] > 0
            if logged and not os.access(file.parent, os.W_OK):
                raise LedgerError(
                    f"cannot read the round ledger {shown}: its write-ahead log needs a "
                    f"writable directory ({file.parent}) to be read"
                ) from None
            if logged or exc.sqlite_errorname not in _NO_SHARED_MEMORY:
                raise
            # No log, so no coordinator running: the file's bytes are the whole ledger.
            # Read them as immutable, and check after every read that no checkpoint (a
            # coordinator started meanwhile) changed them under it.
            frozen = _stat(file)
            if frozen is None:
                raise LedgerError(f"no round ledger at {shown}: the file is gone") from None
            conn = _connect(file.as_uri() + "?mode=ro&immutable=1", shown, uri=True)
            version = _check_schema(conn, shown)
        if version is None:
            raise LedgerError(f"{shown} is an SQLite database with nothing in it, not a ledger")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerError(f"cannot read the round ledger {shown}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn, frozen, version


def _require_running(conn: sqlite3.Connection, round_id: int) -> None:
    row = conn.execute("SELECT outcome FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
    if row is None:
        raise UsageError(f"no round {round_id}")
    if row[0] != RoundOutcome.RUNNING.value:
        raise UsageError(f"round {round_id} has already ended ({row[0]})")


def _load(conn: sqlite3.Connection, round_id: int | None, version: int) -> list[RoundRecord]:
    # Four queries in all, however many rounds, rather than four per round.
    one = round_id is not None
    params: tuple[int, ...] = (round_id,) if round_id is not None else ()
    rounds_where, cohort_sql, stages_sql, drops_sql = _QUERIES[one]
    rows = conn.execute(_ROUNDS_FROM[version >= 2] + rounds_where, params).fetchall()
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
    for row in rows:
        try:
            records.append(_record(row, cohorts, included, stages, drops))
        except (TypeError, ValueError, UsageError) as exc:
            # CHECK constraints guard every write, but SQLite does not checksum its pages:
            # a damaged row is a typed error naming the round, never a traceback.
            raise DecodeError(f"round {row[0]!r} in the ledger is corrupt: {exc}") from None
    return records


def _record(
    row: tuple[Any, ...],
    cohorts: Mapping[int, list[int]],
    included: Mapping[int, list[int]],
    stages: Mapping[int, dict[str, float]],
    drops: Mapping[int, list[DropRecord]],
) -> RoundRecord:
    (
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
        *privacy,
    ) = row
    return RoundRecord(
        round_id=rid,
        session_id=_stored_hash(session_id, "session id"),
        task_hash=_stored_hash(task_hash, "task hash"),
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
        privacy=None if privacy[0] is None else RoundPrivacy(*privacy),
    )


def _stored_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        size = len(value) if isinstance(value, bytes | str) else type(value).__name__
        raise ValueError(f"its {what} is not {HASH_BYTES} bytes ({size})")
    return value


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


# ----------------------------------------------------------------- distributed DP
def dp_series(plan: DpPlan) -> bytes:
    """The digest of what a DP deployment's privacy accounting depends on: the mechanism,
    the clip in scaled units, the padded dimension, the rounding, each client's noise, the
    sampling rate and delta. Rounds of one series compose into one ``epsilon_spent``."""
    c = plan.config
    return hashlib.sha256(
        encode_fields(
            "secagg/v1/ledger/dp-series",
            plan.mechanism.value,
            plan.padded_dim,
            repr(float(plan.scaled_clip)),
            repr(float(c.beta)),
            repr(float(plan.local_noise)),
            repr(float(c.sampling_rate)),
            repr(float(c.delta)),
        )
    ).digest()


def account_round(ledger: Ledger, plan: DpPlan, inputs: int) -> RoundPrivacy:
    """The privacy record of a round of ``plan``'s deployment whose revealed sum held
    ``inputs`` inputs: its own epsilon, and the epsilon spent by it and every completed round
    of the same series before it in ``ledger`` (``secagg.dp.epsilon_spent``)."""
    series = dp_series(plan)
    earlier = ledger.dp_inputs(series)
    return RoundPrivacy(
        series=series,
        mechanism=plan.mechanism.value,
        delta=plan.config.delta,
        epsilon=achieved_epsilon(plan, inputs),
        epsilon_spent=epsilon_spent(plan, [*earlier, inputs]),
        epsilon_target=plan.epsilon_total,
        target_rounds=plan.config.rounds,
    )
