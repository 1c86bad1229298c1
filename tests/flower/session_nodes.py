"""The nodes of the session tests in Flower's simulation engine (``test_sessions.py``,
``test_session_attacks.py``): real ``ClientApp``s carrying the unmodified ``SecAggMod``, each
built from what the operator provisioned on the node, with its journal in the node's folder.

Everything the nodes run is here (Ray's actor processes import this module by name); the
ServerApp runs in the test's process, so what the two sides share is a folder: the operator's
provisioning, the nodes' journals, the record of what each node's app trained, and the files
the test's hooks wait on or act on (a node told to fail at a stage, a slow evaluation's end).

Two deployments, by name: ``semi-honest`` (the complete graph, t = 3: on seven nodes k = 6,
so a server that splits a victim's neighbours three and three gets t shares on each side,
which is what semi-honest mode concedes) and ``active`` (signed keys and survivor sets, the
complete graph of five, t = 3: 2t > k, so no split gives both sides t holders).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from numpy.typing import NDArray

from secagg import Params, Protocol, ServerModel
from secagg.errors import DecodeError
from secagg.flower import SecAggMod, wire
from secagg.hazmat.keys import Ed25519SigningKey
from tests.flower.helpers import DIM, delta, weight
from tests.waiting import wait_until

SEMI_HONEST = Params(
    dim=DIM,
    max_clients=8,
    clip=1.0,
    value_bits=16,
    max_weight=100,
    protocol=Protocol.SECAGG,
    threshold=3,
)
ACTIVE = Params(
    dim=DIM,
    max_clients=8,
    clip=1.0,
    value_bits=16,
    max_weight=100,
    server_model=ServerModel.SEMI_MALICIOUS,
    degree=4,
    threshold=3,
    min_cohort=3,
)
GROUPS = {"semi-honest": SEMI_HONEST, "active": ACTIVE}
WAIT = 120.0  # the bound on any wait: only a hang ever reaches it
STEP = SEMI_HONEST.quantizer.error_bound()  # per coordinate, on the mean of the updates
FLOAT32 = 1e-6  # the aggregate is written back as float32 (|values| < 2)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition`` holds (a hang becomes an error after ``WAIT`` seconds)."""
    wait_until(condition, what, timeout=WAIT, interval=0.005)


def describe(msg: Message) -> str:
    """What a message asks of a node, for the app's own log."""
    kind = str(msg.metadata.message_type).split(".", 1)[0]
    record = msg.content.config_records.get(wire.RECORD_KEY) if msg.has_content() else None
    if kind != MessageType.TRAIN or record is None:
        return kind
    data = record.get(wire.MESSAGE)
    try:
        return f"train:{wire.requested_stage(data).value}"
    except (DecodeError, TypeError):
        return "train:?"


# ============================================================================ provisioning
def provision_path(folder: Path, node: int) -> Path:
    return folder / "provision" / f"node-{node}.json"


def journal_folder(folder: Path, group: str) -> Path:
    return folder / "journals" / group


def provision(folder: Path, groups: dict[str, Sequence[int]]) -> dict[int, bytes]:
    """The operator's step, out of band and before any message: each node's deployment and
    allow-list, and in active mode its identity key and the nodes' pki. Returns the pki."""
    (folder / "provision").mkdir(exist_ok=True)
    pki: dict[int, bytes] = {}
    for group, nodes in groups.items():
        params = GROUPS[group]
        private = {n: secrets.token_bytes(32) for n in nodes} if params.active else {}
        keys = {n: Ed25519SigningKey.from_private_bytes(k).public for n, k in private.items()}
        pki.update(keys)
        for n in nodes:
            plan = {
                "group": group,
                "identity": private[n].hex() if private else None,
                "pki": {str(m): p.hex() for m, p in keys.items()} if keys else None,
                "allowed": list(nodes),
            }
            provision_path(folder, n).write_text(json.dumps(plan))
    return pki


def provisioned_mod(folder: Path, node: int) -> SecAggMod:
    """A node's ``SecAggMod`` as its operator provisioned it."""
    plan = json.loads(provision_path(folder, node).read_text())
    group = plan["group"]
    journal = journal_folder(folder, group)
    if plan["identity"] is None:
        return SecAggMod(GROUPS[group], journal=journal, allowed_nodes=plan["allowed"])
    return SecAggMod(
        GROUPS[group],
        journal=journal,
        identity=Ed25519SigningKey.from_private_bytes(bytes.fromhex(plan["identity"])),
        pki={int(n): bytes.fromhex(k) for n, k in plan["pki"].items()},
    )


