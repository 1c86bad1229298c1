"""Many secagg clients in one process, for the load benchmark: one asyncio task each.

``--rounds`` is how many rounds each client takes part in before it stops; under a deployment
whose ``[coordinator] session_rounds`` is above 0 each client keeps its session across them, as
``secagg join`` does (the same caps from the same file).

``--drops 3:masked-input,17:train`` makes client 3 vanish as it is about to send its masked
input and client 17 as it starts training: its task ends and its stream closes, as a device's
would when the app is killed. Clients connect a little apart (``--connect-every``) so that a
few thousand TLS handshakes do not all land within the coordinator's hello deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from secagg.schemes.registry import SchemeKind  # noqa: E402
from secagg.service.client import ClientSettings, SecAggClient, UpdateFn  # noqa: E402
from secagg.service.config import DeploymentConfig  # noqa: E402
from secagg.service.credentials import ClientIdentity, load_ca  # noqa: E402
from secagg.service.scheme_sides import client_policy  # noqa: E402
from secagg.service.tasks import random_task  # noqa: E402


class Vanished(Exception):
    """This client drops out of the round here (the benchmark's scheduled failure)."""


def _dropper(stage: str) -> Callable[[int, str], None]:
    def on_stage(round_id: int, at: str) -> None:
        if at == stage:
            raise Vanished(f"client vanishes at {stage}")

    return on_stage


def _half_precision(update: UpdateFn) -> UpdateFn:
    """The synthetic update as float16: thousands of clients in one process each hold theirs
    from training until their turn to mask it (load.py checks the aggregate against the same
    float16 values)."""

    def half(model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
        values, weight = update(model, step)
        return np.asarray(values, dtype=np.float16), weight

    return half


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--identities", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--drops", default="", help="id:stage,... (clients that vanish)")
    parser.add_argument("--connect-every", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    config = DeploymentConfig.load(args.config)
    assert config.tls is not None
    ca = load_ca(config.tls.ca_cert)
    drops = dict(item.split(":", 1) for item in args.drops.split(",") if item)
    # A masking client's policy is the deployment's (parsing the allow-list once per process,
    # not once per client); a CKKS client's holds its own context, beside its identity.
    shared = client_policy(config) if config.scheme is SchemeKind.MASKING else None
    clients = []
    for i in (int(x) for x in args.ids.split(",")):
        path = args.identities / f"client-{i}.key"
        policy, pki = shared if shared is not None else client_policy(config, path)
        settings = ClientSettings(
            target=args.target,
            identity=ClientIdentity.load(path),
            ca_cert=ca,
            max_message_bytes=config.coordinator.max_message_bytes,
            policy=policy,
            pki=pki,
            stage_timeout=config.client_stage_timeout,
            retry_max=2.0,
            # Sessions that span rounds: the deployment's caps, as `secagg join` reads them.
            session_rounds=config.coordinator.session_rounds,
            session_seconds=config.coordinator.session_seconds,
        )
        stage = drops.get(str(i))
        on_stage = None if stage is None else _dropper(stage)
        update = _half_precision(random_task(i, config.params.dim, 0))
        clients.append(SecAggClient(settings, update, rounds=args.rounds, on_stage=on_stage))

    async def later(k: int, client: SecAggClient) -> None:
        await asyncio.sleep(k * args.connect_every)
        with contextlib.suppress(Vanished):
            await client.run()

    await asyncio.gather(*(later(k, c) for k, c in enumerate(clients)))


if __name__ == "__main__":
    asyncio.run(main())
