from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from secagg.errors import ConfigurationError, CryptoError, DecodeError, UsageError
from secagg.hazmat import ckks
from secagg.hazmat.ckks import (
    CiphertextSum,
    CkksKeys,
    CkksParameters,
    ClientContext,
    EncryptedSum,
    EncryptedUpdate,
    ServerContext,
    decrypt_mean,
    encrypt_update,
    error_bound,
    load_client_context,
    load_server_context,
)
from secagg.hazmat.randomness import DeterministicRandomness

ts = pytest.importorskip("tenseal")

PARAMS = CkksParameters()
SLOTS = PARAMS.slots


@pytest.fixture(scope="module")
def keys() -> CkksKeys:
    return CkksKeys.generate(PARAMS)


@pytest.fixture(scope="module")
def client(keys: CkksKeys) -> ClientContext:
    return load_client_context(keys.client_context, expected=PARAMS)


@pytest.fixture(scope="module")
def server(keys: CkksKeys) -> ServerContext:
    return load_server_context(keys.server_context, expected=PARAMS)


@pytest.fixture(scope="module")
def other_client() -> ClientContext:
    """A key holder of another deployment: same parameters, another secret key."""
    return load_client_context(CkksKeys.generate(PARAMS).client_context)


def data(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, n)  # test inputs, nothing secret


def fuzz_rng(label: str) -> DeterministicRandomness:
    return DeterministicRandomness(b"ckks fuzz test randomness").fork(label)


def aggregate(
    client: ClientContext, server: ServerContext, inputs: list[tuple[np.ndarray, int]], clip: float
) -> tuple[np.ndarray, int]:
    dim = len(inputs[0][0])
    total = CiphertextSum(server, dim)
    for values, weight in inputs:
        total.add(encrypt_update(client, values, weight, clip).encode())
    return decrypt_mean(client, total.encode(), dim, clip=clip)


def exact_mean(inputs: list[tuple[np.ndarray, int]], clip: float) -> np.ndarray:
    weighted = sum(w * np.clip(v, -clip, clip) for v, w in inputs)
    return np.asarray(weighted) / sum(w for _, w in inputs)


# --------------------------------------------------------------------------- parameters
def test_defaults_are_nvflares_and_pack_4096_values_per_ciphertext() -> None:
    assert (PARAMS.poly_modulus_degree, PARAMS.coeff_mod_bit_sizes, PARAMS.scale_bits) == (
        8192,
        (60, 40, 40),
        40,
    )
    assert PARAMS.slots == 4096
    assert PARAMS.scale == 2.0**40
    # 100 data bits, minus one per data prime and one for the sign, minus the scale.
    assert PARAMS.headroom_bits == 57


def test_bit_sizes_given_as_a_list_are_stored_as_a_tuple() -> None:
    params = CkksParameters(8192, [60, 40, 40], 40)  # type: ignore[arg-type]
    assert params == PARAMS
    assert hash(params) == hash(PARAMS)


@pytest.mark.parametrize(
    ("degree", "bit_sizes", "scale_bits", "knob"),
    [
        (3000, (60, 40, 40), 40, "poly_modulus_degree"),
        (65536, (60, 40, 40), 40, "poly_modulus_degree"),
        (True, (60, 40, 40), 40, "poly_modulus_degree"),
        (8192, (60,), 40, "coeff_mod_bit_sizes"),
        (8192, (61, 40), 40, "coeff_mod_bit_sizes"),
        (8192, (60, 19), 40, "coeff_mod_bit_sizes"),
        (8192, (60, 40.0), 40, "coeff_mod_bit_sizes"),
        (8192, "60,40", 40, "coeff_mod_bit_sizes"),
        # Over the 128-bit security limit for the degree: 240 > 218 and 140 > 109.
        (8192, (60, 60, 60, 60), 40, "coeff_mod_bit_sizes"),
        (4096, (60, 40, 40), 40, "coeff_mod_bit_sizes"),
        # Only 2 primes of 20 bits are 1 mod 32768; SEAL would fail to find a third.
        (16384, (30, 20, 20, 20), 20, "coeff_mod_bit_sizes"),
        (8192, (60, 40, 40), 19, "scale_bits"),
        (8192, (60, 40, 40), 61, "scale_bits"),
        # 40 data bits cannot carry a 2^40 scale and a sign.
        (8192, (40, 40), 40, "scale_bits"),
    ],
)
def test_parameters_seal_would_refuse_or_that_are_insecure_name_the_knob(
    degree: Any, bit_sizes: Any, scale_bits: int, knob: str
) -> None:
    with pytest.raises(ConfigurationError, match=knob):
        CkksParameters(degree, bit_sizes, scale_bits)


