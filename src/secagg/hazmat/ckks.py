"""CKKS homomorphic aggregation (Microsoft SEAL through TenSEAL): the comparison backend.

Clients encrypt their clipped, weighted update; the coordinator adds ciphertexts without any
secret key; key holders decrypt the sum and divide by the total weight, which travels in the
last slot used, as it does in the masking vector (:mod:`~secagg.hazmat.quantize`)::

    provisioner   CkksKeys.generate(params) -> client context (secret key), server context
    client        encrypt_update(client, values, weight, clip) -> EncryptedUpdate -> bytes
    coordinator   CiphertextSum(server, dim).add(bytes) ... .result() -> EncryptedSum -> bytes
    key holder    decrypt_mean(client, bytes, dim) -> (weighted mean, total weight)

A vector of ``dim`` values becomes ``dim + 1`` slots (the weight last), packed into
``ceil((dim + 1) / slots)`` ciphertexts of ``slots = poly_modulus_degree / 2`` slots each.
Defaults are NVFlare's: N = 8192, coefficient moduli [60, 40, 40] bits, scale 2^40; an update
then costs about 57.5 bytes per parameter on the wire (14x float32).

Threat model, plainly (this is weaker than masking, and the comparison exists to show it):

- **Who holds the key.** The provisioner generates one secret key and gives the same key to
  every client, so it knows the key too: a trusted dealer. The coordinator gets an evaluation
  context holding the parameters only: no secret key and no public key.
- **Collusion threshold one.** The coordinator holds every client's ciphertext, so the
  coordinator together with any single key holder (any client, or the dealer) decrypts every
  individual update. Masking needs t of n.
- **No proof that an aggregate aggregates.** A key holder cannot tell a sum of many updates
  from one client's update relayed back as "the sum"; the ``updates`` count in
  :class:`EncryptedSum` is the coordinator's claim. Nothing enforces a minimum cohort.
- **No integrity.** CKKS is malleable: anyone holding the parameters can add or multiply
  plaintexts into a ciphertext, drop or repeat updates. We refuse malformed and trivial
  (transparent) ciphertexts, nothing more.
- **Approximate.** CKKS arithmetic is inexact; :func:`error_bound` states by how much.
- **Decryptions leak.** Publishing a decrypted result to whoever holds its ciphertext (e.g. a
  released global model) gives an IND-CPA^D adversary material on the key (Li and
  Micciancio, 2021); SEAL has no noise flooding to prevent it.
- **Randomness.** SEAL draws the key and the encryption noise from its own CSPRNG (seeded
  from ``std::random_device``), not from :class:`~secagg.hazmat.randomness.Randomness`, so
  runs are not reproducible bit for bit.

Parsing untrusted bytes. TenSEAL's own vector format carries a list of slot counts beside the
ciphertexts and trusts it: a vector with fewer counts than ciphertexts segfaults on decryption,
and a count above the slot count reads past the end of the decoded buffer (TenSEAL 0.3.18,
observed). Our wire format therefore carries bare SEAL ciphertexts; we rebuild TenSEAL's
wrapper ourselves with the slot counts of our layout, check SEAL's 16-byte header (and the
size it declares) before SEAL sees the bytes, cap each ciphertext at what the parameters can
produce, and after loading check that each is a fresh, well-formed encryption at the top
level (two polynomials, NTT form, the expected scale, not transparent). The SEAL inside
TenSEAL 0.3.18 is 4.3.3 or later (it has the streaming inflater that release added): it bounds
every allocation by the parameters and decompresses only as far as it parses, so a
decompression bomb stops at the first invalid field. Fuzzing it with truncations, bit flips,
random bytes, hostile lengths, zstd bombs and field-by-field mutations of an uncompressed
ciphertext raised only exceptions (no crash, no hang), which we turn into
:class:`~secagg.errors.DecodeError`. A ciphertext under another key with the same parameters
is indistinguishable until decryption, where :func:`decrypt_mean` refuses it: its slots
decrypt to noise of about q / scale, so the total weight cannot be read to within 1/2.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from secagg.errors import (
    ConfigurationError,
    CryptoError,
    DecodeError,
    MissingExtra,
    UsageError,
)
from secagg.hazmat.quantize import MAX_WEIGHT

__all__ = [
    "CiphertextSum",
    "CkksKeys",
    "CkksParameters",
    "ClientContext",
    "EncryptedSum",
    "EncryptedUpdate",
    "ServerContext",
    "decrypt_mean",
    "encrypt_update",
    "error_bound",
    "load_client_context",
    "load_server_context",
]

# The HomomorphicEncryption.org standard's largest total coefficient modulus for 128-bit
# classical security with a ternary secret, per degree (SEAL's CoeffModulus::MaxBitCount).
MAX_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# SEAL takes primes of at most 60 bits. Below 20 bits an NTT-friendly prime is rare at these
# degrees, and a scale below 2^20 leaves the encryption noise near the values themselves.
MIN_MODULUS_BITS, MAX_MODULUS_BITS = 20, 60
MIN_SCALE_BITS, MAX_SCALE_BITS = 20, 60

# SEAL samples encryption noise from a centred binomial on 2 x 21 bits (util/rlwe.cpp,
# sample_poly_cbd), so every noise coefficient lies in [-21, 21]; its compile-time clipped
# Gaussian alternative stays within 6 sigma = 19.2. The encoder rounds each coefficient to
# an integer: at most 1/2 more.
_NOISE_COEFF_MAX = 21.0
_ROUNDING_COEFF_MAX = 0.5
_UNIT_ROUNDOFF = 2.0**-53

MAGIC = b"CKKS"
VERSION = 1
_KIND_UPDATE = 1
_KIND_SUM = 2

# SEAL's serialisation header: magic, header size, version major/minor, compression mode,
# reserved, total size (seal/serialization.h).
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
_SEAL_COMPRESSION_MODES = (0, 1, 2)  # none, zlib, zstd
# A ciphertext's members before its coefficients: parms_id, NTT flag, size, degree, modulus
# count, scale, correction factor, then the coefficient array's own header and length.
_SEAL_MEMBER_BYTES = 32 + 1 + 8 + 8 + 8 + 8 + 8 + _SEAL_HEADER.size + 8


def _tenseal() -> Any:
    """TenSEAL, imported on first use: it is an optional dependency (the ``he`` extra).

    Its absence is ``MissingExtra``, as ``secagg.extras.require`` would raise it (hazmat
    imports nothing of secagg but the errors, so it says so itself)."""
    try:
        import tenseal  # type: ignore[import-untyped,import-not-found,unused-ignore]

        # Registers SEAL's Modulus with pybind11, which EncryptionParameters.coeff_modulus()
        # returns (without it the call fails to convert its result).
        import tenseal.sealapi  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "tenseal":
            raise  # tenseal is there but broken: its own error says more
        raise MissingExtra("he", "CKKS", "tenseal") from exc
    return tenseal


# --------------------------------------------------------------------------- parameters
def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 2^64 (these twelve bases are a proven witness set)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in bases:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _enough_ntt_primes(bits: int, count: int, degree: int) -> bool:
    """Whether SEAL's prime search finds ``count`` primes of ``bits`` bits that are 1 mod 2N.

    It walks down from the largest such candidate below 2^bits to 2^(bits-1), in steps of 2N
    (CoeffModulus::Create); we walk the same way.
    """
    step = 2 * degree
    value = ((1 << bits) - 1) // step * step + 1
    lower = 1 << (bits - 1)
    while count > 0 and value > lower:
        if _is_prime(value):
            count -= 1
        value -= step
    return count == 0


@dataclass(frozen=True)
class CkksParameters:
    """CKKS parameters: ring degree N, coefficient moduli (bit sizes, the last one the special
    prime that only key switching uses) and the encoding scale 2^scale_bits."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if isinstance(n, bool) or not isinstance(n, int) or n not in MAX_MODULUS_BITS_128:
            raise ConfigurationError(
                f"poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS_128)}, got {n!r}"
            )
        sizes = self.coeff_mod_bit_sizes
        if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence):
            raise ConfigurationError("coeff_mod_bit_sizes must be a sequence of ints")
        sizes = tuple(sizes)
        object.__setattr__(self, "coeff_mod_bit_sizes", sizes)
        if len(sizes) < 2:
            raise ConfigurationError(
                "coeff_mod_bit_sizes needs at least two moduli: data primes and a special prime"
            )
        for bits in sizes:
            if isinstance(bits, bool) or not isinstance(bits, int):
                raise ConfigurationError("coeff_mod_bit_sizes must hold ints")
            if not MIN_MODULUS_BITS <= bits <= MAX_MODULUS_BITS:
                raise ConfigurationError(
                    f"each of coeff_mod_bit_sizes must be in [{MIN_MODULUS_BITS}, "
                    f"{MAX_MODULUS_BITS}], got {bits}"
                )
        if sum(sizes) > MAX_MODULUS_BITS_128[n]:
            raise ConfigurationError(
                f"coeff_mod_bit_sizes total {sum(sizes)} bits, more than the "
                f"{MAX_MODULUS_BITS_128[n]} that give 128-bit security at poly_modulus_degree "
                f"{n}: use fewer or smaller moduli, or a larger poly_modulus_degree"
            )
        for bits in sorted(set(sizes)):
            if not _enough_ntt_primes(bits, sizes.count(bits), n):
                raise ConfigurationError(
                    f"coeff_mod_bit_sizes asks for {sizes.count(bits)} primes of {bits} bits "
                    f"that are 1 mod {2 * n}, and there are not that many: use larger moduli"
                )
        s = self.scale_bits
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigurationError("scale_bits must be an int")
        if not MIN_SCALE_BITS <= s <= MAX_SCALE_BITS:
            raise ConfigurationError(
                f"scale_bits must be in [{MIN_SCALE_BITS}, {MAX_SCALE_BITS}], got {s}"
            )
        if self.headroom_bits < 1:
            raise ConfigurationError(
                f"scale_bits {s} leaves no room for values under the data moduli "
                f"{sizes[:-1]}: lower scale_bits or add data bits to coeff_mod_bit_sizes"
            )

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return 2.0**self.scale_bits

    @property
    def headroom_bits(self) -> int:
        """log2 of the largest slot magnitude that still decrypts correctly.

        Decryption needs |scale * value| < q/2 for q the product of the data primes (all but
        the special prime). A b-bit prime exceeds 2^(b-1), so q > 2^(data bits - data primes).
        The coefficients of an encoded vector are no larger than its largest slot.
        """
        data = self.coeff_mod_bit_sizes[:-1]
        return sum(data) - len(data) - 1 - self.scale_bits

    def ciphertexts_for(self, dim: int) -> int:
        """How many ciphertexts a ``dim``-vector and its weight take."""
        return -(-(dim + 1) // self.slots)

    def slot_counts(self, dim: int) -> tuple[int, ...]:
        """The slots each ciphertext of a ``dim``-vector uses: full ones, then the rest."""
        count = self.ciphertexts_for(dim)
        return (self.slots,) * (count - 1) + (dim + 1 - (count - 1) * self.slots,)

    @property
    def max_ciphertext_bytes(self) -> int:
        """The most bytes one serialised fresh ciphertext can take: two polynomials over the
        data primes, uncompressed, plus headers and a generous allowance for compression
        overhead on incompressible data (zstd adds well under 1/128)."""
        raw = (
            _SEAL_HEADER.size
            + _SEAL_MEMBER_BYTES
            + 2 * self.poly_modulus_degree * (len(self.coeff_mod_bit_sizes) - 1) * 8
        )
        return raw + raw // 128 + 1024

    @property
    def noise_bound(self) -> float:
        """Max error in any slot of one fresh encryption, decrypted (a proof, not an estimate).

        Decryption returns scale * m + e + r: e the encryption noise, every coefficient within
        21; r the encoder's rounding, within 1/2. A slot is the polynomial evaluated at a
        root of unity, so its error is at most the sum of N coefficient errors, over scale.
        """
        return self.poly_modulus_degree * (_NOISE_COEFF_MAX + _ROUNDING_COEFF_MAX) / self.scale

    @property
    def float_error(self) -> float:
        """Relative error of one encode or decode in double precision, to the largest slot.

        The standard bound for a radix-2 FFT (Higham, *Accuracy and Stability of Numerical
        Algorithms*, Thm 24.2) is log2(n) * eta in the 2-norm, eta ~ 7u, over n = N/2 points;
        one more stage for the conversions, and sqrt(n) to pass from the 2-norm of the slots to
        the largest. At N = 8192 this is 7e-13, against ~7e-16 observed.
        """
        n = self.poly_modulus_degree // 2
        return (math.log2(n) + 1) * 7 * _UNIT_ROUNDOFF * math.sqrt(n)

    def _encode(self) -> bytes:
        return struct.pack(
            ">IBB", self.poly_modulus_degree, self.scale_bits, len(self.coeff_mod_bit_sizes)
        ) + bytes(self.coeff_mod_bit_sizes)


def error_bound(params: CkksParameters, clients: int, clip: float, max_weight: int) -> float:
    """Max |decrypted mean - exact weighted mean of the clipped inputs|, in any coordinate.

    Each client's encryption errs by at most ``noise_bound`` per slot, plus ``float_error``
    times its largest slot (w_k * max(clip, 1): the weight slot counts too); decoding the sum
    adds ``float_error`` times W * max(clip, 1). Dividing by the total weight W, which is at
    least the number of clients (every weight is at least 1), gives::

        noise_bound + 3 * float_error * max(clip, 1)

    (the third term covers the weighting and the final division in double precision). The
    bound does not grow with the cohort, but the cohort and its weights must fit: the sum
    must stay under the parameters' headroom, and the total weight must decode to within 1/2
    of a whole number, so that it is recovered exactly. Anything else is refused here.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ConfigurationError(f"clients must be a positive int, got {clients!r}")
    if isinstance(max_weight, bool) or not isinstance(max_weight, int):
        raise ConfigurationError("max_weight must be an int")
    if not 1 <= max_weight < MAX_WEIGHT:
        raise ConfigurationError(f"max_weight must be in [1, 2^31), got {max_weight}")
    _check_clip(clip)
    magnitude = max(float(clip), 1.0)
    largest_sum = clients * max_weight * magnitude
    noise = params.noise_bound
    if largest_sum * (1 + params.float_error) + clients * noise >= 2.0**params.headroom_bits:
        raise ConfigurationError(
            f"{clients} clients x max_weight {max_weight} x clip {clip} overflows the "
            f"{params.headroom_bits}-bit headroom of these CKKS parameters: lower max_weight "
            "or clip, add data bits to coeff_mod_bit_sizes, or lower scale_bits"
        )
    if clients * noise + 3 * params.float_error * largest_sum >= 0.5:
        raise ConfigurationError(
            f"{clients} clients x max_weight {max_weight} x clip {clip} is too large for the "
            "total weight to decrypt exactly: lower max_weight or clip, or raise scale_bits"
        )
    return noise + 3 * params.float_error * magnitude


def _check_clip(clip: float) -> None:
    if isinstance(clip, bool) or not isinstance(clip, int | float):
        raise ConfigurationError("clip must be a number")
    if not math.isfinite(clip) or clip <= 0:
        raise ConfigurationError(f"clip must be finite and positive, got {clip!r}")


# --------------------------------------------------------------------------- keys and contexts
@dataclass(frozen=True, eq=False)
class ClientContext:
    """A loaded key holder's context: it encrypts and decrypts. Build it with
    :func:`load_client_context`."""

    params: CkksParameters
    tenseal_context: Any = field(repr=False)


@dataclass(frozen=True, eq=False)
class ServerContext:
    """A loaded coordinator's context: parameters only; it can add ciphertexts, nothing else.
    Build it with :func:`load_server_context`."""

    params: CkksParameters
    tenseal_context: Any = field(repr=False)


@dataclass(frozen=True, eq=False)
class CkksKeys:
    """What provisioning hands out: the key holders' context (with the secret key) and the
    coordinator's evaluation context (parameters only)."""

    params: CkksParameters
    client_context: bytes = field(repr=False)  # the secret key
    server_context: bytes = field(repr=False)  # public, but bytes make a useless repr

    @classmethod
    def generate(cls, params: CkksParameters | None = None) -> CkksKeys:
        """A fresh secret key under ``params`` (NVFlare's defaults if None)."""
        params = CkksParameters() if params is None else params
        ts = _tenseal()
        # Symmetric (secret-key) encryption, as NVFlare does. Every client holds the secret key
        # anyway (it decrypts the aggregate), so a public key would serve only one party: the
        # coordinator, which could then mint fresh, well-formed encryptions of any update, for
        # clients that do not exist or in place of real ones, indistinguishable from genuine
        # ciphertexts. Without it the coordinator can still shift or scale what it holds (CKKS
        # is malleable), but it cannot encrypt. Symmetric encryption also has a smaller,
        # provable noise bound (no public-key noise terms), which error_bound relies on.
        try:
            context = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
                encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
                n_threads=1,
            )
        except (ValueError, RuntimeError) as exc:  # parameters SEAL refuses that we did not
            raise ConfigurationError(f"SEAL refused these CKKS parameters: {exc}") from None
        context.global_scale = params.scale
        # No relinearisation or Galois keys: aggregation only adds.
        client = context.serialize(
            save_public_key=False,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        server = context.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return cls(params=params, client_context=bytes(client), server_context=bytes(server))


def load_client_context(data: bytes, expected: CkksParameters | None = None) -> ClientContext:
    """A key holder's context from provisioned bytes; it must hold the secret key."""
    context, params = _load_context(data, expected)
    if not context.is_private():
        raise DecodeError("not a client context: it holds no secret key")
    return ClientContext(params=params, tenseal_context=context)


def load_server_context(data: bytes, expected: CkksParameters | None = None) -> ServerContext:
    """The coordinator's context from provisioned bytes; it must hold no secret key (and no
    public key: it must not be able to encrypt)."""
    context, params = _load_context(data, expected)
    if context.is_private():
        # The coordinator must never be able to decrypt an individual update.
        raise DecodeError("not a server context: it holds the secret key")
    return ServerContext(params=params, tenseal_context=context)


def _load_context(data: bytes, expected: CkksParameters | None) -> tuple[Any, CkksParameters]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    ts = _tenseal()
    try:
        context = ts.context_from(bytes(data), n_threads=1)
        seal = context.seal_context().data
        key_level = seal.key_context_data()
        if key_level.parms().scheme() != ts._ts_cpp.SCHEME_TYPE.CKKS:
            raise DecodeError("not a CKKS context")
        try:
            context.has_public_key()
        except ValueError:
            pass  # TenSEAL refuses the question exactly for symmetric contexts
        else:
            raise DecodeError("not a symmetric-key context: it carries a public key")
        # The key level's moduli: the data primes, then the special prime.
        bit_sizes = tuple(int(m.bit_count()) for m in key_level.parms().coeff_modulus())
        degree = int(key_level.parms().poly_modulus_degree())
        scale = float(context.global_scale)
    except DecodeError:
        raise
    except (ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as exc:
        raise DecodeError(f"not a TenSEAL context: {exc}") from None
    scale_bits = round(math.log2(scale)) if scale > 0 and math.isfinite(scale) else -1
    if scale_bits < 0 or 2.0**scale_bits != scale:
        raise DecodeError("the context's scale is not a power of two")
    try:
        params = CkksParameters(degree, bit_sizes, scale_bits)
    except ConfigurationError as exc:
        raise DecodeError(f"the context's parameters are not acceptable: {exc}") from None
    if expected is not None and params != expected:
        raise DecodeError(f"the context is for {params}, expected {expected}")
    return context, params


# --------------------------------------------------------------------------- wire format
class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, size: int) -> bytes:
        if size > self.remaining():
            raise DecodeError(f"truncated: needed {size} bytes at offset {self._pos}")
        chunk = bytes(self._data[self._pos : self._pos + size])
        self._pos += size
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def _seal_header_problem(blob: bytes, params: CkksParameters) -> str | None:
    """What makes ``blob`` unable to be one of these parameters' ciphertexts, judged before
    SEAL parses it; None if nothing does."""
    if not _SEAL_HEADER.size < len(blob) <= params.max_ciphertext_bytes:
        return (
            f"a ciphertext of {len(blob)} bytes; these parameters allow at most "
            f"{params.max_ciphertext_bytes}"
        )
    magic, header_size, _major, _minor, mode, reserved, size = _SEAL_HEADER.unpack_from(blob)
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size or reserved != 0:
        return "not a SEAL object (bad header)"
    if mode not in _SEAL_COMPRESSION_MODES:
        return f"unknown SEAL compression mode {mode}"
    if size != len(blob):
        return f"the SEAL header declares {size} bytes, the ciphertext has {len(blob)}"
    return None


@dataclass(frozen=True)
class _Ciphertexts:
    """Shared shape of an update and a sum: parameters, dimension, one SEAL ciphertext per
    group of slots."""

    KIND: ClassVar[int]

    params: CkksParameters
    dim: int
    ciphertexts: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.params, CkksParameters):
            raise UsageError("params must be CkksParameters")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise UsageError("dim must be an int")
        if not 1 <= self.dim < 2**32 - 1:
            raise UsageError(f"dim must be in [1, 2^32 - 1), got {self.dim}")
        object.__setattr__(self, "ciphertexts", tuple(self.ciphertexts))
        expected = self.params.ciphertexts_for(self.dim)
        if len(self.ciphertexts) != expected:
            raise UsageError(
                f"{len(self.ciphertexts)} ciphertexts for dim {self.dim}; expected {expected}"
            )
        for blob in self.ciphertexts:
            if not isinstance(blob, bytes):
                raise UsageError("ciphertexts must be bytes")
            problem = _seal_header_problem(blob, self.params)
            if problem is not None:
                raise UsageError(problem)

    @property
    def encoded_size(self) -> int:
        """Length of :meth:`encode`, without building it."""
        return len(self._header()) + sum(4 + len(blob) for blob in self.ciphertexts)

    @property
    def bytes_per_parameter(self) -> float:
        return self.encoded_size / self.dim

    def _extra(self) -> bytes:
        return b""

    def _header(self) -> bytes:
        return (
            MAGIC
            + struct.pack(">BB", VERSION, self.KIND)
            + self.params._encode()
            + struct.pack(">I", self.dim)
            + self._extra()
            + struct.pack(">I", len(self.ciphertexts))
        )

    def encode(self) -> bytes:
        """``CKKS || version || kind || params || dim || [updates] || count || (len || SEAL
        ciphertext)*``, integers big-endian."""
        parts = [self._header()]
        for blob in self.ciphertexts:
            parts += [struct.pack(">I", len(blob)), blob]
        return b"".join(parts)

    @classmethod
    def _read_common(cls, data: bytes) -> tuple[_Reader, CkksParameters, int]:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        r = _Reader(bytes(data))
        if r.take(len(MAGIC)) != MAGIC:
            raise DecodeError("not a CKKS message (bad magic)")
        version, kind = r.unpack(">BB")
        if version != VERSION:
            raise DecodeError(f"unsupported CKKS wire version {version}")
        if kind != cls.KIND:
            raise DecodeError(f"expected a {cls.__name__}, got kind {kind}")
        degree, scale_bits, moduli = r.unpack(">IBB")
        bit_sizes = tuple(r.take(moduli))
        try:
            params = CkksParameters(degree, bit_sizes, scale_bits)
        except ConfigurationError as exc:
            raise DecodeError(f"unacceptable CKKS parameters: {exc}") from None
        (dim,) = r.unpack(">I")
        return r, params, dim

    @staticmethod
    def _read_ciphertexts(r: _Reader, params: CkksParameters, dim: int) -> tuple[bytes, ...]:
        (count,) = r.unpack(">I")
        if not 1 <= dim < 2**32 - 1 or count != params.ciphertexts_for(dim):
            raise DecodeError(f"{count} ciphertexts cannot hold dim {dim}")
        # Checked before anything is allocated: each takes at least its length and a header.
        if count * (4 + _SEAL_HEADER.size) > r.remaining():
            raise DecodeError(f"count {count} exceeds what the {r.remaining()} bytes can hold")
        blobs = []
        for _ in range(count):
            (size,) = r.unpack(">I")
            if size > min(r.remaining(), params.max_ciphertext_bytes):
                raise DecodeError(f"ciphertext length {size} exceeds the bytes left or allowed")
            blobs.append(r.take(size))
        if r.remaining():
            raise DecodeError(f"{r.remaining()} trailing bytes")
        return tuple(blobs)


