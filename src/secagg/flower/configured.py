"""A ``SecAggMod`` configured by each SuperNode's own ``--node-config``, for deployment.

In Flower's deployment engine the ClientApp's code arrives from the SuperLink in the app's
bundle, but a node's expectations must not: whoever runs ``flwr run`` chooses the run config,
so a mod built from it would let the server choose what the node checks (its minimum cohort,
its allow-list). ``SecAggMod.from_node_config()`` builds the mod instead from what the node's
operator set when starting the SuperNode::

    flower-supernode ... --node-config 'secagg-deployment="/etc/secagg/deployment.toml"
        secagg-nodes="/etc/secagg/nodes.toml" secagg-journal="/var/lib/secagg"
        secagg-identity="/etc/secagg/node-<id>.key"'

- ``secagg-deployment``: the deployment's ``deployment.toml`` (its ``[round]`` and ``[dp]``
  sections: the ``Params`` the server's side loads from the same file);
- ``secagg-nodes``: ``nodes.toml`` (``secagg.flower.nodes``): the allow-list of node ids and,
  in active mode, the pki;
- ``secagg-journal``: the node-local folder of its journal;
- ``secagg-identity`` (active mode only): this node's ``node-<id>.key``, whose id must be the
  node id the SuperLink gives this SuperNode;
- ``secagg-session-rounds`` and ``secagg-session-seconds`` (optional integers): the node's caps
  on a session that spans rounds (docs/SESSIONS.md, rule S12): a session the server sets up
  for more rounds, or to live longer, is refused. By default 100 rounds and 7 days.

A node missing any of them, or whose files do not load, answers every ``TRAIN`` message with
an error reply naming what is wrong (one line, also logged) and trains nothing.

**Simulation.** In Flower's simulation engine (``flwr run`` against a local simulation
SuperLink) nodes have no ``--node-config`` of their own, and every node is the app's: there,
and only where the environment of the processes running the ClientApps says so by name
(``SECAGG_FLOWER_SIMULATION=1``, which ``flwr run`` passes down to the simulation it starts;
a server cannot set a node's environment), a node whose config is exactly what the
simulation engine sets (``partition-id`` and ``num-partitions``, no secagg key) runs with
``simulation_params(node_config)``, any node id as a peer, and its journal in the system's
temporary folder (one folder per run). Without the variable such a node is misconfigured, as above.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from secagg.errors import ConfigurationError, one_line
from secagg.flower.client import (
    DEFAULT_STAGE_TIMEOUT,
    REFUSED_PLAINTEXT,
    ClientAppCallable,
    SecAggMod,
)
from secagg.flower.nodes import FlowerNodes, NodeIdentity
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.session.terms import DEFAULT_MAX_ROUNDS, DEFAULT_MAX_SECONDS
from secagg.service.config import DeploymentConfig

try:
    from flwr.app import Context, Error, Message, MessageType
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("secagg.flower needs Flower: pip install 'secagg[flower]'") from exc

__all__ = [
    "DEPLOYMENT_KEY",
    "IDENTITY_KEY",
    "JOURNAL_KEY",
    "MISCONFIGURED",
    "NODES_KEY",
    "SESSION_ROUNDS_KEY",
    "SESSION_SECONDS_KEY",
    "SIMULATION_ENV",
    "NodeConfiguredMod",
    "load_params",
]

DEPLOYMENT_KEY = "secagg-deployment"
NODES_KEY = "secagg-nodes"
JOURNAL_KEY = "secagg-journal"
IDENTITY_KEY = "secagg-identity"
SESSION_ROUNDS_KEY = "secagg-session-rounds"
SESSION_SECONDS_KEY = "secagg-session-seconds"
SIMULATION_ENV = "SECAGG_FLOWER_SIMULATION"
# Error code of the reply of a node whose own secagg configuration does not load (beside
# REFUSED_PLAINTEXT: both say "refused by secagg", this one "fix the node").
MISCONFIGURED = REFUSED_PLAINTEXT + 1

log = logging.getLogger("secagg.flower.client")

# deployment, nodes, journal, identity, the session caps (rounds, seconds)
_Settings = tuple[str, str, str, str | None, int, int]
# What Flower's simulation engine puts in a simulated node's config, and nothing else: a
# node whose config says more (a secagg key with a typo, say) is a deployment node, so it is
# refused until its config is complete rather than quietly simulated.
_SIMULATION_KEYS = frozenset({"partition-id", "num-partitions"})
# The mods this process built, by what they were built from: module state, because Flower's
# simulation pickles the ClientApp (and so this mod) with every message it ships.
_MODS: dict[tuple[object, ...], SecAggMod] = {}
_LOCK = threading.Lock()


def load_params(path: str | Path) -> Params:
    """The ``Params`` of a deployment file's ``[round]`` (and ``[dp]``) sections: what both
    the ServerApp and every node load, each from its own copy."""
    return Params.of(DeploymentConfig.load(Path(path)).params, f"{path}: the Flower integration")


class NodeConfiguredMod:
    """A Flower ``Mod`` that builds this node's ``SecAggMod`` from its ``node_config``."""

    def __init__(
        self,
        *,
        weight_key: str = "num-examples",
        stage_timeout: float | None = None,
        simulation_params: Callable[[Mapping[str, object]], Params] | None = None,
    ):
        self.weight_key = weight_key
        self.stage_timeout = stage_timeout
        self.simulation_params = simulation_params

    def __repr__(self) -> str:
        return "SecAggMod.from_node_config()"

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if str(msg.metadata.message_type).split(".", 1)[0] != MessageType.TRAIN:
            try:  # a configured node's mod erases an expired round's secrets, then passes it
                mod = self.mod_for(ctxt.node_id, ctxt.node_config, ctxt.run_id)
            except ConfigurationError:
                return call_next(msg, ctxt)
            return mod(msg, ctxt, call_next)
        try:
            mod = self.mod_for(ctxt.node_id, ctxt.node_config, ctxt.run_id)
        except ConfigurationError as exc:
            detail = one_line(str(exc), 300)
            log.error("node %d: secagg is not configured: %s", ctxt.node_id, detail)
            return Message(Error(MISCONFIGURED, f"secagg: {detail}"), reply_to=msg)
        return mod(msg, ctxt, call_next)

    def mod_for(self, node_id: int, node_config: Mapping[str, object], run_id: int) -> SecAggMod:
        """The node's mod, built once per process from the files its config names."""
        simulated = self._simulated_params()
        if simulated is not None and set(node_config) == _SIMULATION_KEYS:
            params = simulated(node_config)
            key: tuple[object, ...] = ("simulation", run_id, params)
            return self._cached(key, lambda: self._simulation_mod(params, run_id))
        settings = _settings(node_config)
        return self._cached((node_id, settings), lambda: self._build(node_id, settings))

    def _cached(self, key: tuple[object, ...], build: Callable[[], SecAggMod]) -> SecAggMod:
        key = (*key, self.weight_key, self.stage_timeout)
        with _LOCK:
            mod = _MODS.get(key)
            if mod is None:
                mod = _MODS[key] = build()
            return mod

    @property
    def _stage_timeout(self) -> float:
        return DEFAULT_STAGE_TIMEOUT if self.stage_timeout is None else self.stage_timeout

    def _simulated_params(self) -> Callable[[Mapping[str, object]], Params] | None:
        """The simulation's params, where this process's environment opts in (else None)."""
        return self.simulation_params if os.environ.get(SIMULATION_ENV) == "1" else None

    def _simulation_mod(self, params: Params, run_id: int) -> SecAggMod:
        # One folder per run, shared by the processes that run its messages.
        folder = Path(tempfile.gettempdir()) / "secagg-flower-simulation" / str(run_id)
        return SecAggMod(
            params,
            journal=folder,
            allow_any_node=True,
            weight_key=self.weight_key,
            stage_timeout=self._stage_timeout,
        )

    def _build(self, node_id: int, settings: _Settings) -> SecAggMod:
        deployment, nodes_file, journal, identity_file, session_rounds, session_seconds = settings
        params = load_params(deployment)
        if params.dp is None:
            log.warning(
                "node %d: %s has no [dp]: a server that sends the same model to two cohorts "
                "that differ by this node learns its update from the two sums (the threat "
                "model's differencing); distributed DP bounds what that reveals",
                node_id,
                deployment,
            )
        nodes = FlowerNodes.load(Path(nodes_file))
        signing_key, pki = None, None
        if params.active:
            signing_key, pki = _active_identity(node_id, identity_file, nodes, nodes_file)
        elif identity_file is not None:
            log.warning(
                "node %d: %s is unused: the deployment is semi-honest", node_id, IDENTITY_KEY
            )
        return SecAggMod(
            params,
            journal=journal,
            allowed_nodes=nodes.node_ids,
            identity=signing_key,
            pki=pki,
            weight_key=self.weight_key,
            stage_timeout=self._stage_timeout,
            max_session_rounds=session_rounds,
            max_session_seconds=session_seconds,
        )