@pytest.mark.parametrize(("degree", "bits"), [(8192, 20), (16384, 20), (32768, 21)])
def test_the_prime_count_matches_seals_own_search(degree: int, bits: int) -> None:
    available = max(k for k in range(1, 20) if ckks._enough_ntt_primes(bits, k, degree))
    for count, found in ((available, True), (available + 1, False)):
        try:
            ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=degree,
                coeff_mod_bit_sizes=[bits] * count,
                encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
                n_threads=1,
            )
        except RuntimeError as exc:
            assert not found, exc
        else:
            assert found


def test_ciphertext_counts_and_slot_layout() -> None:
    assert PARAMS.ciphertexts_for(1) == 1
    assert PARAMS.ciphertexts_for(SLOTS - 1) == 1  # the weight takes the last slot
    assert PARAMS.ciphertexts_for(SLOTS) == 2
    assert PARAMS.slot_counts(SLOTS) == (SLOTS, 1)
    assert PARAMS.slot_counts(10_000) == (SLOTS, SLOTS, 10_001 - 2 * SLOTS)


# --------------------------------------------------------------------------- keys
def test_the_server_context_has_no_secret_key_and_cannot_decrypt_or_encrypt(
    client: ClientContext, server: ServerContext
) -> None:
    assert client.tenseal_context.is_private()
    assert not server.tenseal_context.is_private()
    assert not server.tenseal_context.has_secret_key()
    update = encrypt_update(client, np.ones(10), 1, 1.0)
    vector = ckks._load_vector(server.tenseal_context, PARAMS, update.ciphertexts[0], 11)
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    with pytest.raises(ValueError, match="encryption"):
        ts.ckks_vector(server.tenseal_context, [1.0])


def test_each_context_loader_refuses_the_other_kind(keys: CkksKeys) -> None:
    with pytest.raises(DecodeError, match="secret key"):
        load_server_context(keys.client_context)
    with pytest.raises(DecodeError, match="no secret key"):
        load_client_context(keys.server_context)


def test_a_public_key_context_is_refused_because_it_could_encrypt() -> None:
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40]
    )
    context.global_scale = 2.0**40
    public = context.serialize(save_secret_key=False, save_galois_keys=False)
    with pytest.raises(DecodeError, match="public key"):
        load_server_context(public)


def test_a_bfv_context_is_refused() -> None:
    context = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193)
    with pytest.raises(DecodeError, match="CKKS"):
        load_client_context(context.serialize(save_secret_key=True))


def test_loaded_contexts_report_their_parameters_and_refuse_unexpected_ones() -> None:
    params = CkksParameters(4096, (40, 20, 40), 30)
    keys = CkksKeys.generate(params)
    assert load_server_context(keys.server_context).params == params
    assert load_client_context(keys.client_context, expected=params).params == params
    with pytest.raises(DecodeError, match="expected"):
        load_server_context(keys.server_context, expected=PARAMS)


def test_context_junk_is_a_decode_error() -> None:
    keys = CkksKeys.generate(PARAMS)
    rng, refused = fuzz_rng("contexts"), 0
    for base in (keys.server_context, keys.client_context):
        for case in mutations(base, rng, 60):
            for load in (load_client_context, load_server_context):
                try:
                    load(case)
                except DecodeError:
                    refused += 1
    # A flip inside a key's payload can still load (~230 of 240 refused).
    assert refused > 200
    with pytest.raises(DecodeError):
        load_server_context("not bytes")  # type: ignore[arg-type]


def test_no_secret_in_any_repr(keys: CkksKeys, client: ClientContext) -> None:
    secret = keys.client_context
    for obj in (keys, client, load_client_context(secret)):
        text = repr(obj) + str(obj)
        assert "client_context" not in text
        assert "tenseal_context" not in text
        # No run of the key's bytes, in any rendering, appears either.
        assert secret[100:116].hex() not in text
        assert repr(secret[100:116])[2:-1] not in text