@dataclass(frozen=True)
class EncryptedUpdate(_Ciphertexts):
    """One client's encrypted, clipped, weighted update.

    ``clipped`` is how many values the client clipped. Only the encrypting client knows it:
    it is never encoded (it would tell the coordinator about the client's data), so a decoded
    update has ``clipped=None``.
    """

    KIND: ClassVar[int] = _KIND_UPDATE

    clipped: int | None = field(default=None, compare=False)

    @classmethod
    def decode(cls, data: bytes) -> EncryptedUpdate:
        r, params, dim = cls._read_common(data)
        blobs = cls._read_ciphertexts(r, params, dim)
        try:
            return cls(params, dim, blobs)
        except UsageError as exc:
            raise DecodeError(f"invalid EncryptedUpdate: {exc}") from None


@dataclass(frozen=True)
class EncryptedSum(_Ciphertexts):
    """The coordinator's homomorphic sum of ``updates`` encrypted updates (its claim)."""

    KIND: ClassVar[int] = _KIND_SUM

    updates: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.updates, bool) or not isinstance(self.updates, int):
            raise UsageError("updates must be an int")
        if not 1 <= self.updates < 2**32:
            raise UsageError(f"updates must be in [1, 2^32), got {self.updates}")

    def _extra(self) -> bytes:
        return struct.pack(">I", self.updates)

    @classmethod
    def decode(cls, data: bytes) -> EncryptedSum:
        r, params, dim = cls._read_common(data)
        (updates,) = r.unpack(">I")
        blobs = cls._read_ciphertexts(r, params, dim)
        try:
            return cls(params, dim, blobs, updates)
        except UsageError as exc:
            raise DecodeError(f"invalid EncryptedSum: {exc}") from None


