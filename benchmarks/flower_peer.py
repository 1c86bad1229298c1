"""Run Flower's SecAgg+ (the peer harness in ../shared/peers/flower/) and parse its result.

The harness installs Flower into ``.venv-flower`` on first use (package index only) and
prints one ``RESULT {json}`` line per mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(os.environ.get("SECAGG_FLOWER_PEER", ROOT.parent / "shared" / "peers" / "flower"))
VENV = ROOT / ".venv-flower"


def available() -> bool:
    return (PEER / "run_peer.py").exists()


def ensure_installed() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"installing Flower into {VENV} (once) ...", file=sys.stderr, flush=True)
        subprocess.run(["bash", str(PEER / "setup.sh"), str(VENV)], check=True)
    return python


def run(clients: int, dim: int, dropout: float, *, mode: str = "both") -> list[dict[str, Any]]:
    """One invocation of the peer: its RESULT records (plain FedAvg and/or SecAgg+)."""
    python = ensure_installed()
    done = subprocess.run(
        [
            str(python),
            str(PEER / "run_peer.py"),
            "--clients",
            str(clients),
            "--dim",
            str(dim),
            "--dropout",
            str(dropout),
            "--mode",
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        cwd=ROOT,
    )
    results = [
        json.loads(line.split("RESULT", 1)[1])
        for line in done.stdout.splitlines()
        if line.startswith("RESULT")
    ]
    if done.returncode != 0 or not results:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"Flower peer failed (exit {done.returncode}):\n{tail}")
    return results
