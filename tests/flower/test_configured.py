"""SecAggMod.from_node_config(): in deployment a node's expectations come from its own
SuperNode's --node-config, never from anything the server sends or sets.

Each test hands the mod a real first message of a round (as SecureGrid builds it) inside a
real ClientApp, with the node's config as its operator wrote it, right or wrong.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flwr.app import Context, Message, RecordDict

from secagg import Params, ServerModel
from secagg.flower import SecAggMod, wire
from secagg.flower.configured import MISCONFIGURED, SIMULATION_ENV
from secagg.flower.nodes import NODES_FILE, FlowerNodes, provision_nodes, write_node_identity
from secagg.schemes.masking.messages import Commitment
from secagg.service.config import DeploymentConfig
from tests.flower.helpers import PARAMS, client_app, node_ids, secagg_record, task
from tests.flower.test_mod import ME, NODES, STRANGER, first_message

ACTIVE = Params(
    dim=PARAMS.dim,
    max_clients=PARAMS.max_clients,
    clip=PARAMS.clip,
    value_bits=PARAMS.value_bits,
    max_weight=PARAMS.max_weight,
    server_model=ServerModel.SEMI_MALICIOUS,
)


def write_deployment(folder: Path, params: Params) -> Path:
    path = folder / "deployment.toml"
    path.write_text(
        DeploymentConfig.render(
            params=params,
            port=0,
            min_clients=3,
            stage_timeout=30.0,
            cohort_wait=60.0,
            ledger="unused.sqlite",
            tls=None,
            allow_list=None,
        )
    )
    return path


def node_config(folder: Path, *, identity: Path | None = None, **extra: str) -> dict[str, object]:
    config: dict[str, object] = {
        "partition-id": NODES[ME],
        "num-partitions": len(NODES),
        "secagg-deployment": str(folder / "deployment.toml"),
        "secagg-nodes": str(folder / "secagg" / NODES_FILE),
        "secagg-journal": str(folder / "journal"),
    }
    if identity is not None:
        config["secagg-identity"] = str(identity)
    config.update(extra)
    return config


def send(config: dict[str, object], message: Message, trained: list[int]) -> Message:
    ctxt = Context(run_id=1, node_id=ME, node_config=config, state=RecordDict(), run_config={})
    return client_app([SecAggMod.from_node_config()], trained)(message, ctxt)


def test_a_node_configured_by_its_operator_takes_the_round(tmp_path: Path) -> None:
    write_deployment(tmp_path, PARAMS)
    provision_nodes(tmp_path / "secagg", NODES)
    trained: list[int] = []
    reply = send(node_config(tmp_path), first_message(), trained)
    assert Commitment.decode(secagg_record(reply)[wire.MESSAGE]).client_id == sorted(NODES).index(
        ME
    )
    assert trained == [NODES[ME]]
    assert [p.name for p in (tmp_path / "journal").iterdir() if p.suffix == ".journal"] == [
        f"node-{ME}.journal"
    ]


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        ("secagg-deployment", 'set secagg-deployment="<path>"'),
        ("secagg-nodes", 'set secagg-nodes="<path>"'),
        ("secagg-journal", 'set secagg-journal="<path>"'),
    ],
)
def test_a_node_missing_its_own_config_trains_nothing_and_says_what_to_set(
    tmp_path: Path, missing: str, says: str
) -> None:
    write_deployment(tmp_path, PARAMS)
    provision_nodes(tmp_path / "secagg", NODES)
    config = node_config(tmp_path)
    del config[missing]
    trained: list[int] = []
    reply = send(config, first_message(), trained)
    assert reply.has_error() and reply.error.code == MISCONFIGURED
    assert says in reply.error.reason and "\n" not in reply.error.reason
    assert trained == []


def test_the_node_s_own_allow_list_refuses_a_cohort_with_a_stranger(tmp_path: Path) -> None:
    write_deployment(tmp_path, PARAMS)
    provision_nodes(tmp_path / "secagg", [n for n in NODES if n != STRANGER])
    trained: list[int] = []
    reply = send(node_config(tmp_path), first_message(), trained)
    assert secagg_record(reply)[wire.ABORT] == "cohort-not-allowed"
    assert trained == []


def active_nodes(folder: Path) -> None:
    """Each node's identity, made on the node; nodes.toml from their public keys."""
    keys = {n: write_node_identity(folder / f"node-{n}.key", n).signing_key.public for n in NODES}
    provision_nodes(folder / "secagg", NODES, public_keys=keys)


def test_an_active_node_signs_with_the_identity_written_for_its_node_id(tmp_path: Path) -> None:
    write_deployment(tmp_path, ACTIVE)
    active_nodes(tmp_path)
    trained: list[int] = []
    config = node_config(tmp_path, identity=tmp_path / f"node-{ME}.key")
    reply = send(config, first_message(params=ACTIVE), trained)
    assert Commitment.decode(secagg_record(reply)[wire.MESSAGE]).client_id == sorted(NODES).index(
        ME
    )


