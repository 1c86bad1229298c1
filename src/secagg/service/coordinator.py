"""The coordinator: admits authenticated clients and runs secure-aggregation rounds.

It is two parts with one job each, put together here:

- ``secagg.service.transport``: the gRPC servicer, the challenge handshake, the connections
  and their byte counts;
- ``secagg.service.rounds``: the round driver (the deployment's scheme through the round
  engine, the deadlines, the ledger, the operator metrics).

Embed it with ``await coordinator.start()``, then ``await coordinator.run_round(model)`` as
often as needed, then ``await coordinator.stop()``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import numpy as np
from numpy.typing import NDArray

from secagg.ledger import Ledger
from secagg.protocol.stages import Stage
from secagg.schemes.base import Scheme
from secagg.schemes.masking.parameters import Params
from secagg.service.identity import AllowList
from secagg.service.metrics import Metrics, NullMetrics
from secagg.service.rounds import NoCohort, RoundDriver, RoundSummary
from secagg.service.scheme_sides import coordinator_sessions, masking_coordinator
from secagg.service.sessions import SessionSide
from secagg.service.settings import CoordinatorSettings
from secagg.service.transport import Transport

__all__ = ["Coordinator", "CoordinatorSettings", "NoCohort", "RoundSummary"]

log = logging.getLogger("secagg.coordinator")


class Coordinator:
    """A coordinator: ``start``, ``run_round`` (as often as needed), ``stop``.

    ``scheme`` is the coordinator's side of the deployment's scheme (``make_coordinator``
    builds it from deployment.toml); by default, masking under ``settings.params`` with the
    allow-list as PKI. ``on_stage(round_id, stage)`` is called (and awaited, if it returns an
    awaitable) as each stage of a round starts. ``metrics`` records what an operator sees
    (``secagg.service.metrics``); by default nothing is recorded. With ``session_rounds`` set,
    rounds run in sessions that span rounds (``secagg.service.sessions``), whose side of the
    deployment ``sessions`` is (by default, masking's under ``settings.params``).
    """

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        ledger: Ledger,
        allow_list: AllowList,
        tls: tuple[bytes, bytes] | None,
        scheme: Scheme | None = None,
        on_stage: Callable[[int, Stage], Awaitable[None] | None] | None = None,
        metrics: Metrics | None = None,
        sessions: SessionSide | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.allow_list = allow_list
        self.metrics: Metrics = NullMetrics() if metrics is None else metrics
        if scheme is None:  # masking's, the one scheme that needs no key files
            scheme = masking_coordinator(
                Params.of(settings.params, "a coordinator built without its scheme"), allow_list
            )
        if sessions is None:
            sessions = coordinator_sessions(settings, allow_list)
        self._transport = Transport(settings, allow_list=allow_list, tls=tls, metrics=self.metrics)
        self._rounds = RoundDriver(
            settings,
            self._transport,
            ledger=ledger,
            scheme=scheme,
            metrics=self.metrics,
            on_stage=on_stage,
            sessions=sessions,
        )

    async def start(self) -> int:
        """Recover rounds a previous coordinator left running, then listen; the port."""
        recovered = self.ledger.recover()
        if recovered:
            log.warning("rounds %s were left running by a previous coordinator: aborted", recovered)
        return await self._transport.start()

    async def stop(self, grace: float = 1.0) -> None:
        await self._transport.stop(grace)

    @property
    def transport(self) -> Transport:
        """The connections (for tests and tools that look at them; rounds go through here)."""
        return self._transport

    @property
    def port(self) -> int:
        return self._transport.port

    @property
    def connected(self) -> frozenset[int]:
        return self._transport.connected

    @property
    def rejections(self) -> list[str]:
        return self._transport.rejections

    async def wait_for_clients(self, count: int, timeout: float) -> bool:
        """Until ``count`` clients are connected (True) or the timeout passes (False)."""
        return await self._transport.wait_for_clients(count, timeout)

    async def run_round(
        self,
        model: NDArray[np.floating],
        *,
        step: int = 0,
        cohort: tuple[int, ...] | None = None,
    ) -> RoundSummary:
        """One round (see ``RoundDriver.run``): ``NoCohort`` if too few clients connect."""
        return await self._rounds.run(model, step=step, cohort=cohort)
