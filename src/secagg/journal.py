"""The client's journal: a node-local, durable, append-only record of what it promised.

A client's promises (the rounds and tasks it took part in, each attempt, the survivor set it
signed, which share of which peer it revealed, the privacy it spent) are decisions that must
outlive the message that made them: checked against a rolled-back copy, every check passes
twice. So a client session (``secagg.client_session``) decides each server message inside one
``Journal.transaction()``: it reads the journal, decides, appends what it decided, and the
transaction's commit (SQLite, ``synchronous = FULL``) is durable before the answer is handed to
the transport. The transaction holds SQLite's write lock (``BEGIN IMMEDIATE``), so two messages
for one node, from two threads or two processes sharing the file, are decided one after the
other.

Tables (``rounds`` and the promise tables are append-only: triggers refuse deleting them and
freeze a round once it is closed):

- ``rounds``: every round this client was offered, by its round id (a u64, kept as text):
  the task's fingerprint, the client's id in it, when it was accepted, its deadline, how many
  commit attempts it made and how it closed (``outcome``, ``included``);
- ``events``: the audit, one row per thing the client did or was told (kinds in ``Event``);
- ``contributed``: the fingerprint of every task whose update left this client (masked), so
  no task's update enters two sums;
- ``dp_charges``: one row per masked input sent under distributed DP, by the deployment's DP
  fingerprint and the revealed-sum size it is charged at;
- ``exchanges``: the live round's transcript, each server message answered (its digest, its
  bytes) with the answer sent, for retransmissions and, where the transport cannot keep the
  round's client in memory, to rebuild it;
- ``secrets``: the live round's 32-byte seed and update, only where the transport asks for them
  to be kept (Flower runs messages in other processes); erased when the round closes, and the
  write-ahead log that held their pages is then checkpointed and truncated.

Sessions that span rounds (docs/SESSIONS.md) have tables of their own, and file their audit,
contributions and DP charges in the tables above under ``InSession(session, round)`` (round 0:
the set-up), so one budget and one "one update, one sum" rule hold across both kinds:

- ``sessions``: every session this client accepted (its ``SessionConfig``, taken once by its
  configuration id), its client id, when the set-up began by the client's clock, the session
  id once agreed, how many decisions it has made (``step``), its deadline and how it ended; at
  most one is live (rule S12);
- ``session_rounds``: each round of a session the client accepted: the task's fingerprint, the
  digest the client computed from what it trains on (``task_r``), ``ctx_r``, the digest of the
  ``RoundTask`` it came in, and how the round closed;
- ``session_exchanges``: the transcript of the live session per (session, round): each server
  message answered (digest, bytes) and the answer sent (empty for ``PeerSetupShares``), so a
  byte-identical retransmission gets the recorded answer;
- ``session_state``: the live session's client state (``secagg.schemes.masking.session.state``),
  only where the transport asks for secrets to be kept: keys and held shares, never a seed or an
  update (attack A1). Every change replaces it and checkpoints the log, like an erasure.

Bounded: when a round is accepted, the exchanges of every closed round are deleted (the
summary stays in ``rounds``/``events``); a session keeps the transcripts of its live round and
the one before. ``secure_delete`` overwrites what is deleted. The file is created with mode
0600: it is as sensitive as the identity key beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from secagg.errors import JournalError, one_line

__all__ = [
    "SCHEMA_VERSION",
    "Event",
    "InSession",
    "Journal",
    "JournalRound",
    "JournalSession",
    "JournalSessionRound",
    "JournalTransaction",
    "Where",
]

SCHEMA_VERSION = 2  # 2: sessions that span rounds (a journal of schema 1 is brought up to it)
_APPLICATION_ID = 0x5A6A4E4C  # "secagg journal": tells a journal from any other SQLite file
_BUSY_MS = 120_000  # a message waits this long for another one of the same node


class Event(StrEnum):
    """What a journal's audit rows record."""

    ACCEPTED = "accepted"  # the round's task passed every check: the client trains it
    COMMITTED = "committed"  # a commitment for an attempt (detail: the attempt)
    ADVERTISED = "advertised"  # fresh public keys for the session
    SHARED = "shared"  # sealed shares sent to neighbours (detail: how many)
    CONTRIBUTED = "contributed"  # the masked (or encrypted) input left the client
    SIGNED = "signed"  # active mode: the survivor set signed (detail: size and digest)
    REVEALED = "revealed"  # the unmask answer (detail: whose self-mask / key shares)
    DECRYPTED = "decrypted"  # CKKS key holder: the decryption of the round's sum
    RETRANSMITTED = "retransmitted"  # a request answered before, answered the same again
    LEFT = "left"  # the client left the round (detail: reason)
    EXPIRED = "expired"  # the deadline passed; the round's secrets are erased
    CLAIMED = "claimed"  # what the server said of the round's end (its word only)
    SET_UP = "set-up"  # a session's set-up shares taken (detail: how many live neighbours)


