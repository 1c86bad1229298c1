"""Flower's Message API in one process: a ``Grid`` that hands each message to a real
``ClientApp`` with the node's own ``Context``.

It is the simulation engine without Ray and its queues (those run in ``test_simulation.py``):
every message and reply still goes through Flower's protobuf serialisation both ways, so
nothing is shared between server and client objects, and a ClientApp that raises yields an
error reply, as Flower's engine does. Fast enough for the many small rounds these tests run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

# Flower's code for "the ClientApp raised" (flwr.common.constant.ErrorCode).
CLIENT_APP_RAISED = 2


class LoopbackGrid(Grid):
    """Nodes ``nodes`` (node id -> partition id) each running ``app``; ``silent`` nodes
    never answer (as a node that crashed without a word)."""

    def __init__(self, app: ClientApp, nodes: dict[int, int]) -> None:
        self.app = app
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": pid, "num-partitions": len(nodes)},
                state=RecordDict(),
                run_config={},
            )
            for node, pid in nodes.items()
        }
        self.silent: set[int] = set()
        self.sent: list[Message] = []
        self.replies: list[Message] = []  # every reply, as the server side got it
        self.exchanges = 0  # send_and_receive calls
        self.bytes_down = 0
        self.bytes_up = 0
        self._run = Run.create_empty(run_id=1)

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self._run = run

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self._run

    def create_message(  # type: ignore[no-untyped-def]
        self, content, message_type, dst_node_id, group_id, ttl=None
    ):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the tests use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the tests use send_and_receive")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Sequence[Message]:
        self.exchanges += 1
        replies = []
        for message in messages:
            self.sent.append(message)
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = message.metadata.dst_node_id
            if node in self.silent:
                continue
            wire = message_to_proto(message)
            self.bytes_down += wire.ByteSize()
            delivered = message_from_proto(wire)
            try:
                reply = self.app(delivered, self.contexts[node])
            except Exception as exc:
                reply = Message(Error(CLIENT_APP_RAISED, repr(exc)), reply_to=delivered)
            back = message_to_proto(reply)
            self.bytes_up += back.ByteSize()
            replies.append(message_from_proto(back))
        self.replies.extend(replies)
        return replies
