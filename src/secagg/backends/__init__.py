"""Where a simulated round's clients and the server's mask regeneration run.

``Backend.PROCESS`` (the default) runs them in this process or in worker processes forked on
this machine (:class:`secagg.cohort.Cohort`, :class:`secagg.parallel.MaskApplier`);
``Backend.RAY`` runs them on a Ray cluster, local or spread over several hosts
(:mod:`secagg.backends.ray_backend`, installed with the ``[ray]`` extra). The round itself --
the server, the round engine, every message encoded and decoded -- is the same on both, and so
is the result, bit for bit, for the same seed.

Ray is imported only when it is chosen, so nothing here costs anything to a user without it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Protocol

from secagg.cohort import ClientGroup, Cohort, Delivery, Reply, Tally
from secagg.errors import ConfigurationError
from secagg.extras import require
from secagg.hazmat import prg
from secagg.parallel import MaskApplier

__all__ = ["Backend", "ClientCohort", "mask_applier", "open_cohort"]


class Backend(enum.StrEnum):
    """Where the simulated clients run."""

    PROCESS = "process"  # this machine: in process, or forked worker processes
    RAY = "ray"  # a Ray cluster (RAY_ADDRESS, or a local one sized to this machine)

    @classmethod
    def parse(cls, value: Backend | str) -> Backend:
        if isinstance(value, Backend):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(b.value for b in cls)
            raise ConfigurationError(
                f"unknown backend {value!r}; choose one of {choices}"
            ) from None


class ClientCohort(Protocol):
    """What the simulator needs of the clients of a round, wherever they run."""

    def __enter__(self) -> ClientCohort: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def answer(self, deliveries: Mapping[int, Delivery]) -> Iterator[Reply]: ...

    def tally(self) -> Tally: ...

    def close(self) -> None: ...


GroupFactory = Callable[[Sequence[int]], ClientGroup]


def open_cohort(
    backend: Backend, group_of: GroupFactory, ids: Sequence[int], workers: int | None
) -> ClientCohort:
    """The round's clients on ``backend``: ``workers`` processes (process) or batches (Ray;
    default one per CPU of the cluster). Use it as a context manager."""
    if backend is Backend.RAY:
        require("ray", "the ray backend")
        from secagg.backends.ray_backend import RayCohort

        return RayCohort(group_of, ids, workers)
    return Cohort(group_of, ids, 1 if workers is None else workers)


def mask_applier(backend: Backend, workers: int | None) -> prg.ApplyMasks:
    """How the server regenerates masks on ``backend`` (by vector ranges, in parallel)."""
    if backend is Backend.RAY:
        require("ray", "the ray backend")
        from secagg.backends.ray_backend import RayMaskApplier

        return RayMaskApplier()
    return MaskApplier(workers)
