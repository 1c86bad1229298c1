"""Regenerating many masks on every core: the server's unmasking, split by vector ranges.

AES-CTR is seekable, so each worker process expands every mask for its own slice of the
vector only, and adds the slices straight into one shared-memory accumulator: no worker
repeats another's work and nothing is copied back but the result. Processes rather than
threads, since the AES call holds the GIL. The protocol core stays free of processes: the
driver hands ``MaskApplier`` to the ``Server``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.hazmat import prg

__all__ = ["MaskApplier", "usable_cores"]

# Below this much work (elements x masks) forking costs more than it saves.
_PARALLEL_WORK = 20_000_000
# Fewer elements than this per worker are not worth a process.
_MIN_RANGE = 1 << 15


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class MaskApplier:
    """Applies masks over ``workers`` processes (one per core by default).

    ``start_method="fork"`` is cheapest; a process that runs gRPC must not fork (gRPC's
    threads abort the child), so the coordinator uses ``"forkserver"``: a clean helper
    process, started once, forks the workers, and the keys reach them over a local pipe.
    """

    def __init__(self, workers: int | None = None, *, start_method: str = "fork") -> None:
        self.workers = usable_cores() if workers is None else max(1, workers)
        self.start_method = start_method

    def __call__(self, acc: NDArray[np.unsignedinteger[Any]], masks: Sequence[prg.Mask]) -> None:
        n = len(acc)
        workers = min(self.workers, max(1, n // _MIN_RANGE))
        if (
            workers <= 1
            or n * len(masks) < _PARALLEL_WORK
            or self.start_method not in multiprocessing.get_all_start_methods()
        ):
            prg.apply_masks(acc, masks)
            return
        shm = shared_memory.SharedMemory(create=True, size=acc.nbytes)
        try:
            shared: NDArray[np.unsignedinteger[Any]] = np.ndarray(
                acc.shape, dtype=acc.dtype, buffer=shm.buf
            )
            shared[:] = acc
            bounds = np.linspace(0, n, workers + 1).astype(int)
            context: Any = multiprocessing.get_context(self.start_method)  # fork or forkserver
            # Forked, the workers inherit the keys; through the fork server they travel over a
            # local pipe. Nothing secret is written anywhere.
            processes = [
                context.Process(
                    target=_apply_range, args=(shm.name, acc.shape, acc.dtype, lo, hi, masks)
                )
                for lo, hi in itertools.pairwise(bounds.tolist())
            ]
            for p in processes:
                p.start()
            for p in processes:
                p.join()
            failed = [p.exitcode for p in processes if p.exitcode != 0]
            if failed:
                raise RuntimeError(f"a mask worker failed (exit codes {failed})")
            acc[:] = shared
            del shared
        finally:
            shm.close()
            shm.unlink()


def _apply_range(
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    lo: int,
    hi: int,
    masks: Sequence[prg.Mask],
) -> None:
    shm = shared_memory.SharedMemory(name=name)
    try:
        view: NDArray[np.unsignedinteger[Any]] = np.ndarray(shape, dtype=dtype, buffer=shm.buf)
        part = view[lo:hi]
        prg.apply_masks(part, masks, start=lo)
        del part, view
    finally:
        shm.close()