@dataclass(frozen=True)
class JournalRound:
    """One round as the journal holds it."""

    round_id: int
    task: bytes = field(repr=False)
    client_id: int
    accepted_at: float
    deadline: float | None
    attempts: int
    outcome: str | None  # None while the round is live
    included: bool
    members: tuple[int, ...] | None = field(default=None, repr=False)  # the transport's ids

    @property
    def live(self) -> bool:
        return self.outcome is None


@dataclass(frozen=True)
class InSession:
    """Round ``round_number`` of the journal's session ``session`` (0: its set-up): where a
    session files its audit, its contributions and its DP charges."""

    session: int
    round_number: int

    def __str__(self) -> str:
        return f"session {self.session}, round {self.round_number}"


# A one-shot round (its round id) or a round of a session.
Where = int | InSession


@dataclass(frozen=True)
class JournalSession:
    """One session as the journal holds it (``seq`` is the journal's own number for it)."""

    seq: int
    config_id: bytes = field(repr=False)
    config: bytes = field(repr=False)  # the SessionConfig, as it arrived
    client_id: int
    members: tuple[int, ...] | None = field(repr=False)
    set_up_at: float
    session_id: bytes | None = field(repr=False)
    attempts: int
    step: int  # decisions its client has made: a client held in memory at another step is stale
    deadline: float | None
    outcome: str | None  # None while the session is live

    @property
    def live(self) -> bool:
        return self.outcome is None


@dataclass(frozen=True)
class JournalSessionRound:
    """A round of a session the client accepted."""

    session: int
    round_number: int
    task: bytes = field(repr=False)  # the task's fingerprint: one update per task
    digest: bytes = field(repr=False)  # task_r, as the client computed it from what it trains
    context: bytes = field(repr=False)  # ctx_r
    request_digest: bytes = field(repr=False)  # the RoundTask it came in
    accepted_at: float
    outcome: str | None
    included: bool

    @property
    def live(self) -> bool:
        return self.outcome is None


@dataclass(frozen=True)
class Exchange:
    request_digest: bytes
    request: bytes = field(repr=False)
    answer: bytes = field(repr=False)


@dataclass(frozen=True)
class RoundSecrets:
    seed: bytes = field(repr=False)
    update: bytes = field(repr=False)  # float32, little-endian
    weight: int

    def __repr__(self) -> str:
        return "RoundSecrets(<secret>)"


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rounds (
    round TEXT PRIMARY KEY,
    task BLOB NOT NULL,
    client_id INTEGER NOT NULL CHECK (client_id >= 0),
    accepted_at REAL NOT NULL,
    deadline REAL,
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    outcome TEXT,
    included INTEGER NOT NULL DEFAULT 0 CHECK (included IN (0, 1)),
    members BLOB
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    round TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE contributed (task BLOB PRIMARY KEY, round TEXT NOT NULL);
CREATE TABLE dp_charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint BLOB NOT NULL,
    round TEXT NOT NULL UNIQUE,
    charged_at INTEGER NOT NULL CHECK (charged_at > 0)
);
CREATE TABLE exchanges (
    round TEXT NOT NULL,
    seq INTEGER NOT NULL,
    request_digest BLOB NOT NULL,
    request BLOB NOT NULL,
    answer BLOB NOT NULL,
    PRIMARY KEY (round, seq)
);
CREATE INDEX exchanges_by_request ON exchanges (request_digest);
CREATE TABLE secrets (
    round TEXT PRIMARY KEY,
    seed BLOB NOT NULL,
    update_bytes BLOB NOT NULL,
    weight INTEGER NOT NULL
);
CREATE TRIGGER meta_kept BEFORE DELETE ON meta
    BEGIN SELECT RAISE(ABORT, 'journal metadata is never deleted'); END;
CREATE TRIGGER rounds_kept BEFORE DELETE ON rounds
    BEGIN SELECT RAISE(ABORT, 'a journal round is never deleted'); END;
