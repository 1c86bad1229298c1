"""The example ServerApp's wait for the deployment's nodes (examples/flower/secagg_digits):
what it says while it waits and how it gives up. In Flower's deployment engine nothing else
of the run happens before every node of nodes.toml is connected, so a run that never starts
its first round must say here what it waits for."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

pytest.importorskip("flwr")

from examples.flower.secagg_digits import server_app
from secagg.flower.nodes import FlowerNodes

NODES = FlowerNodes(frozenset({11, 22, 33}))
STRANGER = 99  # connected, but not one of the deployment's nodes


class ArrivingGrid:
    """A grid whose ``get_node_ids`` answers with each of ``polls`` in turn, then the last."""

    def __init__(self, polls: list[set[int]]) -> None:
        self.polls = polls
        self.asked = 0

    def get_node_ids(self) -> Iterable[int]:
        answer = self.polls[min(self.asked, len(self.polls) - 1)]
        self.asked += 1
        return list(answer)


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lines: list[str] = []
    monkeypatch.setattr(server_app, "flwr_log", lambda _level, msg, *args: lines.append(msg % args))
    return lines


def test_the_wait_says_how_many_nodes_are_connected_each_time_that_changes(
    said: list[str],
) -> None:
    grid = ArrivingGrid([set(), {STRANGER}, {22, STRANGER}, {22}, {11, 22}, {11, 22, 33}])
    # Deadlines only: the wait ends when the last node connects, and says so only on change.
    server_app.wait_for_nodes(grid, NODES, 3600, interval=0, every=3600)  # type: ignore[arg-type]
    assert grid.asked == 6
    assert said == [
        "waiting for the 3 nodes of nodes.toml: 0 connected, missing [11, 22, 33]",
        "waiting for the 3 nodes of nodes.toml: 1 connected, missing [11, 33]",
        "waiting for the 3 nodes of nodes.toml: 2 connected, missing [33]",
        "all 3 nodes of nodes.toml are connected",
    ]


def test_a_node_that_never_connects_ends_the_run_with_one_line_naming_it(
    said: list[str],
) -> None:
    grid = ArrivingGrid([{11, 22, STRANGER}])
    with pytest.raises(RuntimeError) as raised:
        server_app.wait_for_nodes(grid, NODES, 0, interval=0)  # type: ignore[arg-type]
    message = str(raised.value)
    assert "\n" not in message
    assert message == "waited 0 s for the 3 nodes of nodes.toml: 2 connected, never connected: [33]"
    assert said == []  # it gave up at its first look: nothing was waited for


def test_nodes_already_connected_are_not_waited_for(said: list[str]) -> None:
    grid = ArrivingGrid([{11, 22, 33, STRANGER}])
    server_app.wait_for_nodes(grid, NODES, 0, interval=0)  # type: ignore[arg-type]
    assert grid.asked == 1
    assert said == ["all 3 nodes of nodes.toml are connected"]