# --------------------------------------------------------------------------- round trips
def test_a_weighted_mean_over_several_clients_is_within_the_error_bound(
    client: ClientContext, server: ServerContext
) -> None:
    clip = 2.0
    inputs = [(data(3000, seed), weight) for seed, weight in enumerate((3, 1, 40, 7, 12))]
    mean, total_weight = aggregate(client, server, inputs, clip)
    assert total_weight == 63
    error = np.max(np.abs(mean - exact_mean(inputs, clip)))
    assert error <= error_bound(PARAMS, clients=5, clip=clip, max_weight=40)
    assert mean.dtype == np.float64
    assert mean.shape == (3000,)


def test_heavy_weights_and_a_wide_clip_stay_within_the_bound(
    client: ClientContext, server: ServerContext
) -> None:
    clip, max_weight = 500.0, 100_000
    inputs = [(data(500, 10 + i, scale=300.0), w) for i, w in enumerate((max_weight, 1, 77_777))]
    mean, total_weight = aggregate(client, server, inputs, clip)
    assert total_weight == max_weight + 1 + 77_777
    bound = error_bound(PARAMS, clients=3, clip=clip, max_weight=max_weight)
    assert np.max(np.abs(mean - exact_mean(inputs, clip))) <= bound


@pytest.mark.parametrize("dim", [1, SLOTS - 1, SLOTS, SLOTS + 1, 10_000])
def test_vectors_of_any_length_pack_across_ciphertexts_and_come_back(
    client: ClientContext, server: ServerContext, dim: int
) -> None:
    inputs = [(data(dim, dim), 2), (data(dim, dim + 1), 5)]
    update = encrypt_update(client, inputs[0][0], 2, 3.0)
    assert len(update.ciphertexts) == -(-(dim + 1) // SLOTS)
    mean, total_weight = aggregate(client, server, inputs, 3.0)
    assert total_weight == 7
    assert mean.shape == (dim,)
    bound = error_bound(PARAMS, clients=2, clip=3.0, max_weight=5)
    assert np.max(np.abs(mean - exact_mean(inputs, 3.0))) <= bound


def test_clipped_values_are_counted_and_aggregate_at_the_bounds(
    client: ClientContext, server: ServerContext
) -> None:
    values = np.array([-5.0, 5.0, 0.0, 1.0, -1.0, 1.0000001, 0.5])
    update = encrypt_update(client, values, 1, 1.0)
    assert update.clipped == 3
    assert encrypt_update(client, np.zeros(5), 1, 1.0).clipped == 0
    mean, _ = aggregate(client, server, [(values, 4)], 1.0)
    expected = [-1.0, 1.0, 0.0, 1.0, -1.0, 1.0, 0.5]
    np.testing.assert_allclose(mean, expected, rtol=0, atol=error_bound(PARAMS, 1, 1.0, 4))


def test_the_clip_count_never_goes_on_the_wire(client: ClientContext) -> None:
    update = encrypt_update(client, np.array([9.0, -9.0, 0.0]), 1, 1.0)
    decoded = EncryptedUpdate.decode(update.encode())
    assert update.clipped == 2
    assert decoded.clipped is None
    assert decoded == update


def test_the_input_array_is_not_modified(client: ClientContext) -> None:
    values = np.array([3.0, -3.0, 0.25])
    encrypt_update(client, values, 9, 1.0)
    np.testing.assert_array_equal(values, [3.0, -3.0, 0.25])


@pytest.mark.parametrize(
    ("values", "weight", "clip", "error"),
    [
        (np.zeros(3), 0, 1.0, UsageError),
        (np.zeros(3), 2**31, 1.0, UsageError),
        (np.zeros(3), 1.5, 1.0, UsageError),
        (np.zeros(3), True, 1.0, UsageError),
        (np.zeros((2, 2)), 1, 1.0, UsageError),
        (np.zeros(0), 1, 1.0, UsageError),
        (np.array([0.0, np.nan]), 1, 1.0, ConfigurationError),
        (np.array([0.0, np.inf]), 1, 1.0, ConfigurationError),
        (np.zeros(3), 1, 0.0, ConfigurationError),
        (np.zeros(3), 1, float("nan"), ConfigurationError),
        # 2^31 x 1e9 is beyond the 57-bit headroom: SEAL could not even encode it.
        (np.full(3, 1e9), 2**31 - 1, 1e9, ConfigurationError),
    ],
)
def test_bad_client_inputs_are_refused(
    client: ClientContext, values: np.ndarray, weight: Any, clip: float, error: type[Exception]
) -> None:
    with pytest.raises(error):
        encrypt_update(client, values, weight, clip)


def test_the_wrong_kind_of_context_is_a_usage_error(
    client: ClientContext, server: ServerContext
) -> None:
    with pytest.raises(UsageError):
        encrypt_update(server, np.zeros(3), 1, 1.0)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        CiphertextSum(client, 3)  # type: ignore[arg-type]
    total = CiphertextSum(server, 3)
    total.add(encrypt_update(client, np.zeros(3), 1, 1.0))
    with pytest.raises(UsageError):
        decrypt_mean(server, total.result(), 3)  # type: ignore[arg-type]


def test_an_empty_sum_has_no_result(server: ServerContext) -> None:
    with pytest.raises(UsageError):
        CiphertextSum(server, 3).result()


def test_an_upload_of_100k_values_costs_about_57_5_bytes_per_parameter(
    client: ClientContext,
) -> None:
    update = encrypt_update(client, data(100_000, 7), 3, 2.0)
    encoded = update.encode()
    assert update.encoded_size == len(encoded)
    # NVFlare measured ~57.6 B/param at these parameters; 100,000 values fill 25 ciphertexts
    # (102,400 slots), so a little padding is expected. About 14x float32.
    assert len(encoded) / 100_000 == pytest.approx(57.5, rel=0.10)
    assert update.bytes_per_parameter == len(encoded) / 100_000


# --------------------------------------------------------------------------- other keys
def test_a_sum_under_another_key_is_refused_by_the_weight_check(
    client: ClientContext, other_client: ClientContext, server: ServerContext
) -> None:
    total = CiphertextSum(server, 50)
    total.add(encrypt_update(other_client, data(50, 1), 2, 1.0))
    encoded = total.encode()
    with pytest.raises(CryptoError, match="wrong key"):
        decrypt_mean(client, encoded, 50)
    _, weight = decrypt_mean(other_client, encoded, 50)
    assert weight == 2


def test_an_update_under_another_key_poisons_the_sum_detectably(
    client: ClientContext, other_client: ClientContext, server: ServerContext
) -> None:
    # The coordinator cannot tell (same parameters, no integrity); the key holder can.
    total = CiphertextSum(server, 50)
    total.add(encrypt_update(client, data(50, 1), 2, 1.0))
    total.add(encrypt_update(other_client, data(50, 2), 2, 1.0))
    with pytest.raises(CryptoError):
        decrypt_mean(client, total.encode(), 50)


def test_a_foreign_ciphertext_beside_a_genuine_weight_is_refused(
    client: ClientContext, other_client: ClientContext, server: ServerContext
) -> None:
    # The weight slot is genuine here, but the foreign slots decrypt to noise of about
    # q / scale ~ 2^60, far more than any sum these parameters can carry.
    dim = SLOTS + 10
    ours = encrypt_update(client, data(dim, 3), 1, 1.0)
    theirs = encrypt_update(other_client, data(dim, 3), 1, 1.0)
    spliced = EncryptedUpdate(PARAMS, dim, (theirs.ciphertexts[0], ours.ciphertexts[1]))
    total = CiphertextSum(server, dim)
    total.add(spliced.encode())
    with pytest.raises(CryptoError, match="wrong key"):
        decrypt_mean(client, total.encode(), dim)


def test_with_a_clip_a_mean_outside_the_clip_range_is_refused(
    client: ClientContext, server: ServerContext
) -> None:
    # The coordinator can scale a ciphertext by a plaintext (CKKS is malleable); a key holder
    # who knows the clip range catches it when the result leaves the range.
    total = CiphertextSum(server, 5)
    update = encrypt_update(client, np.full(5, 0.9), 1, 1.0)
    vectors = [
        ckks._load_vector(server.tenseal_context, PARAMS, blob, count)
        for blob, count in zip(update.ciphertexts, PARAMS.slot_counts(5), strict=True)
    ]
    scaled = vectors[0] + [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # shift the values, keep the weight
    blob = ckks._seal_ciphertext(bytes(scaled.serialize()))
    total.add(EncryptedUpdate(PARAMS, 5, (blob,)))
    mean, weight = decrypt_mean(client, total.encode(), 5)
    assert weight == 1
    np.testing.assert_allclose(mean, 1.9, atol=1e-6)
    with pytest.raises(CryptoError, match="clip"):
        decrypt_mean(client, total.encode(), 5, clip=1.0)


# --------------------------------------------------------------------------- error bound
def test_the_error_bound_is_the_encryption_noise_plus_float_error() -> None:
    bound = error_bound(PARAMS, clients=10, clip=1.0, max_weight=100)
    # N * 21.5 / 2^40 for the noise; float error ~7e-13 per transform at N = 8192.
    assert bound == pytest.approx(8192 * 21.5 / 2**40 + 3 * PARAMS.float_error)
    assert 1.5e-7 < bound < 1.7e-7
    assert error_bound(PARAMS, 10, 1000.0, 100) > bound


@pytest.mark.parametrize(
    ("params", "clients", "clip", "max_weight", "knob"),
    [
        (PARAMS, 0, 1.0, 1, "clients"),
        (PARAMS, 1, 0.0, 1, "clip"),
        (PARAMS, 1, 1.0, 0, "max_weight"),
        (PARAMS, 1, 1.0, 2**31, "max_weight"),
        # The total weight would no longer decrypt to within 1/2 of a whole number.
        (PARAMS, 10_000, 100.0, 2**30, "max_weight"),
        # 17 bits of headroom: 100 x 1000 x 10 does not fit.
        (CkksParameters(8192, (30, 30, 30), 40), 100, 10.0, 1000, "headroom"),
    ],
)
def test_cohorts_the_parameters_cannot_carry_are_refused(
    params: CkksParameters, clients: int, clip: float, max_weight: int, knob: str
) -> None:
    with pytest.raises(ConfigurationError, match=knob):
        error_bound(params, clients, clip, max_weight)


# --------------------------------------------------------------------------- wire format
def test_updates_and_sums_round_trip_through_canonical_bytes(
    client: ClientContext, server: ServerContext
) -> None:
    update = encrypt_update(client, data(SLOTS + 5, 4), 3, 1.0)
    encoded = update.encode()
    assert encoded.startswith(b"CKKS\x01\x01")
    assert EncryptedUpdate.decode(encoded).encode() == encoded
    total = CiphertextSum(server, SLOTS + 5)
    total.add(update)
    total.add(encoded)
    assert total.updates == 2
    result = total.result()
    assert EncryptedSum.decode(result.encode()) == result
    assert result.updates == 2
    with pytest.raises(DecodeError, match="kind"):
        EncryptedSum.decode(encoded)
    with pytest.raises(DecodeError, match="kind"):
        EncryptedUpdate.decode(result.encode())


def header(dim: int, count: int, kind: int = 1, params: CkksParameters = PARAMS) -> bytes:
    return b"CKKS" + bytes([1, kind]) + params._encode() + struct.pack(">II", dim, count)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"XXXX\x01\x01", "magic"),
        (b"CKKS\x02\x01", "version"),
        (b"CKKS\x01\x07", "kind"),
        (b"CKKS\x01\x01" + struct.pack(">IBB", 3000, 40, 2) + b"\x3c\x28", "parameters"),
        (header(0, 1), "cannot hold"),
        (header(10, 2), "cannot hold"),
        (header(2**32 - 1, 2**20), "cannot hold"),
        (header(10, 1), "exceeds"),
        (header(10, 1) + struct.pack(">I", 2**31) + bytes(64), "exceeds"),
        (header(10, 1) + struct.pack(">I", 16) + bytes(16), "a ciphertext of 16 bytes"),
        (header(10, 1) + struct.pack(">I", 20) + bytes(20), "header"),
    ],
)
def test_malformed_envelopes_hostile_counts_and_lengths_included_are_decode_errors(
    data: bytes, reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason):
        EncryptedUpdate.decode(data)


