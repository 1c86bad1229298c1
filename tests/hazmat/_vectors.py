"""Shared helpers for the hazmat tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "hazmat"


def load_vectors(name: str) -> Any:
    """The parsed JSON vector file tests/vectors/hazmat/NAME."""
    return json.loads((VECTORS / name).read_text())


class FixedRandomness:
    """Hands out preset bytes: lets a test choose a nonce or a coefficient."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def bytes(self, n: int) -> bytes:
        out, self._data = self._data[:n], self._data[n:]
        assert len(out) == n
        return out

    def words(self, n: int) -> NDArray[np.uint32]:
        raise AssertionError("not used")
