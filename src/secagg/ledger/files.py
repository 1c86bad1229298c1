"""A round ledger's file: what is at its path, the writer's lock, creating a new ledger whole,
and opening it for the writer (upgrading an older schema) or for a reader.

Two ways to open a ledger:

- the writer (the coordinator: ``Ledger(path)``). It holds an exclusive lock on
  ``<path>.lock`` (``flock``, with its pid in the file) for as long as it is open, so a second
  coordinator started on the same ledger is refused before it can touch, let alone
  ``recover()``, the first one's running round. The kernel drops the lock when its holder dies,
  even by SIGKILL, so a restarted coordinator gets it back and recovers as before. A writer
  creates a new ledger only where no file exists, and creates it whole (beside the target,
  then linked into place) so that a crash never leaves half a ledger; it refuses an empty
  file unless asked to ``initialise`` it, and anything that is not a ledger of a schema
  version it knows, always. A ledger of an older version it knows is upgraded when the writer
  opens it, in one transaction (``secagg.ledger.schema``); an older secagg then refuses the
  file as newer than it understands, in one line.
- a reader (``secagg rounds`` and others: ``Ledger.open_readonly(path)``): SQLite's read-only
  mode, no lock, no recovery; the ledger is never created or changed (in a writable directory
  SQLite may leave its shared-memory file and an empty log beside it, which are harmless). It
  works on a read-only file, in a read-only directory and while a coordinator writes (WAL),
  and reads a ledger of an older version as it is.

Every failure here is a ``LedgerError`` with one line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
from enum import Enum
from pathlib import Path
from typing import BinaryIO, TypeAlias

from secagg.errors import LedgerError
from secagg.ledger.schema import SCHEMA_VERSION, check_schema, create_schema, upgrade

__all__ = [
    "LOCK_SUFFIX",
    "FileState",
    "configure_writer",
    "connect",
    "file_state",
    "open_reader",
    "open_writer",
    "resolve",
    "take_lock",
]

LOCK_SUFFIX = ".lock"  # the writer's lock file sits beside the ledger: <ledger>.lock
_SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# How SQLite says that a read-only connection cannot set up its shared memory beside a WAL
# database, because the directory is read-only: the cue to read the file as immutable.
_NO_SHARED_MEMORY = frozenset({"SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT"})
# A file as the file system last saw it: inode, size and modification time (ns). A reader
# that had to open its file as immutable compares it after every read.
FileState: TypeAlias = tuple[int, int, int]


class _Found(Enum):
    """What is at a ledger's path, judged from the file system and the file's first bytes."""

    NOTHING = "nothing"
    EMPTY_FILE = "empty file"
    SQLITE = "SQLite database"
    FOREIGN = "something else"


def resolve(path: str | Path) -> Path:
    """The ledger's file, as the lock and the openings find it."""
    # Symlinks resolved: two names for one ledger must find the same lock file.
    return Path(path).resolve()


def file_state(file: Path) -> FileState | None:
    """What ``file`` looks like now, or None where there is none."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _wal(file: Path) -> Path:
    return file.with_name(file.name + "-wal")


def take_lock(file: Path, shown: str) -> BinaryIO:
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


def connect(target: str, shown: str, *, uri: bool = False) -> sqlite3.Connection:
    """An SQLite connection to ``target`` (a path, or a URI), in autocommit."""
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is
        # exactly one method call and nothing is left open between calls.
        return sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the round ledger {shown}: {exc}") from None


def configure_writer(conn: sqlite3.Connection, shown: str, max_pages: int | None) -> None:
    """Set up the writer's connection: foreign keys, write-ahead logging, fsync at every
    commit, and the size cap if there is one."""
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
            create_schema(conn)
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


def open_writer(
    file: Path, shown: str, *, initialise: bool, max_pages: int | None
) -> sqlite3.Connection:
    """The writer's connection to the ledger at ``file`` (its lock already held): created
    whole where nothing is, an empty file only if asked to ``initialise`` it, an older
    schema upgraded; ``shown`` is how messages name it."""
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
    conn = connect(str(file), shown)
    try:
        # Look before touching anything: even switching the journal mode writes to the
        # file, and a database that is not ours must be left exactly as it was.
        conn.execute("BEGIN")
        version = check_schema(conn, shown)
        conn.execute("ROLLBACK")
        is_ledger = version is not None
        if not is_ledger and not initialise:
            raise LedgerError(
                f"{shown} is an SQLite database with nothing in it, not a round ledger: "
                "remove it, or initialise it on purpose"
            )
        configure_writer(conn, shown, max_pages)
        if is_ledger:
            # SQLite opens a file it may not write read-only without a word, and only the
            # first write would fail: find out now, with a change that is rolled back.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE schema_version SET version = version")
            conn.execute("ROLLBACK")
            if version is not None and version < SCHEMA_VERSION:
                upgrade(conn, version)
        else:
            create_schema(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerError(f"cannot use the round ledger {shown}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def open_reader(file: Path, shown: str) -> tuple[sqlite3.Connection, FileState | None, int]:
    """A reader's connection to the ledger at ``file``, what the file looked like if it had
    to be opened as immutable (a read-only directory, no log: compare after every read), and
    its schema version."""
    found = _identify(file, shown)
    if found is _Found.NOTHING:
        raise LedgerError(f"no round ledger at {shown}: the file does not exist")
    if found is _Found.EMPTY_FILE:
        raise LedgerError(f"{shown} is an empty file, not a round ledger")
    if found is _Found.FOREIGN:
        raise LedgerError(f"{shown} is not an SQLite database, so not a round ledger")
    # mode=ro: SQLite itself refuses every write, and never creates the file.
    conn = connect(file.as_uri() + "?mode=ro", shown, uri=True)
    frozen: FileState | None = None
    try:
        try:
            version = check_schema(conn, shown)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorname not in _NO_SHARED_MEMORY | {"SQLITE_CANTOPEN"}:
                raise
            conn.close()
            # The directory is read-only, so SQLite cannot create the shared-memory file
            # that WAL readers use. A log beside the file holds rounds the file lacks: say
            # so rather than read the file alone and silently miss them.
            logged = (file_state(_wal(file)) or (0, 0, 0))[1] > 0
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
            frozen = file_state(file)
            if frozen is None:
                raise LedgerError(f"no round ledger at {shown}: the file is gone") from None
            conn = connect(file.as_uri() + "?mode=ro&immutable=1", shown, uri=True)
            version = check_schema(conn, shown)
        if version is None:
            raise LedgerError(f"{shown} is an SQLite database with nothing in it, not a ledger")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerError(f"cannot read the round ledger {shown}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn, frozen, version