def _active_identity(
    node_id: int, identity_file: str | None, nodes: FlowerNodes, nodes_file: str
) -> tuple[Ed25519SigningKey, Mapping[int, bytes]]:
    """An active node's signing key and the pki, checked against the node's own id."""
    if identity_file is None:
        raise ConfigurationError(
            f"an active deployment needs the node's identity: set {IDENTITY_KEY} in --node-config"
        )
    if nodes.pki is None:
        raise ConfigurationError(f"{nodes_file} has no [identities]: active mode needs them")
    identity = NodeIdentity.load(Path(identity_file))
    if identity.node_id != node_id:
        raise ConfigurationError(
            f"{identity_file} is node {identity.node_id}'s identity; this SuperNode is "
            f"node {node_id}"
        )
    return identity.signing_key, nodes.pki


def _settings(node_config: Mapping[str, object]) -> _Settings:
    def text(key: str, required: bool) -> str | None:
        value = node_config.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f'set {key}="<path>" in the SuperNode\'s --node-config'
                if value is None
                else f"{key} in --node-config must be a path in quotes"
            )
        return value

    def cap(key: str, default: int) -> int:
        value = node_config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"{key} in --node-config must be a positive integer (no quotes), got {value!r}"
            )
        return value

    deployment = text(DEPLOYMENT_KEY, True)
    nodes = text(NODES_KEY, True)
    journal = text(JOURNAL_KEY, True)
    assert deployment is not None and nodes is not None and journal is not None
    return (
        deployment,
        nodes,
        journal,
        text(IDENTITY_KEY, False),
        cap(SESSION_ROUNDS_KEY, DEFAULT_MAX_ROUNDS),
        cap(SESSION_SECONDS_KEY, DEFAULT_MAX_SECONDS),
    )