CREATE TRIGGER rounds_frozen BEFORE UPDATE ON rounds WHEN OLD.outcome IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'a closed journal round is frozen'); END;
CREATE TRIGGER rounds_identity BEFORE UPDATE OF round, task, client_id, accepted_at, members
    ON rounds
    BEGIN SELECT RAISE(ABORT, 'a journal round keeps its identity'); END;
CREATE TRIGGER events_kept BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the journal audit is append-only'); END;
CREATE TRIGGER events_frozen BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the journal audit is append-only'); END;
CREATE TRIGGER contributed_kept BEFORE DELETE ON contributed
    BEGIN SELECT RAISE(ABORT, 'a contributed task is never forgotten'); END;
CREATE TRIGGER contributed_frozen BEFORE UPDATE ON contributed
    BEGIN SELECT RAISE(ABORT, 'a contributed task is never forgotten'); END;
CREATE TRIGGER dp_kept BEFORE DELETE ON dp_charges
    BEGIN SELECT RAISE(ABORT, 'a privacy charge is never forgotten'); END;
CREATE TRIGGER dp_frozen BEFORE UPDATE ON dp_charges
    BEGIN SELECT RAISE(ABORT, 'a privacy charge is never forgotten'); END;
CREATE TRIGGER exchanges_frozen BEFORE UPDATE ON exchanges
    BEGIN SELECT RAISE(ABORT, 'an answer once sent is never changed'); END;
"""

# Schema 2: sessions that span rounds.
_SESSIONS_SCHEMA = """
CREATE TABLE sessions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    config_id BLOB NOT NULL UNIQUE,
    config BLOB NOT NULL,
    client_id INTEGER NOT NULL CHECK (client_id >= 0),
    members BLOB,
    set_up_at REAL NOT NULL,
    session_id BLOB,
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    step INTEGER NOT NULL DEFAULT 0 CHECK (step >= 0),
    deadline REAL,
    outcome TEXT
);
CREATE UNIQUE INDEX sessions_one_live ON sessions ((outcome IS NULL)) WHERE outcome IS NULL;
CREATE TABLE session_rounds (
    session INTEGER NOT NULL,
    round INTEGER NOT NULL CHECK (round >= 1),
    task BLOB NOT NULL,
    digest BLOB NOT NULL,
    context BLOB NOT NULL,
    request_digest BLOB NOT NULL,
    accepted_at REAL NOT NULL,
    outcome TEXT,
    included INTEGER NOT NULL DEFAULT 0 CHECK (included IN (0, 1)),
    PRIMARY KEY (session, round)
);
CREATE TABLE session_exchanges (
    session INTEGER NOT NULL,
    round INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    request_digest BLOB NOT NULL,
    request BLOB NOT NULL,
    answer BLOB NOT NULL,
    PRIMARY KEY (session, round, seq)
);
CREATE INDEX session_exchanges_by_request ON session_exchanges (request_digest);
CREATE TABLE session_state (session INTEGER PRIMARY KEY, state BLOB NOT NULL);
CREATE TRIGGER sessions_kept BEFORE DELETE ON sessions
    BEGIN SELECT RAISE(ABORT, 'a journal session is never deleted'); END;
CREATE TRIGGER sessions_frozen BEFORE UPDATE ON sessions WHEN OLD.outcome IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'a closed journal session is frozen'); END;
CREATE TRIGGER sessions_identity BEFORE UPDATE OF seq, config_id, config, client_id, members,
    set_up_at ON sessions
    BEGIN SELECT RAISE(ABORT, 'a journal session keeps its identity'); END;
CREATE TRIGGER sessions_agreed_once BEFORE UPDATE OF session_id ON sessions
    WHEN OLD.session_id IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'a session is agreed once'); END;
CREATE TRIGGER session_rounds_kept BEFORE DELETE ON session_rounds
    BEGIN SELECT RAISE(ABORT, 'a session round is never deleted'); END;
CREATE TRIGGER session_rounds_frozen BEFORE UPDATE ON session_rounds
    WHEN OLD.outcome IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'a closed session round is frozen'); END;
CREATE TRIGGER session_rounds_identity BEFORE UPDATE OF session, round, task, digest, context,
    request_digest, accepted_at ON session_rounds
    BEGIN SELECT RAISE(ABORT, 'a session round keeps its identity'); END;
CREATE TRIGGER session_exchanges_frozen BEFORE UPDATE ON session_exchanges
    BEGIN SELECT RAISE(ABORT, 'an answer once sent is never changed'); END;
