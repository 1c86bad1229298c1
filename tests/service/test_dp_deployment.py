"""Distributed DP as part of a deployment: the [dp] section of deployment.toml, what `secagg
certs` writes into it, and what both ends make of it (the same plan, the client's policy,
unweighted updates, the message size cap of a padded update)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("dp_accounting")

from secagg.cli import app
from secagg.dp.calibrate import DpConfig
from secagg.dp.settings import DpSettings, default_dp_min_cohort, name_knobs
from secagg.errors import AbortReason, ClientAbort, ConfigurationError
from secagg.schemes.masking.parameters import Params
from secagg.schemes.masking.policy import ClientPolicy
from secagg.service.config import DeploymentConfig
from secagg.service.credentials import create_deployment
from secagg.service.tasks import Task, TaskSpec, default_l2_clip, update_function

runner = CliRunner()
DIM = 200


def _dp_params(**changes: object) -> Params:
    settings = DpSettings(l2_clip=1.0, target_epsilon=8.0, rounds=3)
    settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    return Params(
        dim=DIM,
        max_clients=6,
        min_cohort=4,
        dp=settings.config(dim=DIM, min_clients=4, max_clients=6),
    )


def _write(root: Path, params: Params) -> Path:
    deployment = create_deployment(root, 6)
    return DeploymentConfig.write(root, deployment, params, min_clients=4)


def test_a_dp_deployment_round_trips_through_its_file_to_the_same_plan(tmp_path: Path) -> None:
    params = _dp_params()
    path = _write(tmp_path / "d", params)
    text = path.read_text()
    assert "[dp]\nepsilon = 8.0\n" in text and 'mechanism = "skellam"' in text
    loaded = DeploymentConfig.load(path)
    assert loaded.params == params  # the DP configuration included
    assert loaded.dp_plan is not None and params.dp_plan is not None
    # Both ends calibrate the same noise, so the client's policy accepts the coordinator's
    # round configuration, field for field.
    assert loaded.dp_plan.local_noise == params.dp_plan.local_noise
    config = loaded.params.round_config(range(6), nonce=bytes(16))
    ClientPolicy(params, frozenset(range(6))).check(config, 0)


def test_a_client_refuses_a_coordinator_whose_deployment_asks_less_noise(tmp_path: Path) -> None:
    # The coordinator's file says epsilon 16 (less noise); the client's own says 8.
    coordinator = DeploymentConfig.load(_write(tmp_path / "c", _dp_params(target_epsilon=16.0)))
    client = DeploymentConfig.load(_write(tmp_path / "k", _dp_params()))
    assert isinstance(coordinator.params, Params) and isinstance(client.params, Params)
    config = coordinator.params.round_config(range(6), nonce=bytes(16))
    with pytest.raises(ClientAbort) as refused:
        ClientPolicy(client.params, frozenset(range(6))).check(config, 0)
    assert refused.value.reason is AbortReason.DOWNGRADE
    # And a coordinator without DP at all is refused the same way.
    plain = Params(dim=DIM, max_clients=6, min_cohort=4, value_bits=8)
    config = plain.round_config(range(6), nonce=bytes(16))
    with pytest.raises(ClientAbort) as refused:
        ClientPolicy(client.params, frozenset(range(6))).check(config, 0)
    assert refused.value.reason is AbortReason.DOWNGRADE


@pytest.mark.parametrize(
    ("line", "replacement", "message"),
    [
        ("bits = 20", "bits = 5", "raise dp.bits"),
        ("epsilon = 8.0", "epsilon = -1.0", "dp.epsilon must be finite and positive"),
        ("epsilon = 8.0", "epsilon = 8.0\nnoise_multiplier = 1.0", "exactly one of dp.epsilon"),
        ('mechanism = "skellam"', 'mechanism = "laplace"', "dp.mechanism must be one of"),
        ("l2_clip = 1.0\n", "", "[dp] needs l2_clip"),
        ("max_weight = 1", "max_weight = 3", "max_weight must be 1"),
        ("sampling_rate = 1.0", "sampling_rate = 2.0", "dp.sampling_rate must be in (0, 1]"),
        ("rounds = 3", "rounds = 3\nbeta = 0.5", "unknown key dp.beta"),
        ("bits = 20", 'bits = "20"', "dp.bits must be an integer"),
        ("epsilon = 8.0", 'epsilon = "8"', "dp.epsilon must be a number"),
    ],
    ids=[
        "bits",
        "epsilon",
        "both",
        "mechanism",
        "no-clip",
        "weights",
        "sampling",
        "unknown",
        "int-type",
        "float-type",
    ],
)
def test_a_mistake_in_the_dp_section_is_one_line_naming_the_key(
    tmp_path: Path, line: str, replacement: str, message: str
) -> None:
    path = _write(tmp_path / "d", _dp_params())
    text = path.read_text()
    assert line in text
    path.write_text(text.replace(line, replacement, 1))
    with pytest.raises(ConfigurationError) as refused:
        DeploymentConfig.load(path)
    assert message in str(refused.value) and str(path) in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_ckks_deployment_has_no_dp_section(tmp_path: Path) -> None:
    path = tmp_path / "deployment.toml"
    path.write_text(
        '[round]\nscheme = "ckks"\ndim = 10\nmax_clients = 4\n\n[dp]\nepsilon = 1.0\n'
        "l2_clip = 1.0\n"
    )
    with pytest.raises(ConfigurationError, match=r"\[dp\] belongs to a deployment"):
        DeploymentConfig.load(path)


def test_the_message_size_cap_holds_the_padded_noisy_update() -> None:
    # 1,100 values pad to 2,048 rotated coordinates at 30 bits: the masked input (7.7 kB)
    # is larger than the model it is sized from (4.4 kB of float32).
    dim = 1100
    dp = DpSettings(l2_clip=1.0, target_epsilon=8.0, bits=30)
    params = Params(
        dim=dim, max_clients=6, min_cohort=4, dp=dp.config(dim=dim, min_clients=4, max_clients=6)
    )
    from secagg.hazmat.ring import Ring
    from secagg.service.settings import CoordinatorSettings

    settings = CoordinatorSettings(params, min_clients=4)
    assert settings.max_message_bytes >= Ring(params.ring_bits).packed_size(2049) + 64 * 1024


def test_under_dp_every_task_update_weighs_one() -> None:
    spec = TaskSpec(Task.RANDOM, clients=6)
    weighted = update_function(spec, 2, DIM)
    unweighted = update_function(spec, 2, DIM, unweighted=True)
    model = np.zeros(DIM, dtype=np.float32)
    (values, weight), (same, one) = weighted(model, 0), unweighted(model, 0)
    assert weight == 3 and one == 1
    np.testing.assert_array_equal(values, same)
    # The random task's clip is its updates' root mean square norm, from its definition.
    norms = [float(np.linalg.norm(update_function(spec, c, DIM)(model, 0)[0])) for c in range(6)]
    assert default_l2_clip(spec, DIM) == pytest.approx(float(np.mean(norms)), rel=0.1)


def test_dp_settings_are_checked_by_the_rules_of_the_dp_configuration() -> None:
    for bad in ({"l2_clip": 0.0}, {"l2_clip": -1.0}, {"bits": 1}, {"delta": 1.0}):
        with pytest.raises(ConfigurationError):
            DpSettings(target_epsilon=1.0, **bad)
    with pytest.raises(ConfigurationError, match="exactly one"):
        DpSettings(l2_clip=1.0)


def test_errors_name_the_knob_as_the_user_sets_it() -> None:
    names = {"bits": "--dp-bits", "target_epsilon": "--dp-epsilon", "max_clients": "--clients"}
    message = "a 20-bit ring: raise bits (or target_epsilon, lower max_clients); value_bits 16"
    assert name_knobs(message, names) == (
        "a 20-bit ring: raise --dp-bits (or --dp-epsilon, lower --clients); value_bits 16"
    )
    assert default_dp_min_cohort(100, 0.33) == 67 and default_dp_min_cohort(3, 0.33) == 3


def test_certs_writes_a_dp_deployment_that_both_ends_load(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["certs", str(tmp_path / "d"), "--clients", "5", "--min-clients", "4", "--dim", "48",
         "--dp-epsilon", "8", "--dp-rounds", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "distributed DP (skellam): epsilon 8 over 3 rounds" in result.output
    config = DeploymentConfig.load(tmp_path / "d" / "deployment.toml")
    params = config.params
    assert isinstance(params, Params) and params.dp is not None
    # The minimum cohort defaults to --min-clients; every client weighs 1; the clip is the
    # random task's typical update norm.
    assert params.min_cohort == params.dp.min_clients == 4
    assert params.max_weight == 1
    assert params.dp.l2_clip == pytest.approx(np.sqrt(48 / 12))
    assert config.dp_plan is not None and config.dp_plan.epsilon_total <= 8.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dp-epsilon", "8", "--scheme", "ckks"], "drop --scheme ckks"),
        (["--dp-epsilon", "8", "--max-weight", "3"], "leave --max-weight out"),
        (["--dp-epsilon", "8", "--dp-bits", "6"], "raise --dp-bits"),
        (["--dp-clip", "2"], "add --dp-epsilon or --dp-noise-multiplier"),
        (["--dp-epsilon", "8", "--dp-noise-multiplier", "1"], "not both"),
        (["--dp-epsilon", "8", "--min-cohort", "9"], "--min-cohort must be in [1, 5]"),
    ],
    ids=["ckks", "weights", "bits", "clip-alone", "both", "cohort"],
)
def test_certs_refuses_dp_settings_it_cannot_honour_before_writing_anything(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = runner.invoke(app, ["certs", str(tmp_path / "d"), "--clients", "5", *flags])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "d").exists()


def test_a_deployment_file_cannot_carry_dp_knobs_it_has_no_key_for() -> None:
    config = DpConfig(
        dim=DIM, l2_clip=1.0, bits=20, min_clients=4, max_clients=6, delta=1e-5,
        target_epsilon=8.0, beta=0.1,
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="records no DP beta"):
        DpSettings.of(config)
