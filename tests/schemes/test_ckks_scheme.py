"""CKKS as a scheme: a round through the engine gives the weighted mean of the clipped inputs
within the stated bound, survives dropouts of anyone but the last key holder, and its key
holders check what little they can."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("tenseal")

from secagg.errors import AbortReason, ClientAbort, DropReason, RoundAborted
from secagg.hazmat import ckks
from secagg.hazmat.randomness import SystemRandomness
from secagg.protocol.codec import decode
from secagg.protocol.stages import Stage
from secagg.schemes.ckks import (
    CkksConfig,
    CkksScheme,
    CkksSumRequest,
    CkksUpload,
    simulated_keys,
)
from secagg.simulate import DropSchedule, random_inputs, simulate_round

PARAMS = ckks.CkksParameters()
# Two full ciphertexts (8,192 slots) with the weight in the last slot: no padding skews bytes.
DIM = 2 * PARAMS.slots - 1


@pytest.fixture(scope="module")
def scheme() -> CkksScheme:
    client, server = simulated_keys(PARAMS)
    return CkksScheme(
        dim=DIM,
        max_weight=3,
        clip=1.0,
        min_cohort=3,
        params=PARAMS,
        client_context=client,
        server_context=server,
        key_holders=2,
    )


def test_a_round_gives_the_weighted_mean_within_the_stated_bound(scheme: CkksScheme) -> None:
    weights = np.array([1, 2, 3, 1, 2, 3], dtype=np.float64)
    result = simulate_round(scheme, 6, random_inputs(DIM, 3), weights=weights, seed=3)
    report = result.report
    assert report.outcome == "completed", report.abort_reason
    assert report.scheme == "ckks"
    assert report.max_abs_error is not None and report.max_abs_error <= report.error_bound
    # About 14x float32 on the way up, as NVFlare measured (57.6 bytes per parameter).
    assert 12 < report.upload_bytes_per_client / report.plaintext_bytes_per_client < 16


def test_inputs_are_clipped_and_the_mean_is_that_of_the_clipped_inputs(
    scheme: CkksScheme,
) -> None:
    def loud(i: int) -> np.ndarray:
        return np.full(DIM, 3.0 if i == 0 else 0.5, dtype=np.float32)

    report = simulate_round(scheme, 4, loud, seed=1).report
    assert report.clipped_values == DIM
    assert report.max_abs_error is not None and report.max_abs_error <= report.error_bound


def test_drops_at_upload_and_a_silent_key_holder_still_give_the_mean_of_the_rest(
    scheme: CkksScheme,
) -> None:
    drops = DropSchedule({"upload": frozenset({3, 4}), "decrypt": frozenset({0})})
    report = simulate_round(scheme, 7, random_inputs(DIM, 1), drops=drops, seed=1).report
    assert report.outcome == "completed", report.abort_reason
    assert report.included == (0, 1, 2, 5, 6)  # key holder 0 uploaded, then fell silent
    assert report.dropped["upload"] == (3, 4) and report.dropped["decrypt"] == (0,)
    assert report.max_abs_error is not None and report.max_abs_error <= report.error_bound


def test_when_every_key_holder_is_gone_the_round_aborts_and_reveals_nothing(
    scheme: CkksScheme,
) -> None:
    drops = DropSchedule({"upload": frozenset({0, 1})})
    result = simulate_round(scheme, 5, random_inputs(DIM, 1), drops=drops, seed=1)
    assert result.report.outcome == "aborted"
    assert result.aggregate is None
    assert "key holder" in (result.report.abort_reason or "")


def _round(scheme: CkksScheme, n: int = 4) -> tuple[CkksConfig, dict[int, object]]:
    config = scheme.round_config(range(n), nonce=bytes(16), round_id=1)
    clients = {i: scheme.client(config, i, SystemRandomness()) for i in range(n)}
    return config, clients


def test_a_key_holder_refuses_a_sum_below_its_minimum_cohort(scheme: CkksScheme) -> None:
    config, clients = _round(scheme)
    server = scheme.server(config)
    for i, client in clients.items():
        client.set_input(np.zeros(DIM), 1)  # type: ignore[attr-defined]
        server.receive(i, client.receive(config))  # type: ignore[attr-defined]
    outgoing = server.close_stage()
    request = outgoing[0]
    assert isinstance(request, CkksSumRequest)
    # The server claims a sum of two clients: below the deployment's minimum of three.
    forged = dataclasses.replace(request, included=(0, 1))
    with pytest.raises(ClientAbort) as caught:
        clients[0].receive(forged)  # type: ignore[attr-defined]
    assert caught.value.reason is AbortReason.COHORT_TOO_SMALL


def test_the_server_context_cannot_decrypt_and_holds_no_key(scheme: CkksScheme) -> None:
    assert scheme.server_context is not None
    assert not scheme.server_context.tenseal_context.is_private()


def test_a_malformed_upload_drops_its_sender_and_the_round_goes_on(scheme: CkksScheme) -> None:
    config, clients = _round(scheme, 5)
    server = scheme.server(config)
    for i, client in clients.items():
        client.set_input(np.full(DIM, 0.25), 1)  # type: ignore[attr-defined]
        upload = client.receive(config)  # type: ignore[attr-defined]
        if i == 4:
            assert isinstance(upload, CkksUpload)
            upload = dataclasses.replace(upload, update=upload.update[:-7])
        server.receive(i, upload.encode())
    assert server.drops[4].reason is DropReason.MALFORMED
    outgoing = server.close_stage()
    for i, request in outgoing.items():
        server.receive(i, clients[i].receive(decode(request.encode())))  # type: ignore[attr-defined]
    server.close_stage()
    aggregate = server.aggregate()
    assert aggregate.included == (0, 1, 2, 3)
    assert np.max(np.abs(aggregate.mean - 0.25)) <= aggregate.error_bound


def test_a_client_refuses_a_configuration_other_than_its_deployments(scheme: CkksScheme) -> None:
    config = scheme.round_config(range(5), nonce=bytes(16))
    for change, reason in (
        ({"clip": 100.0}, AbortReason.PARAMETER_MISMATCH),
        ({"dim": 4999}, AbortReason.PARAMETER_MISMATCH),
        ({"scale_bits": 30}, AbortReason.PARAMETER_MISMATCH),
        ({"min_cohort": 1}, AbortReason.DOWNGRADE),
    ):
        with pytest.raises(ClientAbort) as caught:
            scheme.check(dataclasses.replace(config, **change), 0)
        assert caught.value.reason is reason


def test_config_and_messages_round_trip_and_reject_junk(scheme: CkksScheme) -> None:
    config = scheme.round_config(range(5), nonce=bytes(16))
    assert decode(config.encode()) == config
    data = config.encode()
    for cut in range(len(data)):
        with pytest.raises(Exception) as caught:
            decode(data[:cut])
        assert type(caught.value).__name__ == "DecodeError"


def test_fewer_uploads_than_the_minimum_cohort_abort_before_any_decryption(
    scheme: CkksScheme,
) -> None:
    config, clients = _round(scheme, 4)
    server = scheme.server(config)
    for i in (0, 1):
        clients[i].set_input(np.zeros(DIM), 1)  # type: ignore[attr-defined]
        server.receive(i, clients[i].receive(config))  # type: ignore[attr-defined]
    with pytest.raises(RoundAborted) as caught:
        server.close_stage()
    assert caught.value.stage == Stage.UPLOAD
