"""``secagg flower-node-key`` and ``secagg flower-nodes``: a Flower deployment's node
identities and allow-list (``secagg.flower.nodes``, imported when the command runs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from secagg.cli.output import fail, say, started

__all__ = ["flower_node_key", "flower_nodes"]


def flower_node_key(
    node_id: Annotated[
        int, typer.Argument(help="This SuperNode's id, as `flwr supernode register` printed it.")
    ],
    out: Annotated[Path, typer.Option(help="The identity file to write (mode 0600).")],
) -> None:
    """On a SuperNode: make its Ed25519 identity for active mode. Prints NODE_ID=PUBLIC_KEY,
    the one line to hand to whoever writes nodes.toml (the key itself never leaves)."""
    from secagg.errors import ConfigurationError
    from secagg.flower.nodes import write_node_identity

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    try:
        identity = write_node_identity(out, node_id)
    except ConfigurationError as exc:
        fail(str(exc))
    say(f"wrote {out}; keep it on node {node_id} only. Its public key, for nodes.toml:")
    say(f"{node_id}={identity.signing_key.public.hex()}")


def flower_nodes(
    nodes: Annotated[
        list[str],
        typer.Argument(
            help="Each SuperNode's id as `flwr supernode register` printed it; in active mode "
            "ID=PUBLIC_KEY as `secagg flower-node-key` printed it on that node.",
            metavar="NODE_ID[=PUBLIC_KEY]...",
        ),
    ],
    out: Annotated[Path, typer.Option(help="The folder to write nodes.toml in.")],
) -> None:
    """Write a Flower deployment's nodes.toml: the allow-list of its SuperNodes' ids and, in
    active mode, each node's identity public key (every node and the ServerApp load it)."""
    from secagg.errors import ConfigurationError
    from secagg.flower.nodes import NODES_FILE, provision_nodes

    started()  # its imports are done: Ctrl-C and SIGTERM are its own from here

    ids, keys = _node_entries(nodes)
    try:
        written = provision_nodes(out, ids, public_keys=keys)
    except ConfigurationError as exc:
        fail(str(exc))
    mode = "with their identity keys" if written.identities else "(semi-honest: no identities)"
    say(f"wrote {out / NODES_FILE}: {len(written.node_ids)} node(s) {mode}")


def _node_entries(entries: Sequence[str]) -> tuple[list[int], dict[int, bytes]]:
    """``ID`` or ``ID=HEX`` arguments: the ids, and the keys (all of them or none)."""
    ids: list[int] = []
    keys: dict[int, bytes] = {}
    for entry in entries:
        node, has_key, key = entry.partition("=")
        if not node.isdigit():
            fail(f"{entry[:40]!r} is not a node id (a decimal number, optionally =PUBLIC_KEY)")
        ids.append(int(node))
        if has_key:
            try:
                keys[int(node)] = bytes.fromhex(key)
            except ValueError:
                fail(f"node {node}'s public key is not hex")
    if keys and len(keys) != len(ids):
        fail("give every node its public key (ID=PUBLIC_KEY), or none (semi-honest)")
    return ids, keys
