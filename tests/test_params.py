"""Params refuse every configuration that could overflow or break a threshold rule."""

from __future__ import annotations

import pytest

from secagg.errors import ConfigurationError
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel


def test_ring_is_just_wide_enough_for_the_largest_possible_sum() -> None:
    # Bonawitz et al.'s setting: 2**10 clients of 16-bit values need a 26-bit ring.
    assert Params(dim=10, max_clients=2**10, value_bits=16).ring_bits == 26
    assert Params(dim=10, max_clients=100, value_bits=16).ring_bits == 23
    p = Params(dim=10, max_clients=100, value_bits=16, max_weight=1000)
    assert 2**p.ring_bits > 100 * 1000 * (2**16 - 1) >= 2 ** (p.ring_bits - 1)


def test_configuration_that_would_overflow_62_bits_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="62"):
        Params(dim=10, max_clients=2**31, value_bits=31, max_weight=2**30)


@pytest.mark.parametrize(
    "fields",
    [
        {"dim": 0},
        {"max_clients": 2},
        {"clip": 0.0},
        {"clip": float("inf")},
        {"value_bits": 0},
        {"value_bits": 32},
        {"max_weight": 0},
        {"dropout_rate": 1.0},
        {"adversarial_rate": -0.1},
    ],
)
def test_invalid_fields_are_refused(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"dim": 10, "max_clients": 100}
    base.update(fields)
    with pytest.raises(ConfigurationError):
        Params(**base)  # type: ignore[arg-type]


def test_secagg_plus_graph_comes_from_the_finder() -> None:
    graph = Params(dim=10, max_clients=1000).graph(1000)
    assert (graph.degree, graph.threshold) == (72, 24)
    assert not graph.complete


def test_secagg_uses_the_complete_graph() -> None:
    graph = Params(dim=10, max_clients=100, protocol=Protocol.SECAGG).graph(50)
    assert graph.degree == 49 and graph.complete
    assert graph.threshold > 0.05 * 50


def test_threshold_override_at_or_below_corrupt_clients_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="corrupt"):
        Params(dim=1, max_clients=100, protocol=Protocol.SECAGG, threshold=5)


def test_threshold_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="threshold"):
        Params(dim=1, max_clients=10, protocol=Protocol.SECAGG, adversarial_rate=0, threshold=1)


def test_threshold_above_degree_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="degree"):
        Params(dim=1, max_clients=100, degree=10, threshold=11)


def test_odd_degree_is_refused_below_the_complete_graph() -> None:
    with pytest.raises(ConfigurationError, match="even"):
        Params(dim=1, max_clients=100, degree=11, threshold=4)


def test_semi_malicious_complete_graph_needs_a_majority_threshold() -> None:
    with pytest.raises(ConfigurationError, match="semi-malicious"):
        Params(
            dim=1,
            max_clients=100,
            protocol=Protocol.SECAGG,
            server_model=ServerModel.SEMI_MALICIOUS,
            threshold=50,
        )


def test_cohort_outside_the_configured_range_is_refused() -> None:
    params = Params(dim=1, max_clients=10)
    with pytest.raises(ConfigurationError):
        params.graph(11)
    with pytest.raises(ConfigurationError):
        params.graph(2)


def test_params_are_frozen() -> None:
    params = Params(dim=1, max_clients=10)
    with pytest.raises(AttributeError):
        params.dim = 2  # type: ignore[misc]


def test_active_mode_uses_the_semi_malicious_parameters() -> None:
    params = Params(dim=1, max_clients=1000, server_model=ServerModel.SEMI_MALICIOUS)
    assert params.active
    graph = params.graph(1000)
    assert (graph.degree, graph.threshold) == (398, 223)


def test_active_mode_refuses_rates_no_graph_can_meet() -> None:
    # t > (n + 0.3 n) / 2 and t <= n - 1 - 0.35 n cannot both hold.
    with pytest.raises(ConfigurationError):
        Params(
            dim=1,
            max_clients=1000,
            server_model=ServerModel.SEMI_MALICIOUS,
            adversarial_rate=0.3,
            dropout_rate=0.35,
        ).graph(1000)


def test_min_cohort_must_fit_the_cohort() -> None:
    with pytest.raises(ConfigurationError, match="min_cohort"):
        Params(dim=1, max_clients=10, min_cohort=11)