def test_an_active_node_given_another_node_s_identity_refuses_to_start(tmp_path: Path) -> None:
    write_deployment(tmp_path, ACTIVE)
    active_nodes(tmp_path)
    other = max(n for n in NODES if n != ME)
    config = node_config(tmp_path, identity=tmp_path / f"node-{other}.key")
    trained: list[int] = []
    reply = send(config, first_message(params=ACTIVE), trained)
    assert reply.has_error() and reply.error.code == MISCONFIGURED
    assert f"node {other}'s identity; this SuperNode is node {ME}" in reply.error.reason
    assert trained == []


def test_an_active_deployment_without_the_node_s_identity_is_misconfigured(
    tmp_path: Path,
) -> None:
    write_deployment(tmp_path, ACTIVE)
    active_nodes(tmp_path)
    reply = send(node_config(tmp_path), first_message(params=ACTIVE), [])
    assert reply.has_error() and "secagg-identity" in reply.error.reason


def test_a_simulated_node_runs_without_config_only_where_its_environment_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where its journal goes
    mod = SecAggMod.from_node_config(simulation_params=lambda config: PARAMS)
    config: dict[str, object] = {"partition-id": NODES[ME], "num-partitions": len(NODES)}
    ctxt = Context(run_id=1, node_id=ME, node_config=config, state=RecordDict(), run_config={})
    monkeypatch.delenv(SIMULATION_ENV, raising=False)
    refused = client_app([mod], [])(first_message(), ctxt)
    assert refused.has_error() and refused.error.code == MISCONFIGURED
    monkeypatch.setenv(SIMULATION_ENV, "1")
    trained: list[int] = []
    reply = client_app([mod], trained)(first_message(), ctxt)
    assert Commitment.decode(secagg_record(reply)[wire.MESSAGE]) is not None
    assert trained == [NODES[ME]]
    assert (tmp_path / "secagg-flower-simulation" / "1" / f"node-{ME}.journal").is_file()


def test_the_nodes_file_round_trips(tmp_path: Path) -> None:
    ids = node_ids(3)
    keys = {n: write_node_identity(tmp_path / f"{n}.key", n).signing_key.public for n in ids}
    written = provision_nodes(tmp_path, ids, public_keys=keys)
    assert FlowerNodes.load(tmp_path / NODES_FILE) == written
    assert written.pki == keys


def test_a_deployment_node_with_a_typo_in_its_config_is_refused_not_simulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack (from the review): a node meant for active mode, whose operator mistyped
    secagg-deployment, on a machine where the simulation variable is set. Had it fallen back
    to simulation, it would take any node id as a peer (the server's own fakes) and keep a
    fresh journal per run. It refuses until its config is complete."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv(SIMULATION_ENV, "1")
    write_deployment(tmp_path, ACTIVE)
    active_nodes(tmp_path)
    config = node_config(tmp_path, identity=tmp_path / f"node-{ME}.key")
    config["secagg_deployment"] = config.pop("secagg-deployment")
    mod = SecAggMod.from_node_config(simulation_params=lambda config: PARAMS)
    ctxt = Context(run_id=1, node_id=ME, node_config=config, state=RecordDict(), run_config={})
    trained: list[int] = []
    reply = client_app([mod], trained)(first_message(), ctxt)
    assert reply.has_error() and reply.error.code == MISCONFIGURED
    assert 'set secagg-deployment="<path>"' in reply.error.reason
    assert trained == []
    assert not (tmp_path / "secagg-flower-simulation").exists()


def test_a_node_config_path_may_move_but_its_data_may_not(tmp_path: Path) -> None:
    """The journal pins the node's own config at first use, except where its secagg files
    are: an operator who moves deployment.toml keeps the node; a changed partition is refused."""
    write_deployment(tmp_path, PARAMS)
    provision_nodes(tmp_path / "secagg", NODES)
    send(node_config(tmp_path), first_message(round_id=1), [])
    moved = tmp_path / "moved.toml"
    moved.write_text((tmp_path / "deployment.toml").read_text())
    trained: list[int] = []
    reply = send(
        node_config(tmp_path, **{"secagg-deployment": str(moved)}),
        first_message(round_id=2, sent=task(server_round=2)),
        trained,
    )
    assert wire.MESSAGE in secagg_record(reply) and trained == [NODES[ME]]
    other = node_config(tmp_path)
    other["partition-id"] = NODES[ME] + 1
    refused = send(other, first_message(round_id=3, sent=task(server_round=3)), [])
    assert wire.ABORT in secagg_record(refused)
