"""What a round ledger holds: its tables in each schema version, how an SQLite database is
recognised as a ledger of a version this secagg knows, and how an older one is upgraded.

Version 1 is the ledger before distributed DP; version 2 adds the ``dp_rounds`` table (one
privacy record per completed round of a DP deployment) and its trigger; version 3 adds the
``session_rounds`` table (a round run inside a session that spans rounds, docs/SESSIONS.md:
its number in the session; a round without a row there is a one-shot round). A writer creates the
newest version and upgrades an older one it knows in one transaction (its rounds are kept as
they are, with no privacy record); a reader reads every known version as it is. A newer
version, or one older than the first, is refused in one line naming the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from secagg.errors import LedgerError

__all__ = [
    "FIRST_VERSION",
    "PRIVACY_VERSION",
    "SCHEMA_VERSION",
    "SESSION_VERSION",
    "check_schema",
    "create_schema",
    "upgrade",
]

SCHEMA_VERSION = 3
FIRST_VERSION = 1  # the oldest schema a writer upgrades and a reader reads
PRIVACY_VERSION = 2  # the first with privacy records (distributed DP)
SESSION_VERSION = 3  # the first that tells a session's rounds from one-shot rounds
_TABLES = frozenset({"schema_version", "rounds", "cohort", "stage_timings", "drops", "aggregates"})
_FREEZE_TRIGGER = "finished_rounds_are_final"
_DP_TABLE = "dp_rounds"
_DP_FREEZE_TRIGGER = "privacy_records_are_final"
_SESSION_TABLE = "session_rounds"
_SESSION_FREEZE_TRIGGER = "session_rounds_are_final"
# What each version must hold, beyond version 1's.
_SINCE: dict[int, frozenset[str]] = {
    PRIVACY_VERSION: frozenset({_DP_TABLE, _DP_FREEZE_TRIGGER}),
    SESSION_VERSION: frozenset({_SESSION_TABLE, _SESSION_FREEZE_TRIGGER}),
}


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
# Version 3: sessions that span rounds. A table of its own, as version 2's: one row per round
# run inside a session, written with the round's row when it starts (a round's kind is known
# before its first message), so that no existing row changes on upgrade and every round before
# it reads as what it was, one-shot. The session itself is the round's ``session_id`` (the
# digest of the session's configuration: the same for every round of one session);
# ``round_number`` is the round's place in it, 1 for the round whose row also holds the
# session's set-up stages.
_SCHEMA_V3 = (
    f"""
    CREATE TABLE {_SESSION_TABLE} (
        round_id INTEGER PRIMARY KEY REFERENCES rounds (round_id),
        round_number INTEGER NOT NULL CHECK (round_number >= 1)
    )
    """,
    f"""
    CREATE TRIGGER {_SESSION_FREEZE_TRIGGER} BEFORE UPDATE ON {_SESSION_TABLE}
    BEGIN
        SELECT RAISE(ABORT, 'a session round cannot be changed');
    END
    """,
)
_SCHEMA_UPGRADES: dict[int, tuple[str, ...]] = {
    PRIVACY_VERSION: _SCHEMA_V2,
    SESSION_VERSION: _SCHEMA_V3,
}  # from the version before


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


def create_schema(conn: sqlite3.Connection) -> None:
    """Write the newest schema into an empty database, in one transaction."""
    with _schema_change(conn):
        for statement in (*_SCHEMA, *_SCHEMA_V2, *_SCHEMA_V3):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


def check_schema(conn: sqlite3.Connection, shown: str) -> int | None:
    """The schema version of a ledger of a version we know (``FIRST_VERSION`` up to ours),
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
    if version < FIRST_VERSION:
        raise LedgerError(
            f"{shown} has ledger schema version {version}, which this secagg does not know "
            f"(it reads versions {FIRST_VERSION} to {SCHEMA_VERSION})"
        )
    expected = _TABLES | {_FREEZE_TRIGGER}
    for since, added in _SINCE.items():
        if version >= since:
            expected |= added
    missing = sorted(expected - tables - triggers)
    if missing:
        raise LedgerError(f"{shown} is a damaged round ledger: {', '.join(missing)} missing")
    return int(version)


def upgrade(conn: sqlite3.Connection, version: int) -> None:
    """Bring a ledger of an older known ``version`` to ``SCHEMA_VERSION``, in one
    transaction: either every step lands or the file stays as it was."""
    with _schema_change(conn):
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _SCHEMA_UPGRADES[step]:
                conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
