"""secagg.dp without the [dp] extra: everything but epsilon works, and calibration says what to
install. Run in a fresh interpreter in which importing dp_accounting fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["dp_accounting"] = None  # any import of it now raises ImportError

    import numpy as np
    import secagg.dp
    from secagg.dp import DpConfig, DpPlan, calibrate, decode, encode
    from secagg.errors import MissingExtra
    from secagg.hazmat.randomness import DeterministicRandomness

    config = DpConfig(
        dim=100, l2_clip=1.0, bits=20, min_clients=3, max_clients=5, delta=1e-5,
        noise_multiplier=1.0,
    )
    try:
        calibrate(config)
    except MissingExtra as exc:
        print("REFUSED:", exc.extra, exc)
    # A plan (as a client would rebuild it from agreed parameters) encodes and decodes.
    plan = DpPlan(
        config=config, scale=1000.0, local_noise=4.0e5, padded_dim=128, ring_bits=20,
        central_noise_std=1.0, noise_multiplier=1.0, rounding_inflation=1.01,
        wrap_probability_bound=1e-5, rounding_bias_bound=0.0, epsilon_per_round=5.0,
        epsilon_total=5.0,
    )
    seed = bytes(32)
    vector, _ = encode(plan, np.zeros(100), seed, DeterministicRandomness(bytes(16)))
    mean = decode(plan, vector, 1, seed)
    print("ENCODED", vector.shape, mean.shape, "dp_accounting" in sys.modules and
          sys.modules["dp_accounting"] is not None)
    """
)


def test_encoding_works_without_dp_accounting_and_calibrate_says_what_to_install() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "REFUSED:" in result.stdout
    assert "REFUSED: dp distributed DP accounting needs the dp extra: pip install 'secagg[dp]'" in (
        result.stdout
    )
    assert "ENCODED (128,) (100,) False" in result.stdout
