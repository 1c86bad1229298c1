"""Regenerate shamir.json, the Shamir known-answer vectors.

Run from the repository root: ``PYTHONPATH=src python tests/vectors/hazmat/generate_shamir.py``.
Everything is derived from a fixed DeterministicRandomness seed, so the output is stable;
tests/hazmat/test_shamir.py regenerates it and compares, which pins both the sharing and the
DRBG stream it consumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from secagg.hazmat.randomness import DeterministicRandomness
from secagg.hazmat.shamir import PRIME, split

SEED = b"secagg/v1/test-vectors/shamir"
OUTPUT = Path(__file__).with_name("shamir.json")

# (name, secret or None to draw one, threshold, xs)
CASES: list[tuple[str, bytes | None, int, list[int]]] = [
    ("threshold-1", None, 1, [1, 2, 3]),
    ("two-of-three", None, 2, [1, 2, 3]),
    ("three-of-five", None, 3, [1, 2, 3, 4, 5]),
    ("zero-secret", bytes(32), 2, [7, 9]),
    ("max-secret", b"\xff" * 32, 3, [1, 5, 6, 10]),
    ("extreme-xs", None, 4, [1, 2**31, 2**32 - 1, 2**32, 123456789]),
]


def generate() -> dict[str, Any]:
    root = DeterministicRandomness(SEED)
    cases = []
    for name, fixed_secret, threshold, xs in CASES:
        rng = root.fork(name)
        secret = fixed_secret if fixed_secret is not None else rng.bytes(32)
        shares = split(secret, xs, threshold, rng)
        cases.append(
            {
                "name": name,
                "secret": secret.hex(),
                "threshold": threshold,
                "shares": [{"x": s.x, "y": s.value_bytes().hex()} for s in shares],
            }
        )
    return {
        "description": (
            "Shamir shares of 32-byte secrets over GF(p); the randomness of case NAME is "
            "DeterministicRandomness(seed).fork(NAME): the secret (when not fixed) is its first "
            "32 bytes, then split() draws its coefficients from it."
        ),
        "prime": hex(PRIME),
        "seed": SEED.hex(),
        "cases": cases,
    }


def main() -> None:
    OUTPUT.write_text(json.dumps(generate(), indent=2) + "\n")


if __name__ == "__main__":
    main()
