"""Dropouts on demand: a mod that makes a node fail at one protocol stage of one round.

The failure is an error reply, which is what Flower sends the server for a ClientApp that
crashed; the server drops the node at that stage and the round goes on without it. (It is
an error reply rather than a raised exception so that a demonstration of ten dropouts does
not print ten tracebacks.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from secagg.flower import wire

log = logging.getLogger("secagg_digits.failures")

# The error code of a simulated failure (Flower's ClientApp exception code is 0).
SIMULATED_FAILURE = 5400
_ROUND = "example.failures"


def failing_mod(stage_of: Callable[[int, Context], str | None]) -> Mod:
    """A mod under which the node fails at the stage ``stage_of(server_round, context)``
    names (``commit``, ``reveal``, ``advertise``, ``share``, ``masked-input``, ``unmask``),
    or never where it returns None. ``server_round`` is the strategy's round number."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        record = msg.content.config_records.get(wire.RECORD_KEY) if msg.has_content() else None
        data = None if record is None else record.get(wire.MESSAGE)
        if not isinstance(data, bytes):
            return call_next(msg, ctxt)
        config = msg.content.config_records.get("config")
        if config is not None and "server-round" in config:
            # The message the node trains on (a one-shot round's first, or the one that opens
            # a session's round): the strategy's config rides along. A session's set-up
            # messages carry none: they count as the last round the node heard of.
            server_round = int(config["server-round"])  # type: ignore[arg-type]
            ctxt.state.config_records[_ROUND] = ConfigRecord({"server-round": server_round})
        known = ctxt.state.config_records.get(_ROUND)
        if known is None:
            return call_next(msg, ctxt)
        stage = stage_of(int(known["server-round"]), ctxt)
        if stage is not None and stage == wire.requested_stage(data).value:
            log.warning("node %d fails at %s, as it was told to", ctxt.node_id, stage)
            return Message(Error(SIMULATED_FAILURE, f"simulated failure at {stage}"), reply_to=msg)
        return call_next(msg, ctxt)

    return mod


def from_node_config(server_round: int, ctxt: Context) -> str | None:
    """The stage this node fails at, from its ``--node-config``: ``example-fail-round`` (the
    strategy's round) and ``example-fail-stage``."""
    if int(ctxt.node_config.get("example-fail-round", 0)) != server_round:
        return None
    stage = ctxt.node_config.get("example-fail-stage")
    return str(stage) if stage is not None else None