# TenSEAL's CKKSVectorProto: 1 = packed slot counts, 2 = SEAL ciphertexts, 3 = scale (double).
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tenseal_vector(blob: bytes, slots: int, scale: float) -> bytes:
    """TenSEAL's wrapper around one SEAL ciphertext, with the slot count of *our* layout:
    never the sender's (see the module docstring)."""
    count = _varint(slots)
    return b"".join(
        [
            b"\x0a" + _varint(len(count)) + count,
            b"\x12" + _varint(len(blob)) + blob,
            b"\x19" + struct.pack("<d", scale),
        ]
    )


def _seal_ciphertext(vector_bytes: bytes) -> bytes:
    """The one SEAL ciphertext in TenSEAL's serialisation of a one-ciphertext vector we made."""
    data, pos, found = memoryview(vector_bytes), 0, []

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        key = varint()
        if key & 7 == 2:  # length-delimited: the slot counts or a ciphertext
            size = varint()
            if key >> 3 == 2:
                found.append(bytes(data[pos : pos + size]))
            pos += size
        elif key & 7 == 1:  # the scale
            pos += 8
        else:
            raise UsageError(f"unexpected field {key} in TenSEAL's vector serialisation")
    if len(found) != 1 or pos != len(data):
        raise UsageError("TenSEAL's vector serialisation is not one ciphertext")
    return found[0]