def test_trailing_bytes_and_non_bytes_are_refused(client: ClientContext) -> None:
    encoded = encrypt_update(client, np.zeros(4), 1, 1.0).encode()
    with pytest.raises(DecodeError, match="trailing"):
        EncryptedUpdate.decode(encoded + b"\x00")
    with pytest.raises(DecodeError):
        EncryptedUpdate.decode("CKKS")  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        EncryptedSum.decode(None)  # type: ignore[arg-type]


def test_decrypting_junk_is_a_decode_error(client: ClientContext) -> None:
    for junk in (b"", b"CKKS", header(10, 1, kind=2), bytes(100)):
        with pytest.raises(DecodeError):
            decrypt_mean(client, junk, 10)


def test_a_seal_header_that_lies_about_its_size_is_refused(client: ClientContext) -> None:
    update = encrypt_update(client, np.zeros(4), 1, 1.0)
    blob = bytearray(update.ciphertexts[0])
    blob[8:16] = struct.pack("<Q", len(blob) + 1)
    with pytest.raises(UsageError, match="declares"):
        EncryptedUpdate(PARAMS, 4, (bytes(blob),))
    forged = update.encode().replace(update.ciphertexts[0], bytes(blob))
    with pytest.raises(DecodeError, match="declares"):
        EncryptedUpdate.decode(forged)