# ============================================================================ the mods
def app_log(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """An honest app keeping a log of what it was asked in its ``Context`` (what ``Context``
    is for): the log shows when the engine rolls the node's ``Context`` back."""
    record = ctxt.state.config_records.get("app.log")
    seen = [*(record["seen"] if record is not None else []), describe(msg)]
    ctxt.state.config_records["app.log"] = ConfigRecord({"seen": seen})
    return call_next(msg, ctxt)


@dataclass(frozen=True)
class Failing:
    """A node fails (its ClientApp raises: an error reply, as a crashed node's) once, when it
    is asked for the stage named in ``fail-<node>``; the file goes with the failure."""

    folder: Path

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        order = self.folder / f"fail-{ctxt.node_id}"
        if order.exists() and describe(msg) == f"train:{order.read_text()}":
            order.unlink()
            raise RuntimeError(f"node {ctxt.node_id} fails at {describe(msg)}")
        return call_next(msg, ctxt)


@dataclass(frozen=True)
class Door:
    """The test's hold on a node's door: while ``hold-<node>`` names a count, each train
    message waits inside the node until that many are in (the engine delivering them at once,
    at the attacker's choice of timing)."""

    folder: Path

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        hold = self.folder / f"hold-{ctxt.node_id}"
        if str(msg.metadata.message_type).startswith(MessageType.TRAIN) and hold.exists():
            count = int(hold.read_text())
            (self.folder / f"inside-{ctxt.node_id}-{os.urandom(8).hex()}").touch()
            wait_for(
                lambda: len(list(self.folder.glob(f"inside-{ctxt.node_id}-*"))) >= count,
                f"{count} messages inside node {ctxt.node_id}",
            )
        return call_next(msg, ctxt)


@dataclass(frozen=True)
class ProvisionedSecAgg:
    """Each node's ``SecAggMod``, unmodified, as its operator provisioned it."""

    folder: Path

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        return provisioned_mod(self.folder, ctxt.node_id)(msg, ctxt, call_next)


def client_app(folder: Path) -> ClientApp:
    """Trains ``update(partition, k)`` for the k-th time it trains a step (recording each
    step in the node's folder: a node trains each step once unless its journal is rolled
    back, and a retrained step gives another update, as a fresh draw of data would), evaluates
    slowly if the test asks it to (until it ends the evaluation), and answers queries with
    its partition and its Context's log."""
    app = ClientApp(mods=[app_log, Failing(folder), Door(folder), ProvisionedSecAgg(folder)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        step = int(msg.content["config"]["server-round"])
        record = folder / f"trained-{context.node_id}"
        before = record.read_text().split().count(str(step)) if record.exists() else 0
        with record.open("a") as log:
            log.write(f"{step}\n")
        arrays = msg.content["arrays"]
        layout = wire.ArrayLayout.of(arrays)
        new = layout.unflatten(layout.flatten(arrays) + update(partition, before), like=arrays)
        metrics = MetricRecord({"num-examples": weight(partition)})
        return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        # A slow evaluation: it ends when the test releases it.
        (folder / f"evaluating-{context.node_id}").touch()
        release = folder / f"release-{context.node_id}"
        wait_for(release.exists, f"the end of node {context.node_id}'s evaluation")
        return Message(RecordDict({"metrics": MetricRecord({"loss": 0.5})}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        record = context.state.config_records.get("app.log")
        seen = list(record["seen"]) if record is not None else []
        info = ConfigRecord({"partition-id": int(context.node_config["partition-id"])})
        info["seen"] = seen or [""]
        return Message(RecordDict({"info": info}), reply_to=msg)

    return app


RETRAINED = 0.125  # what a step trained again adds to each value of the update


def update(partition: int, before: int = 0) -> NDArray[np.float64]:
    """A node's update for a step it trained ``before`` times already."""
    return delta(partition) + RETRAINED * before


def trained(folder: Path, nodes: Sequence[int]) -> dict[int, list[int]]:
    """The steps each node's app trained, from its own record."""
    out = {}
    for n in nodes:
        path = folder / f"trained-{n}"
        out[n] = [int(s) for s in path.read_text().split()] if path.exists() else []
    return out


def simulation_env(root: Path) -> None:
    """Ray's workers import the tests' modules by name: they start from this environment."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p
    )