_DECODE_FAILURES = (ValueError, RuntimeError, TypeError, OverflowError, IndexError, MemoryError)


def _load_vector(context: Any, params: CkksParameters, blob: bytes, slots: int) -> Any:
    """Deserialise one ciphertext of ours under ``context``; DecodeError unless it is a fresh
    top-level encryption under these parameters."""
    problem = _seal_header_problem(blob, params)
    if problem is not None:
        raise DecodeError(problem)
    ts = _tenseal()
    try:
        vector = ts.ckks_vector_from(context, _tenseal_vector(blob, slots, params.scale))
        (ciphertext,) = vector.ciphertext()
        top = context.seal_context().data.first_parms_id()
        if ciphertext.size() != 2:
            reason = f"{ciphertext.size()} polynomials, not 2"
        elif ciphertext.parms_id() != top:
            reason = "not at the top level of the modulus chain"
        elif not ciphertext.is_ntt_form():
            reason = "not in NTT form"
        elif ciphertext.scale != params.scale:
            reason = f"scale {ciphertext.scale!r}, not 2^{params.scale_bits}"
        elif ciphertext.is_transparent():
            # It decrypts to its plaintext under any key: anyone can make one.
            reason = "transparent (its second polynomial is zero)"
        else:
            return vector
    except _DECODE_FAILURES as exc:
        raise DecodeError(f"not a ciphertext under these parameters: {exc}") from None
    raise DecodeError(f"not a fresh encryption under these parameters: {reason}")


