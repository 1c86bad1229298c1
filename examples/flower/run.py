"""Run the example in Flower's simulation engine and report each round.

    python -m examples.flower.run                       # secagg, 20 nodes, 5 rounds
    python -m examples.flower.run --dropout 0.1         # 2 nodes fail each round, at random stages
    python -m examples.flower.run --mode secagg-session # rounds in one session: set up once
    python -m examples.flower.run --mode secaggplus     # the same task with Flower's SecAgg+
    python -m examples.flower.run --mode plain          # plaintext FedAvg, for reference
    python -m examples.flower.run --mode all --json out.json

Per round: the global model's test accuracy, the nodes whose updates are in the aggregate,
the wall time of the training round (every protocol stage included), its exchanges (the
``send_and_receive`` calls of train messages: one per protocol stage) and the bytes each node
sent and received in it (Flower's serialised messages, without gRPC framing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Ray's workers import this example by module name: they inherit this environment.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Ray's local cluster on loopback: read when ray is imported (otherwise it binds the address
# of the machine's network interface).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp.typing import Mod  # noqa: E402
from flwr.common.serde import message_to_proto  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from examples.flower import apps, secaggplus  # noqa: E402
from examples.flower.secagg_digits import failures, task  # noqa: E402
from examples.flower.secagg_digits.client_app import train_reply  # noqa: E402
from secagg.hazmat.randomness import SystemRandomness  # noqa: E402
from secagg.simulate import SEMI_HONEST_STAGES, DropSchedule  # noqa: E402


class MeteredGrid(Grid):  # type: ignore[misc]
    """Counts the bytes and time of training messages, round by round (``close_round``)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.rounds: list[dict[str, Any]] = []
        self._open()

    def _open(self) -> None:
        self._seconds = 0.0
        self._exchanges = 0
        self._up: dict[int, int] = {}
        self._down: dict[int, int] = {}

    def close_round(self) -> None:
        if self._seconds:
            self.rounds.append(
                {
                    "seconds": self._seconds,
                    "exchanges": self._exchanges,
                    "up": self._up,
                    "down": self._down,
                }
            )
        self._open()

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not any(str(m.metadata.message_type).startswith("train") for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        for m in messages:
            node = m.metadata.dst_node_id
            self._down[node] = self._down.get(node, 0) + message_to_proto(m).ByteSize()
        started = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._seconds += time.perf_counter() - started
        self._exchanges += 1
        for r in replies:
            if not r.has_error():
                node = r.metadata.src_node_id
                self._up[node] = self._up.get(node, 0) + message_to_proto(r).ByteSize()
        return replies

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[str]:
        return self._grid.pull_messages(message_ids)


def failing_mod(schedule: dict[int, DropSchedule]) -> Mod:
    """Makes node (partition) i fail at the stage ``schedule[server_round]`` names for it."""

    def stage_of(server_round: int, ctxt: Context) -> str | None:
        drops = schedule.get(server_round)
        return drops.stage_of(int(ctxt.node_config["partition-id"])) if drops else None

    return failures.failing_mod(stage_of)


def plain_server_app(num_nodes: int, num_rounds: int, log: apps.RunLog, hook: Any) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        grid = hook(grid)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = task.new_model(num_nodes)
            model.load_state_dict(arrays.to_torch_state_dict())
            log.evaluated(task.accuracy(model, num_nodes))
            return MetricRecord({"accuracy": log.accuracy[-1]})

        FedAvg(
            fraction_evaluate=0.0, min_train_nodes=num_nodes, min_available_nodes=num_nodes
        ).start(
            grid=grid,
            initial_arrays=ArrayRecord(task.new_model(num_nodes).state_dict()),
            num_rounds=num_rounds,
            evaluate_fn=evaluate,
        )

    return app


ENGINE_EXCHANGES = 5  # per round of the other modes


def engine_server_app(num_nodes: int, num_rounds: int, hook: Any) -> ServerApp:
    """The engine's own cost: exchanges of empty train messages with every node, whose
    ClientApp answers at once (each exchange metered as a round of its own)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        metered = hook(grid)
        nodes = list(metered.get_node_ids())
        while len(nodes) < num_nodes:
            nodes = list(metered.get_node_ids())
        for _ in range(num_rounds * ENGINE_EXCHANGES):
            out = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]
            metered.send_and_receive(out, timeout=60)
            metered.close_round()

    return app


def _engine_client_app() -> Any:
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)

    return app


def run(mode: str, nodes: int, rounds: int, dropout: float) -> dict[str, Any]:
    log = apps.RunLog()
    meters: list[MeteredGrid] = []

    def hook(grid: Grid) -> Grid:
        meters.append(MeteredGrid(grid))
        return meters[-1]

    if mode == "engine":
        server = engine_server_app(nodes, rounds, hook)
        client = _engine_client_app()
    elif mode == "secagg-session":
        # One session for the whole run: set up in round 1, two exchanges a round after.
        server = apps.secure_server_app(nodes, rounds, log, grid_hook=hook, session_rounds=rounds)
        client = apps.secure_client_app(nodes)
    elif mode == "secagg":
        rng = SystemRandomness()
        schedule = {
            r: DropSchedule.random(nodes, dropout, rng, stages=SEMI_HONEST_STAGES)
            for r in range(1, rounds + 1)
        }
        server = apps.secure_server_app(nodes, rounds, log, grid_hook=hook, session_rounds=0)
        client = apps.secure_client_app(nodes, outer_mods=[failing_mod(schedule)])
    elif mode == "secaggplus":
        server = secaggplus.secaggplus_server_app(nodes, rounds, log, grid_hook=hook)
        client = secaggplus.secaggplus_client_app(nodes)
    else:
        server = plain_server_app(nodes, rounds, log, hook)
        client = _plain_client_app(nodes)

    log.on_evaluate.append(lambda: meters[0].close_round() if meters else None)
    started = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": os.cpu_count() or 2,
                "include_dashboard": False,
                "logging_level": "error",
                "log_to_driver": False,
            },
        },
    )
    total = time.perf_counter() - started
    metered = meters[0].rounds if meters else []
    per_round = []
    for i, m in enumerate(metered):
        node_ids = sorted(set(m["up"]) | set(m["down"]))
        entry: dict[str, Any] = {
            "round": i + 1,
            "seconds": round(m["seconds"], 3),
            "exchanges": m["exchanges"],
            "accuracy": round(log.accuracy[i + 1], 4) if i + 1 < len(log.accuracy) else None,
            "nodes_answering": len(m["up"]),
            "upload_bytes_per_node": round(sum(m["up"].values()) / max(1, len(m["up"]))),
            "download_bytes_per_node": round(sum(m["down"].values()) / max(1, len(node_ids))),
        }
        if mode in ("secagg", "secagg-session") and i < len(log.reports):
            report = log.reports[i]
            entry["kind"] = report.kind
            entry["stage_seconds"] = {k: round(v, 3) for k, v in report.stage_seconds.items()}
            entry["included"] = len(report.included)
            entry["dropped"] = {
                str(log.partitions.get(n, n)): stage for n, (stage, _) in report.dropped.items()
            }
        per_round.append(entry)
    return {
        "mode": mode,
        "nodes": nodes,
        "rounds": rounds,
        "dropout": dropout if mode == "secagg" else 0.0,
        "dim": task.architecture(nodes).dim,
        "initial_accuracy": round(log.accuracy[0], 4) if log.accuracy else None,
        "per_round": per_round,
        "simulation_seconds": round(total, 2),
    }


def _plain_client_app(num_nodes: int) -> Any:
    """The example's ClientApp without secagg's mod: plaintext FedAvg, for reference."""
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, context)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        choices=["secagg", "secagg-session", "secaggplus", "plain", "engine", "all"],
        default="secagg",
    )
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dropout", type=float, default=0.0, help="secagg mode only")
    parser.add_argument("--json", help="append one JSON line per mode to this file")
    args = parser.parse_args()
    every = ["engine", "plain", "secagg", "secagg-session", "secaggplus"]
    modes = every if args.mode == "all" else [args.mode]
    for mode in modes:
        result = run(mode, args.nodes, args.rounds, args.dropout)
        print(f"\n== {mode}: {args.nodes} nodes, model of {result['dim']} values")
        print(f"   accuracy before training: {result['initial_accuracy']}")
        for r in result["per_round"]:
            extra = ""
            if "included" in r:
                extra = f"  included {r['included']}/{args.nodes}  dropped {r['dropped'] or '-'}"
            print(
                f"   round {r['round']}: accuracy {r['accuracy']}  {r['seconds']:.2f} s  "
                f"up {r['upload_bytes_per_node']:,} B/node  "
                f"down {r['download_bytes_per_node']:,} B/node{extra}"
            )
        if args.json:
            with open(args.json, "a") as out:
                out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
