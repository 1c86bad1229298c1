"""Shared helpers for the hazmat tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "hazmat"


def load_vectors(name: str) -> Any:
    """The parsed JSON vector file tests/vectors/hazmat/NAME."""
    return json.loads((VECTORS / name).read_text())