def test_updates_of_another_shape_or_parameters_are_refused(
    client: ClientContext, server: ServerContext
) -> None:
    total = CiphertextSum(server, 10)
    with pytest.raises(DecodeError, match="dim"):
        total.add(encrypt_update(client, np.zeros(11), 1, 1.0).encode())
    small = load_client_context(
        CkksKeys.generate(CkksParameters(4096, (40, 20, 40), 30)).client_context
    )
    with pytest.raises(DecodeError, match="under"):
        total.add(encrypt_update(small, np.zeros(10), 1, 1.0).encode())
    assert total.updates == 0


# --------------------------------------------------------------------------- fuzzing
def mutations(base: bytes, rng: DeterministicRandomness, count: int) -> Iterator[bytes]:
    """Truncations, bit flips, overwritten header bytes, hostile lengths and random bytes."""
    picks = iter(rng.words(8 * count).tolist())
    for i in range(count):
        kind, a, b = i % 5, next(picks), next(picks)
        mutated = bytearray(base)
        if kind == 0:
            yield bytes(mutated[: a % len(base)])
        elif kind == 1:
            for _ in range(1 + b % 8):
                mutated[next(picks) % len(mutated)] ^= 1 << (next(picks) % 8)
            yield bytes(mutated)
        elif kind == 2:
            mutated[a % min(64, len(mutated))] = b & 0xFF
            yield bytes(mutated)
        elif kind == 3:
            at = a % max(1, len(mutated) - 8)
            mutated[at : at + 8] = struct.pack("<Q", (b << 32 | next(picks)) | 1 << 63)
            yield bytes(mutated)
        else:
            yield rng.bytes(a % 2048)


