"""The arrays a command reads (updates, weights) and writes (an aggregate): checked, with
each problem as the user's one line. Loaded by the commands that read them (numpy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from secagg.cli.output import FAILED_EXIT, fail
from secagg.errors import ConfigurationError
from secagg.service.files import check_writable, write_array
from secagg.simulate import InputSource, random_inputs

__all__ = ["check_target", "load_array", "load_inputs", "load_weights", "save_aggregate"]


def load_array(path: Path) -> tuple[np.ndarray, int, int]:
    """A float array of N x D updates (N >= 3), memory-mapped."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        fail(f"cannot read {path}: {exc}")
    if array.ndim != 2 or array.shape[0] < 3 or array.shape[1] < 1:
        fail(f"{path} must be a 2-D array with at least 3 rows; got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        fail(f"{path} must hold floats; got {array.dtype}")
    for i in range(array.shape[0]):  # row by row: the array may be larger than memory
        if not np.all(np.isfinite(array[i])):
            fail(f"{path}: row {i} holds NaN or infinity")
    return array, int(array.shape[0]), int(array.shape[1])


def load_inputs(
    clients: int | None, dim: int | None, inputs: Path | None, seed: int | None
) -> tuple[InputSource, int, int]:
    """Client i's update (a row of ``inputs``, else random), the clients and the dimension."""
    if inputs is not None:
        if clients is not None or dim is not None:
            fail("--inputs fixes the cohort and dimension: drop --clients and --dim")
        array, rows, columns = load_array(inputs)
        return (lambda i: np.asarray(array[i], dtype=np.float32)), rows, columns
    n = 100 if clients is None else clients
    d = 1000 if dim is None else dim
    if n < 3:
        fail("--clients must be at least 3")
    if d < 1:
        fail("--dim must be at least 1")
    return random_inputs(d, seed), n, d


def load_weights(weights: Path | None, n: int) -> np.ndarray | None:
    if weights is None:
        return None
    try:
        w = np.load(weights, allow_pickle=False)
    except (OSError, ValueError) as exc:
        fail(f"cannot read {weights}: {exc}")
    if w.shape != (n,):
        fail(f"{weights} must be a vector of {n} weights; got shape {w.shape}")
    return np.asarray(w, dtype=np.float64)


def check_target(path: Path) -> None:
    """Before the round: a round of minutes must not end in a path error."""
    try:
        check_writable(path, "the aggregate")
    except ConfigurationError as exc:
        fail(str(exc))


def save_aggregate(path: Path | None, aggregate: np.ndarray | None) -> None:
    """The revealed mean as float32 .npy (nothing when either is None)."""
    if path is None or aggregate is None:
        return
    try:
        write_array(path, aggregate.astype(np.float32))
    except ConfigurationError as exc:
        fail(str(exc), FAILED_EXIT)
