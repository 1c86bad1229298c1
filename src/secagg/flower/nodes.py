"""A Flower deployment's nodes: who may be in a cohort, and, in active mode, who signs as whom.

In Flower's deployment engine the SuperLink gives each SuperNode its node id when an operator
registers the node's authentication key (``flower-superlink --enable-supernode-auth``, then
``flwr supernode register node.pub``): the id is fixed from then on, and only the holder of
that key connects as that node. Those ids are what a node's allow-list names. This module
keeps them, and each node's secagg identity, in files both sides read:

- ``nodes.toml``: the deployment's node ids, and in active mode each node's Ed25519 identity
  public key (hex)::

      # secagg: the Flower deployment's nodes (SuperLink node ids)
      node_ids = [1405734927352891174, 8301244412341266003]

      [identities]
      "1405734927352891174" = "<64 hex digits>"
      "8301244412341266003" = "<64 hex digits>"

- ``node-<id>.key`` (active mode): a first line ``secagg-flower-node-id: <id>``, then the
  node's PKCS#8 PEM Ed25519 private key, mode 0600, never overwritten. **Each node makes its
  own** (``secagg flower-node-key``, on the node) and hands out only its public key: a key
  made anywhere else is known to whoever made it, and whoever holds every node's key can
  sign substituted keys for all of them, the very attack active mode exists to stop.

Flower's node ids are 64-bit (secagg's own client ids are 32-bit: a round numbers its
cohort). ``write_node_identity`` is ``secagg flower-node-key``; ``provision_nodes`` (``secagg
flower-nodes``) writes ``nodes.toml`` from the registered ids and, in active mode, the public
keys the nodes handed out. Every node checks that ``nodes.toml`` gives its own id its own key
before it takes part, and its operator should compare the file's keys with the other nodes'
out of band (``secagg flower-node-key`` prints the public key for that). Nothing here
imports Flower.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from secagg.errors import ConfigurationError
from secagg.hazmat.keys import ED25519_PUBLIC_BYTES, Ed25519SigningKey
from secagg.hazmat.randomness import SystemRandomness
from secagg.service.files import create_file, make_directory, read_file, refuse_existing
from secagg.service.identity import read_identity_file, write_identity_file

__all__ = [
    "MAX_NODE_ID",
    "NODES_FILE",
    "FlowerNodes",
    "NodeIdentity",
    "provision_nodes",
    "write_node_identity",
]

NODES_FILE = "nodes.toml"
MAX_NODE_ID = 2**64 - 1
_ID_LINE_PREFIX = "secagg-flower-node-id: "
_DECIMAL_ID = re.compile(r"0|[1-9][0-9]{0,20}")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_MAX_FILE_BYTES = 1 << 20


def check_node_id(node_id: object) -> int:
    """``node_id`` if it is a Flower node id (an unsigned 64-bit integer)."""
    if isinstance(node_id, bool) or not isinstance(node_id, int):
        raise ConfigurationError(f"a node id must be an integer, got {type(node_id).__name__}")
    if not 0 <= node_id <= MAX_NODE_ID:
        raise ConfigurationError(f"a node id must be in [0, 2**64 - 1], got {node_id}")
    return node_id


@dataclass(frozen=True)
class FlowerNodes:
    """The deployment's node ids and, in active mode, their identity public keys.

    ``identities`` is empty (semi-honest: the ids are the allow-list) or has exactly one
    32-byte key per node id, no two alike (active mode: it is also the pki).
    """

    node_ids: frozenset[int]
    identities: Mapping[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = frozenset(check_node_id(n) for n in self.node_ids)
        if not ids:
            raise ConfigurationError("a deployment needs at least one node id")
        keys = {check_node_id(n): bytes(k) for n, k in dict(self.identities).items()}
        if keys and set(keys) != ids:
            raise ConfigurationError(
                f"{len(ids ^ set(keys))} node id(s) have an identity key without being a "
                "node, or are a node without an identity key: give every node one, or none"
            )
        if any(len(k) != ED25519_PUBLIC_BYTES for k in keys.values()):
            raise ConfigurationError(f"an identity key is {ED25519_PUBLIC_BYTES} bytes")
        if len(set(keys.values())) != len(keys):
            raise ConfigurationError("two nodes have the same identity key")
        object.__setattr__(self, "node_ids", ids)
        object.__setattr__(self, "identities", MappingProxyType(dict(sorted(keys.items()))))

    @property
    def pki(self) -> Mapping[int, bytes] | None:
        """Node id -> identity public key, or None where the nodes have no identities."""
        return self.identities or None

    def to_toml(self) -> str:
        lines = [
            "# secagg: the Flower deployment's nodes (SuperLink node ids)",
            "node_ids = [" + ", ".join(str(n) for n in sorted(self.node_ids)) + "]",
        ]
        if self.identities:
            lines += ["", "[identities]"]
            lines += [f'"{n}" = "{k.hex()}"' for n, k in self.identities.items()]
        return "\n".join(lines) + "\n"

    def save(self, path: Path) -> None:
        """Write ``nodes.toml`` (public); never overwrites."""
        create_file(Path(path), self.to_toml().encode("ascii"), private=False)

    @classmethod
    def load(cls, path: Path) -> FlowerNodes:
        path = Path(path)
        data = read_file(path, "nodes file", limit=_MAX_FILE_BYTES)
        try:
            document = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
        unknown = sorted(set(document) - {"node_ids", "identities"})
        if unknown:
            raise ConfigurationError(f"{path}: unknown key(s) {unknown}")
        ids = document.get("node_ids")
        if not isinstance(ids, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in ids
        ):
            raise ConfigurationError(f"{path}: node_ids must be a list of integers")
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"{path}: node_ids lists a node twice")
        table = document.get("identities", {})
        if not isinstance(table, dict):
            raise ConfigurationError(f"{path}: [identities] must be a table")
        keys: dict[int, bytes] = {}
        for name, value in table.items():
            if not _DECIMAL_ID.fullmatch(name):
                raise ConfigurationError(f"{path}: identity {name[:24]!r} is not a node id")
            if not isinstance(value, str) or not _HEX_KEY.fullmatch(value):
                raise ConfigurationError(
                    f"{path}: node {name}'s identity must be 64 lowercase hex digits"
                )
            keys[int(name)] = bytes.fromhex(value)
        try:
            return cls(frozenset(ids), keys)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: {exc}") from None


@dataclass(frozen=True, eq=False)
class NodeIdentity:
    """A Flower node's secagg identity: its node id and long-term Ed25519 signing key."""

    node_id: int
    signing_key: Ed25519SigningKey = field(repr=False)

    def __post_init__(self) -> None:
        check_node_id(self.node_id)

    def save(self, path: Path) -> None:
        write_identity_file(path, _ID_LINE_PREFIX, self.node_id, self.signing_key)

    @classmethod
    def load(cls, path: Path) -> NodeIdentity:
        return cls(*read_identity_file(path, "Flower node", _ID_LINE_PREFIX, MAX_NODE_ID))

    def __repr__(self) -> str:
        return f"NodeIdentity(node_id={self.node_id}, public={self.signing_key.public[:6].hex()}…)"


def write_node_identity(path: Path, node_id: int) -> NodeIdentity:
    """Make a node's identity on the node itself: a fresh key from the system CSPRNG, written
    to ``path`` (mode 0600, never overwriting). Hand out only its public key."""
    identity = NodeIdentity(check_node_id(node_id), Ed25519SigningKey.generate(SystemRandomness()))
    make_directory(Path(path).parent)
    identity.save(Path(path))
    return identity


def provision_nodes(
    folder: Path, node_ids: Iterable[int], *, public_keys: Mapping[int, bytes] | None = None
) -> FlowerNodes:
    """Write ``folder/nodes.toml`` for the registered ``node_ids`` and, in active mode, the
    identity ``public_keys`` the nodes handed out (one per id). Never overwrites."""
    folder = Path(folder)
    nodes = FlowerNodes(frozenset(node_ids), dict(public_keys or {}))
    refuse_existing(folder / NODES_FILE)
    make_directory(folder)
    nodes.save(folder / NODES_FILE)
    return nodes