"""

_META_FROZEN = """
CREATE TRIGGER meta_frozen BEFORE UPDATE ON meta
    BEGIN SELECT RAISE(ABORT, 'journal metadata is never changed'); END;
"""


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Journal:
    """One client's journal file (see the module docstring). Use ``transaction()`` for every
    read and write; one ``Journal`` may be shared by threads."""

    def __init__(self, path: Path, conn: sqlite3.Connection, holder: int | None = None) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()
        self._holder = holder  # the fd whose flock keeps other processes out (exclusive)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, exclusive: bool = False) -> Journal:
        """Open the journal at ``path``, creating it (mode 0600) if it does not exist.

        ``exclusive``: this process is the journal's only user for as long as it holds it
        (``secagg join``: a second client process with the same identity would otherwise
        close the first one's live round as restarted); another holder is a JournalError.
        """
        target = Path(path)
        if target.is_dir():
            raise JournalError(f"{target} is a folder, not a journal file")
        holder = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            problem = _exposure(os.fstat(fd))
            if problem is not None:
                os.close(fd)
                raise JournalError(f"refusing the journal {target}: {problem}")
            if exclusive:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise JournalError(
                        f"another client process holds the journal {target} (one process "
                        "per identity)"
                    ) from None
                holder = fd
            else:
                os.close(fd)
            conn = sqlite3.connect(
                target, isolation_level=None, check_same_thread=False, timeout=_BUSY_MS / 1000
            )
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal {target}: {_reason(exc)}") from None
        journal = cls(target, conn, holder)
        try:
            journal._prepare()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(f"{target} is not a usable journal: {_reason(exc)}") from None
        return journal

    def _prepare(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        conn.execute("PRAGMA secure_delete = ON")
        # A write-ahead log: one sync per decision (a rollback journal takes three). The log
        # holds the pages a round's secrets were on until it is checkpointed; closing a round
        # that kept secrets checkpoints and truncates it (``forget``).
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        with self._write() as cur:
            (app,) = cur.execute("PRAGMA application_id").fetchone()
            tables = cur.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app == 0 and tables == 0:
                for statement in _statements(_SCHEMA + _META_FROZEN + _SESSIONS_SCHEMA):
                    cur.execute(statement)
                cur.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                cur.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            elif app != _APPLICATION_ID:
                raise JournalError(f"{self.path} is not a secagg journal")
            else:
                row = cur.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if row is not None and row[0] == "1":
                    # Schema 1 had no sessions: add their tables, the rest is unchanged.
                    for statement in _statements(_SESSIONS_SCHEMA):
                        cur.execute(statement)
                    cur.execute("DROP TRIGGER meta_frozen")
                    cur.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
                    )
                    cur.execute(_META_FROZEN)
                    row = (str(SCHEMA_VERSION),)
                if row is None or row[0] != str(SCHEMA_VERSION):
                    raise JournalError(
                        f"{self.path} is a journal of schema {row[0] if row else '?'}; "
                        f"this secagg reads schema {SCHEMA_VERSION}"
                    )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._holder is not None:
                os.close(self._holder)  # releases the flock
                self._holder = None

    @contextlib.contextmanager
    def _write(self, keep_on: tuple[type[BaseException], ...] = ()) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JournalError(f"cannot lock the journal {self.path}: {_reason(exc)}") from None
            try:
                yield cur
            except keep_on:
                self._commit(cur)
                raise
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            self._commit(cur)

    def _commit(self, cur: sqlite3.Cursor) -> None:
        try:
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise JournalError(f"cannot write the journal {self.path}: {_reason(exc)}") from None

    @contextlib.contextmanager
    def transaction(
        self, keep_on: tuple[type[BaseException], ...] = ()
    ) -> Iterator[JournalTransaction]:
        """The node's exclusive lock, across threads and processes: everything done inside is
        one durable commit at the end, or nothing if an exception leaves it, except one of
        ``keep_on`` (a refusal is a decision too: what was written before it is kept)."""
        txn = None
        try:
            with self._write(keep_on) as cur:
                txn = JournalTransaction(cur)
                try:
                    yield txn
                except sqlite3.Error as exc:
                    raise JournalError(
                        f"cannot write the journal {self.path}: {_reason(exc)}"
                    ) from None
        finally:
            if txn is not None and txn.erased:
                self.forget()

    def forget(self) -> None:
        """Move the log into the database (where erased rows are overwritten) and empty it."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise JournalError(
                    f"cannot write the journal {self.path}: {_reason(exc)}"
                ) from None

    def rounds(self) -> list[JournalRound]:
        """Every round, oldest first (for the history)."""
        with self.transaction() as txn:
            return txn.all_rounds()

    def sessions(self) -> list[JournalSession]:
        """Every session, oldest first (for the history)."""
        with self.transaction() as txn:
            return txn.all_sessions()

    def events(self, where: Where) -> list[tuple[float, Event, str]]:
        with self.transaction() as txn:
            return txn.events(where)


