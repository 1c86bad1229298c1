"""secagg.flower.nodes: the files that carry a Flower deployment's node ids and identities.
Every reader refuses junk with a one-line ConfigurationError; no writer overwrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from secagg.errors import ConfigurationError
from secagg.flower.nodes import (
    MAX_NODE_ID,
    NODES_FILE,
    FlowerNodes,
    NodeIdentity,
    provision_nodes,
    write_node_identity,
)

IDS = [7, 2**63 + 5, MAX_NODE_ID]


def test_each_node_makes_its_own_key_and_the_allow_list_holds_only_public_keys(
    tmp_path: Path,
) -> None:
    """The attack this stops: whoever makes every node's key can sign substituted keys for
    all of them. Each node writes its own; nodes.toml is built from what they hand out."""
    identities = {n: write_node_identity(tmp_path / f"node-{n}" / "id.key", n) for n in IDS}
    public = {n: identity.signing_key.public for n, identity in identities.items()}
    nodes = provision_nodes(tmp_path / "link", IDS, public_keys=public)
    assert FlowerNodes.load(tmp_path / "link" / NODES_FILE) == nodes
    assert sorted(p.name for p in (tmp_path / "link").iterdir()) == [NODES_FILE]
    for node_id in IDS:
        path = tmp_path / f"node-{node_id}" / "id.key"
        assert path.stat().st_mode & 0o777 == 0o600
        identity = NodeIdentity.load(path)
        assert identity.node_id == node_id
        assert nodes.identities[node_id] == identity.signing_key.public
        assert "PRIVATE" not in repr(identity)


def test_a_semi_honest_deployment_has_ids_and_no_keys(tmp_path: Path) -> None:
    nodes = provision_nodes(tmp_path, IDS)
    assert nodes.pki is None and nodes.node_ids == set(IDS)
    assert list(tmp_path.iterdir()) == [tmp_path / NODES_FILE]


def test_nothing_is_ever_overwritten(tmp_path: Path) -> None:
    provision_nodes(tmp_path, IDS)
    before = (tmp_path / NODES_FILE).read_bytes()
    with pytest.raises(ConfigurationError, match="already exists"):
        provision_nodes(tmp_path, IDS)
    assert (tmp_path / NODES_FILE).read_bytes() == before
    write_node_identity(tmp_path / "id.key", 7)
    key = (tmp_path / "id.key").read_bytes()
    with pytest.raises(ConfigurationError, match="already exists"):
        write_node_identity(tmp_path / "id.key", 7)
    assert (tmp_path / "id.key").read_bytes() == key


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("node_ids = 5\n", "must be a list of integers"),
        ("node_ids = [1, 1]\n", "lists a node twice"),
        ("node_ids = []\n", "at least one node id"),
        ("node_ids = [-1]\n", "must be in [0, 2**64 - 1]"),
        ("node_ids = [1]\nextra = 2\n", "unknown key(s) ['extra']"),
        ('node_ids = [1]\n[identities]\n"2" = "' + "ab" * 32 + '"\n', "without being a node"),
        ('node_ids = [1]\n[identities]\n"1" = "xyz"\n', "64 lowercase hex digits"),
        ('node_ids = [1]\n[identities]\n"01" = "' + "ab" * 32 + '"\n', "is not a node id"),
        ("node_ids = [1\n", "is not valid TOML"),
    ],
)
def test_a_junk_nodes_file_is_refused_with_what_is_wrong(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / NODES_FILE
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        FlowerNodes.load(path)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_two_nodes_may_not_share_an_identity() -> None:
    with pytest.raises(ConfigurationError, match="same identity key"):
        FlowerNodes(frozenset({1, 2}), {1: b"k" * 32, 2: b"k" * 32})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b"secagg-client-id: 5\n", "the first line must be"),
        (b"secagg-flower-node-id: 5\nnot a key\n", "PKCS#8 PEM block"),
        (b"\xff\xfe", "not ASCII"),
    ],
)
def test_a_junk_identity_file_is_refused(tmp_path: Path, text: bytes, says: str) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(text)
    with pytest.raises(ConfigurationError, match=says):
        NodeIdentity.load(path)