def test_fuzzed_ciphertexts_are_refused_or_summed_and_never_crash(
    client: ClientContext, server: ServerContext
) -> None:
    # A crash (TenSEAL segfaulting on some input) would take the test process down with it.
    values = data(20, 5)
    update = encrypt_update(client, values, 2, 3.0)
    blob = update.ciphertexts[0]
    total = CiphertextSum(server, 20)
    total.add(update)
    refused = 0
    for mutated in mutations(blob, fuzz_rng("ciphertexts"), 250):
        # Re-framed with a consistent SEAL size, so that the SEAL parser itself is reached.
        if len(mutated) > 16:
            framed = bytearray(mutated)
            framed[8:16] = struct.pack("<Q", len(framed))
            mutated = bytes(framed)
        envelope = header(20, 1) + struct.pack(">I", len(mutated)) + mutated
        probe = CiphertextSum(server, 20)
        try:
            probe.add(envelope)
        except DecodeError:
            refused += 1
            # An update is added whole or not at all.
            with pytest.raises(DecodeError):
                total.add(envelope)
    # Flips inside zstd's payload can still decode to a valid ciphertext (~230 of 250 refused).
    assert refused > 200
    assert total.updates == 1
    mean, weight = decrypt_mean(client, total.encode(), 20)
    assert weight == 2
    assert np.max(np.abs(mean - values)) < error_bound(PARAMS, 1, 3.0, 2)