class JournalTransaction:
    """What a client session reads and appends while it holds the journal's lock."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur
        self.erased = False  # a round's secrets were deleted: the log is emptied after commit

    # ----------------------------------------------------------------- rounds
    def round(self, round_id: int) -> JournalRound | None:
        row = self._cur.execute(
            f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE round = ?", (_key(round_id),)
        ).fetchone()
        return None if row is None else _round(row)

    def live_rounds(self) -> list[JournalRound]:
        rows = self._cur.execute(
            f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE outcome IS NULL ORDER BY accepted_at"
        ).fetchall()
        return [_round(row) for row in rows]

    def all_rounds(self) -> list[JournalRound]:
        rows = self._cur.execute(
            f"SELECT {_ROUND_COLUMNS} FROM rounds ORDER BY accepted_at, rowid"
        ).fetchall()
        return [_round(row) for row in rows]

    def add_round(
        self,
        round_id: int,
        task: bytes,
        client_id: int,
        now: float,
        members: tuple[int, ...] | None = None,
    ) -> None:
        self._cur.execute(
            "INSERT INTO rounds (round, task, client_id, accepted_at, members) "
            "VALUES (?, ?, ?, ?, ?)",
            (_key(round_id), task, client_id, now, _pack(members)),
        )

    def set_deadline(self, round_id: int, deadline: float | None) -> None:
        self._cur.execute(
            "UPDATE rounds SET deadline = ? WHERE round = ?", (deadline, _key(round_id))
        )

    def set_attempts(self, where: Where, attempts: int) -> None:
        if isinstance(where, InSession):
            self._cur.execute(
                "UPDATE sessions SET attempts = ? WHERE seq = ?", (attempts, where.session)
            )
            return
        self._cur.execute("UPDATE rounds SET attempts = ? WHERE round = ?", (attempts, _key(where)))

    def close_round(self, round_id: int, outcome: str, *, included: bool = False) -> None:
        """Close a live round for good and erase its secrets."""
        self._cur.execute(
            "UPDATE rounds SET outcome = ?, included = ?, deadline = NULL WHERE round = ?",
            (outcome, int(included), _key(round_id)),
        )
        deleted = self._cur.execute("DELETE FROM secrets WHERE round = ?", (_key(round_id),))
        self.erased = self.erased or deleted.rowcount > 0

    def compact(self) -> None:
        """Forget the transcripts of closed rounds and sessions (their summary stays)."""
        self._cur.execute(
            "DELETE FROM exchanges WHERE round IN (SELECT round FROM rounds "
            "WHERE outcome IS NOT NULL)"
        )
        self._cur.execute(
            "DELETE FROM session_exchanges WHERE session IN (SELECT seq FROM sessions "
            "WHERE outcome IS NOT NULL)"
        )
        deleted = self._cur.execute(
            "DELETE FROM session_state WHERE session NOT IN (SELECT seq FROM sessions "
            "WHERE outcome IS NULL)"
        )
        self.erased = self.erased or deleted.rowcount > 0
        deleted = self._cur.execute(
            "DELETE FROM secrets WHERE round NOT IN (SELECT round FROM rounds "
            "WHERE outcome IS NULL)"
        )
        self.erased = self.erased or deleted.rowcount > 0

    def pin(self, key: str, value: str) -> str | None:
        """Record ``value`` under ``key`` the first time; later, the value recorded then."""
        row = self._cur.execute("SELECT value FROM meta WHERE key = ?", (f"pin:{key}",)).fetchone()
        if row is None:
            self._cur.execute("INSERT INTO meta VALUES (?, ?)", (f"pin:{key}", value))
            return None
        return str(row[0])

    # ----------------------------------------------------------------- sessions
    def live_session(self) -> JournalSession | None:
        """The one live session (rule S12), if any."""
        row = self._cur.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE outcome IS NULL"
        ).fetchone()
        return None if row is None else _session(row)

    def session(self, seq: int) -> JournalSession | None:
        row = self._cur.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE seq = ?", (seq,)
        ).fetchone()
        return None if row is None else _session(row)

    def session_configured(self, config_id: bytes) -> JournalSession | None:
        """The session set up under this configuration id (each is taken once)."""
        row = self._cur.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE config_id = ?", (config_id,)
        ).fetchone()
        return None if row is None else _session(row)

    def all_sessions(self) -> list[JournalSession]:
        rows = self._cur.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions ORDER BY seq").fetchall()
        return [_session(row) for row in rows]

    def add_session(
        self,
        config_id: bytes,
        config: bytes,
        client_id: int,
        now: float,
        members: tuple[int, ...] | None = None,
    ) -> JournalSession:
        cur = self._cur.execute(
            "INSERT INTO sessions (config_id, config, client_id, members, set_up_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (config_id, config, client_id, _pack(members), now),
        )
        added = self.session(int(cur.lastrowid or 0))
        assert added is not None
        return added

    def session_agreed(self, seq: int, session_id: bytes) -> None:
        self._cur.execute("UPDATE sessions SET session_id = ? WHERE seq = ?", (session_id, seq))

    def session_stepped(self, seq: int, deadline: float | None) -> int:
        """One more decision of the session's client, and its new deadline: its new step."""
        self._cur.execute(
            "UPDATE sessions SET step = step + 1, deadline = ? WHERE seq = ?", (deadline, seq)
        )
        row = self._cur.execute("SELECT step FROM sessions WHERE seq = ?", (seq,)).fetchone()
        return int(row[0])

    def close_session(self, seq: int, outcome: str) -> None:
        """End a live session for good: its open round closes with it, its state is erased."""
        self._cur.execute(
            "UPDATE session_rounds SET outcome = ? WHERE session = ? AND outcome IS NULL",
            (outcome, seq),
        )
        self._cur.execute(
            "UPDATE sessions SET outcome = ?, deadline = NULL WHERE seq = ?", (outcome, seq)
        )
        deleted = self._cur.execute("DELETE FROM session_state WHERE session = ?", (seq,))
        self.erased = self.erased or deleted.rowcount > 0

    def session_state(self, seq: int) -> bytes | None:
        row = self._cur.execute(
            "SELECT state FROM session_state WHERE session = ?", (seq,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def keep_session_state(self, seq: int, state: bytes) -> None:
        """Replace the session's client state: the old one is deleted (overwritten on disk,
        ``secure_delete``) and the log emptied after the commit, as for an erasure."""
        deleted = self._cur.execute("DELETE FROM session_state WHERE session = ?", (seq,))
        self.erased = self.erased or deleted.rowcount > 0
        self._cur.execute("INSERT INTO session_state VALUES (?, ?)", (seq, state))

    def session_round(self, seq: int, round_number: int) -> JournalSessionRound | None:
        row = self._cur.execute(
            f"SELECT {_SESSION_ROUND_COLUMNS} FROM session_rounds WHERE session = ? AND round = ?",
            (seq, round_number),
        ).fetchone()
        return None if row is None else _session_round(row)

    def session_rounds(self, seq: int) -> list[JournalSessionRound]:
        rows = self._cur.execute(
            f"SELECT {_SESSION_ROUND_COLUMNS} FROM session_rounds WHERE session = ? ORDER BY round",
            (seq,),
        ).fetchall()
        return [_session_round(row) for row in rows]

    def add_session_round(self, accepted: JournalSessionRound) -> None:
        self._cur.execute(
            "INSERT INTO session_rounds (session, round, task, digest, context, request_digest, "
            "accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                accepted.session,
                accepted.round_number,
                accepted.task,
                accepted.digest,
                accepted.context,
                accepted.request_digest,
                accepted.accepted_at,
            ),
        )

    def close_session_round(self, seq: int, round_number: int, outcome: str) -> None:
        """Round ``round_number`` closed at this client: its unmask answer is journalled."""
        self._cur.execute(
            "UPDATE session_rounds SET outcome = ?, included = 1 WHERE session = ? AND round = ?",
            (outcome, seq, round_number),
        )

    def compact_session(self, seq: int, keep_from: int) -> None:
        """Forget the session's transcripts of the rounds before ``keep_from``."""
        self._cur.execute(
            "DELETE FROM session_exchanges WHERE session = ? AND round < ?", (seq, keep_from)
        )

    # ----------------------------------------------------------------- the audit
    def note(self, where: Where, now: float, kind: Event, detail: str = "") -> None:
        self._cur.execute(
            "INSERT INTO events (round, at, kind, detail) VALUES (?, ?, ?, ?)",
            (_key(where), now, kind.value, detail),
        )

    def events(self, where: Where) -> list[tuple[float, Event, str]]:
        rows = self._cur.execute(
            "SELECT at, kind, detail FROM events WHERE round = ? ORDER BY seq",
            (_key(where),),
        ).fetchall()
        return [(float(at), Event(kind), str(detail)) for at, kind, detail in rows]

    # ----------------------------------------------------------------- promises
    def contributed_in(self, task: bytes) -> Where | None:
        row = self._cur.execute("SELECT round FROM contributed WHERE task = ?", (task,)).fetchone()
        return None if row is None else _where(str(row[0]))

    def add_contribution(self, task: bytes, where: Where) -> None:
        self._cur.execute("INSERT INTO contributed VALUES (?, ?)", (task, _key(where)))

    def dp_charges(self, fingerprint: bytes) -> list[int]:
        rows = self._cur.execute(
            "SELECT charged_at FROM dp_charges WHERE fingerprint = ? ORDER BY seq", (fingerprint,)
        ).fetchall()
        return [int(count) for (count,) in rows]

    def add_dp_charge(self, fingerprint: bytes, where: Where, charged_at: int) -> None:
        self._cur.execute(
            "INSERT INTO dp_charges (fingerprint, round, charged_at) VALUES (?, ?, ?)",
            (fingerprint, _key(where), charged_at),
        )

    # ----------------------------------------------------------------- the live transcripts
    def exchanges(self, where: Where) -> list[Exchange]:
        table, match, key = _transcript(where)
        rows = self._cur.execute(
            f"SELECT request_digest, request, answer FROM {table} WHERE {match} ORDER BY seq", key
        ).fetchall()
        return [Exchange(bytes(d), bytes(r), bytes(a)) for d, r, a in rows]

    def exchanges_with(self, request_digest: bytes) -> list[tuple[Where, Exchange]]:
        """Every kept exchange whose request has this digest, with its round."""
        found: list[tuple[Where, Exchange]] = []
        rows = self._cur.execute(
            "SELECT round, request_digest, request, answer FROM exchanges "
            "WHERE request_digest = ? ORDER BY round, seq",
            (request_digest,),
        ).fetchall()
        found += [(int(k), Exchange(bytes(d), bytes(r), bytes(a))) for k, d, r, a in rows]
        rows = self._cur.execute(
            "SELECT session, round, request_digest, request, answer FROM session_exchanges "
            "WHERE request_digest = ? ORDER BY session, round, seq",
            (request_digest,),
        ).fetchall()
        found += [
            (InSession(int(s), int(k)), Exchange(bytes(d), bytes(r), bytes(a)))
            for s, k, d, r, a in rows
        ]
        return found

    def add_exchange(self, where: Where, request: bytes, answer: bytes) -> None:
        table, match, key = _transcript(where)
        (count,) = self._cur.execute(f"SELECT count(*) FROM {table} WHERE {match}", key).fetchone()
        self._cur.execute(
            f"INSERT INTO {table} VALUES ({', '.join('?' * (len(key) + 4))})",
            (*key, count, digest(request), request, answer),
        )

    def secrets(self, round_id: int) -> RoundSecrets | None:
        row = self._cur.execute(
            "SELECT seed, update_bytes, weight FROM secrets WHERE round = ?", (_key(round_id),)
        ).fetchone()
        return None if row is None else RoundSecrets(bytes(row[0]), bytes(row[1]), int(row[2]))

    def keep_secrets(self, round_id: int, secrets: RoundSecrets) -> None:
        self._cur.execute(
            "INSERT INTO secrets VALUES (?, ?, ?, ?)",
            (_key(round_id), secrets.seed, secrets.update, secrets.weight),
        )


_ROUND_COLUMNS = (
    "round, task, client_id, accepted_at, deadline, attempts, outcome, included, members"
)


_SESSION_COLUMNS = (
    "seq, config_id, config, client_id, members, set_up_at, session_id, attempts, step, "
    "deadline, outcome"
)
_SESSION_ROUND_COLUMNS = (
    "session, round, task, digest, context, request_digest, accepted_at, outcome, included"
)


def _pack(members: tuple[int, ...] | None) -> bytes | None:
    return None if members is None else b"".join(m.to_bytes(8, "big") for m in members)


def _unpack(members: object) -> tuple[int, ...] | None:
    if not isinstance(members, bytes):
        return None
    return tuple(int.from_bytes(members[i : i + 8], "big") for i in range(0, len(members), 8))


def _session(row: tuple[object, ...]) -> JournalSession:
    (
        seq,
        config_id,
        config,
        client_id,
        members,
        set_up_at,
        sid,
        attempts,
        step,
        deadline,
        outcome,
    ) = row
    assert isinstance(config_id, bytes) and isinstance(config, bytes)
    return JournalSession(
        seq=int(seq),  # type: ignore[call-overload]
        config_id=config_id,
        config=config,
        client_id=int(client_id),  # type: ignore[call-overload]
        members=_unpack(members),
        set_up_at=float(set_up_at),  # type: ignore[arg-type]
        session_id=None if sid is None else bytes(sid),  # type: ignore[call-overload]
        attempts=int(attempts),  # type: ignore[call-overload]
        step=int(step),  # type: ignore[call-overload]
        deadline=None if deadline is None else float(deadline),  # type: ignore[arg-type]
        outcome=None if outcome is None else str(outcome),
    )


def _session_round(row: tuple[object, ...]) -> JournalSessionRound:
    seq, number, task, task_digest, context, request, accepted_at, outcome, included = row
    assert isinstance(task, bytes) and isinstance(task_digest, bytes)
    assert isinstance(context, bytes) and isinstance(request, bytes)
    return JournalSessionRound(
        session=int(seq),  # type: ignore[call-overload]
        round_number=int(number),  # type: ignore[call-overload]
        task=task,
        digest=task_digest,
        context=context,
        request_digest=request,
        accepted_at=float(accepted_at),  # type: ignore[arg-type]
        outcome=None if outcome is None else str(outcome),
        included=bool(included),
    )


def _round(row: tuple[object, ...]) -> JournalRound:
    key, task, client_id, accepted_at, deadline, attempts, outcome, included, members = row
    assert isinstance(key, str) and isinstance(task, bytes)
    table = _unpack(members)
    return JournalRound(
        round_id=int(key),
        task=task,
        client_id=int(client_id),  # type: ignore[call-overload]
        accepted_at=float(accepted_at),  # type: ignore[arg-type]
        deadline=None if deadline is None else float(deadline),  # type: ignore[arg-type]
        attempts=int(attempts),  # type: ignore[call-overload]
        outcome=None if outcome is None else str(outcome),
        included=bool(included),
        members=table,
    )


def _key(where: Where) -> str:
    """The text a round is filed under: a one-shot round's id (a u64; SQLite's integers stop
    at 2^63 - 1), or ``s<session>/<round>`` for a round of a session."""
    if isinstance(where, InSession):
        return f"s{where.session}/{where.round_number}"
    if isinstance(where, bool) or not 0 <= where < 1 << 64:
        raise JournalError(f"a round id is a u64, not {where!r}")
    return str(int(where))


def _where(key: str) -> Where:
    if key.startswith("s"):
        session, _, number = key[1:].partition("/")
        return InSession(int(session), int(number))
    return int(key)


def _transcript(where: Where) -> tuple[str, str, tuple[object, ...]]:
    """The table that holds a round's exchanges, the condition that picks them, its values."""
    if isinstance(where, InSession):
        return "session_exchanges", "session = ? AND round = ?", (where.session, where.round_number)
    return "exchanges", "round = ?", (_key(where),)


def _statements(script: str) -> list[str]:
    """The schema's statements (triggers hold semicolons inside BEGIN .. END)."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        trigger = text.upper().startswith("CREATE TRIGGER")
        if text.endswith(";") and (not trigger or text.endswith("END;")):
            statements.append(text)
            current = []
    return statements


def _reason(exc: BaseException) -> str:
    return one_line(str(exc)) or type(exc).__name__


def _exposure(status: os.stat_result) -> str | None:
    """Why a journal file is not private to this user, or None. It holds a live round's seed
    and update, and SQLite gives its write-ahead log the file's own mode: a journal someone
    else owns, or others may read or write, is refused rather than used (or chmod-ed
    behind the operator's back)."""
    if status.st_uid != os.geteuid():
        return f"it belongs to user {status.st_uid}, not to this user ({os.geteuid()})"
    if status.st_mode & 0o077:
        return (
            f"its mode is {status.st_mode & 0o777:o}: others may read or change it "
            "(chmod 600 it if it is yours)"
        )
    return None