# --------------------------------------------------------------------------- client
def encrypt_update(
    context: ClientContext, values: NDArray[np.floating[Any]], weight: int, clip: float
) -> EncryptedUpdate:
    """Clip ``values`` to [-clip, clip], multiply by ``weight``, append the weight, encrypt.

    The number of clipped values is reported in ``clipped`` and never leaves the client.
    """
    if not isinstance(context, ClientContext):
        raise UsageError("encrypt_update needs a ClientContext")
    _check_clip(clip)
    if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
        raise UsageError("weight must be an int")
    weight = int(weight)
    if not 1 <= weight < MAX_WEIGHT:
        # At least 1: the mean divides by the total weight, and error_bound needs it.
        raise UsageError(f"weight must be in [1, 2^31), got {weight}")
    x = np.array(values, dtype=np.float64)  # a copy, worked on in place below
    if x.ndim != 1 or len(x) == 0:
        raise UsageError(f"values must be a non-empty 1-D array, got shape {x.shape}")
    params = context.params
    if not len(x) < 2**32 - 1:
        raise UsageError("values are too long")
    low, high = float(x.min()), float(x.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigurationError("input contains NaN or infinity")
    clipped = 0
    if low < -clip or high > clip:
        clipped = int(np.count_nonzero(x < -clip) + np.count_nonzero(x > clip))
        np.clip(x, -clip, clip, out=x)
        low, high = max(low, -clip), min(high, clip)
    if max(abs(low), abs(high), 1.0) * weight >= 2.0**params.headroom_bits:
        # SEAL would refuse to encode it; a sum of such updates could not decrypt anyway.
        raise ConfigurationError(
            f"weight {weight} x values up to clip {clip} overflow the {params.headroom_bits}-bit "
            "headroom of these CKKS parameters: lower clip or max_weight"
        )
    padded = np.empty(len(x) + 1, dtype=np.float64)
    np.multiply(x, float(weight), out=padded[:-1])
    padded[-1] = weight
    ts = _tenseal()
    blobs = []
    for start in range(0, len(padded), params.slots):
        # One TenSEAL vector per ciphertext: its multi-ciphertext vectors print a warning on
        # stdout and add the slot-count list we refuse to trust on the way back in.
        chunk = padded[start : start + params.slots]
        vector = ts.ckks_vector(context.tenseal_context, chunk)
        blobs.append(_seal_ciphertext(bytes(vector.serialize())))
    return EncryptedUpdate(params, len(x), tuple(blobs), clipped=clipped)


# --------------------------------------------------------------------------- coordinator
class CiphertextSum:
    """A running homomorphic sum of encoded updates, computed with the public context only.

    Memory is one update's worth: the running sum plus the update being added. An update is
    added whole or not at all: any malformed ciphertext refuses the update with a
    DecodeError and leaves the sum as it was.
    """

    def __init__(self, context: ServerContext, dim: int) -> None:
        if not isinstance(context, ServerContext):
            raise UsageError("CiphertextSum needs a ServerContext")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim < 2**32 - 1:
            raise UsageError(f"dim must be an int in [1, 2^32 - 1), got {dim!r}")
        self._context = context
        self._dim = dim
        self._slot_counts = context.params.slot_counts(dim)
        self._sum: list[Any] | None = None
        self._updates = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def updates(self) -> int:
        """How many updates the sum holds."""
        return self._updates

    def add(self, update: bytes | EncryptedUpdate) -> None:
        """Add one client's update (its encoded bytes, or the decoded object)."""
        if not isinstance(update, EncryptedUpdate):
            update = EncryptedUpdate.decode(update)
        params = self._context.params
        if update.params != params:
            raise DecodeError(f"an update under {update.params}, the sum is under {params}")
        if update.dim != self._dim:
            raise DecodeError(f"an update of dim {update.dim}, the sum has dim {self._dim}")
        context = self._context.tenseal_context
        vectors = [
            _load_vector(context, params, blob, slots)
            for blob, slots in zip(update.ciphertexts, self._slot_counts, strict=True)
        ]
        if self._sum is None:
            self._sum = vectors
        else:
            try:
                for total, vector in zip(self._sum, vectors, strict=True):
                    total.add_(vector)
            except _DECODE_FAILURES as exc:  # pragma: no cover - _load_vector checked it all
                raise UsageError(f"adding a checked ciphertext failed: {exc}") from exc
        self._updates += 1

    def result(self) -> EncryptedSum:
        """The sum so far, to send to the key holders."""
        if self._sum is None:
            raise UsageError("no update has been added")
        blobs = tuple(_seal_ciphertext(bytes(v.serialize())) for v in self._sum)
        return EncryptedSum(self._context.params, self._dim, blobs, self._updates)

    def encode(self) -> bytes:
        return self.result().encode()


# --------------------------------------------------------------------------- key holder
def decrypt_mean(
    context: ClientContext,
    encoded_sum: bytes | EncryptedSum,
    dim: int,
    *,
    clip: float | None = None,
) -> tuple[NDArray[np.float64], int]:
    """The weighted mean (float64, length ``dim``) and the total weight of a decrypted sum.

    The total weight must decrypt to a whole number of at least ``updates``; otherwise the
    ciphertexts are under another key, or are not a sum of updates, and a CryptoError says
    so. With ``clip``, every coordinate of the mean must also lie within [-clip, clip], give
    or take the error bound.
    """
    if not isinstance(context, ClientContext):
        raise UsageError("decrypt_mean needs a ClientContext")
    total = (
        encoded_sum if isinstance(encoded_sum, EncryptedSum) else EncryptedSum.decode(encoded_sum)
    )
    params = context.params
    if total.params != params:
        raise DecodeError(f"a sum under {total.params}, this key is under {params}")
    if total.dim != dim:
        raise DecodeError(f"a sum of dim {total.dim}, expected {dim}")
    slots = np.empty(dim + 1, dtype=np.float64)
    start = 0
    for blob, count in zip(total.ciphertexts, params.slot_counts(dim), strict=True):
        vector = _load_vector(context.tenseal_context, params, blob, count)
        try:
            slots[start : start + count] = vector.decrypt()
        except _DECODE_FAILURES as exc:
            raise DecodeError(f"the ciphertext does not decrypt: {exc}") from None
        start += count
    largest = float(np.max(np.abs(slots)))
    decrypted_weight = float(slots[-1])
    # The weight slot errs by at most the noise of each update plus the floating-point error
    # of the transforms, which scales with the largest slot (as in error_bound).
    tolerance = total.updates * params.noise_bound + 3 * params.float_error * largest
    weight = round(decrypted_weight) if math.isfinite(largest) else 0
    if not (
        math.isfinite(largest)
        and tolerance < 0.5
        and abs(decrypted_weight - weight) <= tolerance
        and total.updates <= weight < 2**53
    ):
        raise CryptoError(
            "the sum does not decrypt to a whole total weight of at least its update count: "
            "wrong key, or not a sum of updates"
        )
    mean = slots[:-1] / weight
    if clip is not None:
        _check_clip(clip)
        slack = params.noise_bound + 3 * params.float_error * max(float(clip), 1.0)
        if float(np.max(np.abs(mean))) > clip + slack:
            raise CryptoError("the decrypted mean lies outside [-clip, clip]: not a sum of updates")
    return mean, weight