def test_fuzzed_envelopes_are_refused_or_reencode_to_the_same_bytes(
    client: ClientContext,
) -> None:
    # The envelope is checked field by field; the SEAL payload only by its header here (the
    # coordinator parses it when adding), so flips inside a payload may still decode.
    encoded = encrypt_update(client, np.zeros(3), 1, 1.0).encode()
    refused = 0
    for mutated in mutations(encoded, fuzz_rng("envelopes"), 200):
        for decoder in (EncryptedUpdate.decode, EncryptedSum.decode):
            try:
                decoded = decoder(mutated)
            except DecodeError:
                refused += 1
            else:
                assert decoded.encode() == mutated
    # Each mutation fails the decoder of the other kind, and truncations and random bytes
    # fail both: at least 200 + 40 + 40 of the 400 attempts.
    assert refused >= 280


def test_tenseals_own_vector_format_is_not_accepted_as_a_ciphertext(
    client: ClientContext, server: ServerContext
) -> None:
    # Its slot-count list is what makes TenSEAL read out of bounds; we never parse one.
    native = ts.ckks_vector(client.tenseal_context, [1.0, 2.0]).serialize()
    envelope = header(1, 1) + struct.pack(">I", len(native)) + native
    with pytest.raises(DecodeError):
        CiphertextSum(server, 1).add(envelope)


def seal_ciphertext(
    server: ServerContext,
    *,
    parms_id: list[int] | None = None,
    ntt: int = 1,
    size: int = 2,
    moduli: int = 2,
    scale: float = 2.0**40,
    coefficients: np.ndarray | None = None,
) -> bytes:
    """An uncompressed SEAL ciphertext built field by field (seal/ciphertext.cpp layout)."""
    seal = server.tenseal_context.seal_context().data
    if coefficients is None:
        coefficients = np.random.default_rng(0).integers(0, 2**39, size * 8192 * moduli, np.uint64)
    words = struct.pack("<Q", len(coefficients)) + coefficients.astype("<u8").tobytes()
    array = struct.pack("<HBBBBHQ", 0xA15E, 16, 4, 3, 0, 0, 16 + len(words)) + words
    members = (
        struct.pack("<4Q", *(parms_id or seal.first_parms_id()))
        + bytes([ntt])
        + struct.pack("<QQQdQ", size, 8192, moduli, scale, 1)
        + array
    )
    return struct.pack("<HBBBBHQ", 0xA15E, 16, 4, 3, 0, 0, 16 + len(members)) + members


def add_raw(server: ServerContext, blob: bytes) -> None:
    CiphertextSum(server, 1).add(header(1, 1) + struct.pack(">I", len(blob)) + blob)


def test_a_well_formed_ciphertext_of_random_coefficients_is_summed(server: ServerContext) -> None:
    # No integrity: anything shaped like a ciphertext is one. Only decryption can tell.
    add_raw(server, seal_ciphertext(server))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        # Decrypts to its plaintext under any key: anyone can forge one.
        (
            {
                "coefficients": np.concatenate(
                    [np.ones(16384, np.uint64), np.zeros(16384, np.uint64)]
                )
            },
            "transparent",
        ),
        ({"scale": 2.0**41}, "scale"),
        ({"ntt": 0}, "NTT form"),
        ({"moduli": 1, "parms_id": "last"}, "level"),
        ({"size": 3}, "allow"),
        ({"coefficients": np.full(32768, 2**64 - 1, np.uint64)}, "invalid"),
        ({"parms_id": [1, 2, 3, 4]}, "invalid"),
    ],
)
def test_ciphertexts_that_are_not_fresh_top_level_encryptions_are_refused(
    server: ServerContext, fields: dict[str, Any], reason: str
) -> None:
    if fields.get("parms_id") == "last":
        fields["parms_id"] = server.tenseal_context.seal_context().data.last_parms_id()
    with pytest.raises(DecodeError, match=reason):
        add_raw(server, seal_ciphertext(server, **fields))
