"""Safe file writes for the service and the command line: nothing half-written, nothing
overwritten by surprise, private files private from their first instant.

- :func:`create_file` writes a new file and never replaces (nor follows a symlink at) an
  existing one; a private file is created with mode 0600.
- :func:`replace_file` and :func:`write_array` replace a public file atomically: the data is
  written and fsynced beside the target, then renamed over it, so a reader (or a crash) never
  sees half a file.
- :func:`check_writable` says, before any work is done, whether a file could be written
  there at all (a missing directory, a directory in the way, no permission): a round that
  takes minutes must not end in a path error.

Every failure is a ``ConfigurationError`` with one line naming the path and the reason.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError

__all__ = [
    "PRIVATE_MODE",
    "PUBLIC_MODE",
    "check_writable",
    "create_file",
    "make_directory",
    "read_file",
    "reason",
    "refuse_existing",
    "replace_file",
    "write_array",
]

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def reason(exc: OSError) -> str:
    """Why an operating-system call failed, in words (never a traceback)."""
    return exc.strerror or type(exc).__name__


def read_file(path: Path, what: str, *, limit: int | None = None) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them (larger files are refused)."""
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {reason(exc)}") from exc
    if limit is not None and len(data) > limit:
        raise ConfigurationError(f"{what} {path} is larger than {limit} bytes")
    return data


def refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise ConfigurationError(f"{path} already exists; refusing to overwrite it")


def make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create directory {directory}: {reason(exc)}") from exc


def create_file(path: Path, data: bytes, *, private: bool, durable: bool = False) -> None:
    """Write ``data`` to a new file; never overwrite (nor follow a symlink at) ``path``.

    A private file is created with mode 0600, so it is never readable by others, not even
    while being written; a public one gets 0644 less the umask.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, PRIVATE_MODE if private else PUBLIC_MODE)
    except FileExistsError:
        raise ConfigurationError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot create {path}: {reason(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if private and hasattr(os, "fchmod"):
                # The umask can only have removed bits; make it exactly 0600 as documented.
                os.fchmod(f.fileno(), PRIVATE_MODE)
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {path}: {reason(exc)}") from exc


def replace_file(path: Path, data: bytes) -> None:
    """Atomically replace (or create) the public file ``path`` with ``data``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigurationError(f"cannot write {path}: it is a directory")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    create_file(temporary, data, private=False, durable=True)
    try:
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {path}: {reason(exc)}") from exc


def write_array(path: Path, values: NDArray[np.generic]) -> None:
    """Write ``values`` to ``path`` as an ``.npy`` file, atomically (see module docstring).

    The name is used as given: ``np.save`` would append ``.npy`` to a name without it.
    """
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values), allow_pickle=False)
    replace_file(Path(path), buffer.getvalue())


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, a ``path`` that ``replace_file`` could not write."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ConfigurationError(f"cannot write {what} to {path}: it is a directory")
    if not parent.exists():
        raise ConfigurationError(f"cannot write {what} to {path}: {parent} does not exist")
    if not parent.is_dir():
        raise ConfigurationError(f"cannot write {what} to {path}: {parent} is not a directory")
    # The temporary file is created in the directory and renamed over the target: both need
    # write (and search) permission on the directory, not on the target.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"cannot write {what} to {path}: no permission to write in {parent}"
        )
