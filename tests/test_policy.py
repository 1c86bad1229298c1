"""A client runs only the rounds its own deployment allows: every way a server can configure a
round differently is refused before the client trains or generates a key."""

from __future__ import annotations

import dataclasses

import pytest

from secagg.errors import AbortReason, ClientAbort
from secagg.schemes.masking.messages import RoundConfig
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.schemes.masking.policy import ClientPolicy

ALLOWED = frozenset(range(20))
ME = 3


def _params(**overrides: object) -> Params:
    fields: dict[str, object] = {"dim": 100, "max_clients": 20, "max_weight": 3, "min_cohort": 4}
    fields.update(overrides)
    return Params(**fields)  # type: ignore[arg-type]


def _config(
    params: Params, cohort: range | tuple[int, ...] = range(10), **changes: object
) -> RoundConfig:
    config = params.round_config(tuple(cohort), nonce=b"n" * 16, round_id=5)
    return dataclasses.replace(config, **changes) if changes else config


def _refused(policy: ClientPolicy, config: RoundConfig) -> AbortReason:
    with pytest.raises(ClientAbort) as caught:
        policy.check(config, ME)
    return caught.value.reason


def test_the_configuration_a_deployment_makes_for_itself_is_accepted() -> None:
    for server_model in ServerModel:
        for protocol in Protocol:
            params = _params(server_model=server_model, protocol=protocol)
            ClientPolicy(params, ALLOWED).check(_config(params), ME)


def test_a_semi_honest_config_sent_to_an_active_mode_client_is_a_downgrade() -> None:
    active = _params(server_model=ServerModel.SEMI_MALICIOUS)
    weaker = _config(_params(), threshold=_config(active).threshold)
    assert _refused(ClientPolicy(active, ALLOWED), weaker) is AbortReason.DOWNGRADE


def test_an_active_config_sent_to_a_semi_honest_client_is_refused_too() -> None:
    # It would need identities the client was not given: never run a mode it was not set up for.
    stronger = _config(_params(server_model=ServerModel.SEMI_MALICIOUS))
    assert _refused(ClientPolicy(_params(), ALLOWED), stronger) is AbortReason.PARAMETER_MISMATCH


def test_a_smaller_minimum_cohort_is_a_downgrade() -> None:
    params = _params()
    assert _refused(ClientPolicy(params, ALLOWED), _config(params, min_cohort=1)) is (
        AbortReason.DOWNGRADE
    )


@pytest.mark.parametrize(
    "change",
    [
        {"dim": 101},
        {"clip": 2.0},
        {"value_bits": 15},
        {"max_weight": 2},
        {"ring_bits": 40},
        {"protocol": "secagg"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_parameter_must_match_the_deployment(change: dict[str, object]) -> None:
    params = _params()
    config = _config(params)
    if "protocol" in change:  # the complete graph has its own degree: keep the config valid
        change = {**change, "degree": 9, "threshold": 9}
    assert _refused(ClientPolicy(params, ALLOWED), dataclasses.replace(config, **change)) is (
        AbortReason.PARAMETER_MISMATCH
    )


def test_a_lower_threshold_or_another_degree_is_a_weak_graph() -> None:
    params = _params(protocol=Protocol.SECAGG, server_model=ServerModel.SEMI_MALICIOUS)
    config = _config(params)
    policy = ClientPolicy(params, ALLOWED)
    assert _refused(policy, dataclasses.replace(config, threshold=2)) is AbortReason.WEAK_GRAPH
    plus = _params()
    plus_config = _config(plus, range(20))
    assert plus_config.degree < 19
    assert (
        _refused(
            ClientPolicy(plus, ALLOWED),
            dataclasses.replace(plus_config, degree=plus_config.degree - 2),
        )
        is AbortReason.WEAK_GRAPH
    )


def test_a_higher_threshold_only_makes_shares_harder_to_collect_and_is_accepted() -> None:
    params = _params(protocol=Protocol.SECAGG)
    config = _config(params)
    ClientPolicy(params, ALLOWED).check(dataclasses.replace(config, threshold=config.degree), ME)


def test_a_cohort_member_off_the_allow_list_is_refused_in_both_modes() -> None:
    for server_model in ServerModel:
        params = _params(server_model=server_model)
        invented = _config(params, (*range(9), 4242))
        assert _refused(ClientPolicy(params, ALLOWED), invented) is (AbortReason.COHORT_NOT_ALLOWED)


def test_a_cohort_below_the_minimum_or_above_the_maximum_is_refused() -> None:
    params = _params(min_cohort=6)
    # A config cannot name a minimum above its cohort, so a cohort of 5 must also lower the
    # minimum: that is refused as the downgrade it is.
    small = _config(_params(min_cohort=5), range(5))
    assert _refused(ClientPolicy(params, ALLOWED), small) is AbortReason.DOWNGRADE
    wide = Params(dim=100, max_clients=40, max_weight=3, min_cohort=6)
    big = wide.round_config(tuple(range(30)), nonce=b"n" * 16)
    # The larger deployment's ring is wider, so the config also names another ring width.
    assert _refused(ClientPolicy(params, frozenset(range(40))), big) is (
        AbortReason.PARAMETER_MISMATCH
    )


def test_a_client_outside_the_cohort_is_refused() -> None:
    params = _params()
    config = _config(params, (0, 1, 2, 4, 5, 6, 7))
    assert _refused(ClientPolicy(params, ALLOWED), config) is AbortReason.UNKNOWN_ID


def test_the_allow_list_check_is_remembered_per_cohort_and_a_new_stranger_still_refused() -> None:
    """A process checks one configuration for thousands of its clients (the simulator), so
    the allow-list comparison is memoised on the two sets: an accepted cohort does not vouch
    for another one, which is compared afresh."""
    params = _params()
    policy = ClientPolicy(params, ALLOWED)
    honest = _config(params)
    for _ in range(3):
        policy.check(honest, ME)
    assert _refused(policy, _config(params, (*range(9), 4242))) is AbortReason.COHORT_NOT_ALLOWED
    policy.check(honest, ME)
    other = ClientPolicy(params, frozenset(range(9)))  # the same cohort, a shorter list
    assert _refused(other, honest) is AbortReason.COHORT_NOT_ALLOWED
