"""Many secagg clients in one process, for the load benchmark: one asyncio task each."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from secagg.service.client import ClientSettings, SecAggClient  # noqa: E402
from secagg.service.config import DeploymentConfig  # noqa: E402
from secagg.service.credentials import ClientIdentity, load_ca  # noqa: E402
from secagg.service.tasks import random_task  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--identities", type=Path, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    config = DeploymentConfig.load(args.config)
    assert config.tls is not None
    ca = load_ca(config.tls.ca_cert)
    clients = []
    for i in (int(x) for x in args.ids.split(",")):
        identity = ClientIdentity.load(args.identities / f"client-{i}.key")
        settings = ClientSettings(
            target=args.target,
            identity=identity,
            ca_cert=ca,
            max_message_bytes=config.coordinator.max_message_bytes,
            retry_max=2.0,
        )
        clients.append(SecAggClient(settings, random_task(i, config.params.dim, 0), rounds=1))
    await asyncio.gather(*(c.run() for c in clients))


if __name__ == "__main__":
    asyncio.run(main())
