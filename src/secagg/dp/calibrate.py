"""Distributed-DP parameters chosen by their meaning, and the plan calibrated from them.

A user states what they want (``DpConfig``): a target epsilon over a training run (with delta,
the number of rounds and, if they sample clients, the Poisson sampling rate) *or* a noise
multiplier; the L2 clip; the bits per coordinate on the wire; the smallest and largest number
of inputs a round may sum. :func:`calibrate` turns that into a ``DpPlan``: the scale, each
client's noise, the padded dimension, and the bounds it guarantees, or refuses with a
``ConfigurationError`` that names the knob to turn.

**Dropouts do not weaken the guarantee.** The noise is calibrated so that ``min_clients``
clients' noise alone meets the target: a round that reveals a sum of more inputs carries more
noise and spends less (:func:`achieved_epsilon`). The protocol must refuse to reveal a sum of
fewer than ``min_clients`` inputs; nothing here can protect such a sum, and
:func:`achieved_epsilon` refuses to pretend otherwise.

**The ring does not wrap silently.** The scale is the largest for which a stated bound on the
probability that one coordinate of the sum leaves ``[-2^(b-1), 2^(b-1))`` holds, for any inputs
within the clip that do not depend on the rotation's signs and up to ``max_clients`` summands.
The bound is a Chernoff bound on signal + rounding error + noise: after the rotation a
coordinate of the clipped sum is a Rademacher sum with variance proxy ``(n c s)^2 / D``;
rounding errors are independent, bounded in an interval of length 1 (proxy 1/4 each, plus at
most beta/(1 - beta) of bias each when beta > 0); the noise's moment generating function is
exact (Skellam: ``n mu (cosh t - 1)``) or bounded (discrete Gaussian: ``n sigma^2 t^2 / 2``,
Canonne-Kamath-Steinke). So the stated figure is an upper bound, not an estimate. It assumes
honest inputs: a client that chooses its update knowing the signs (or sends any ring vector at
all, which secure aggregation cannot prevent) can make coordinates wrap. That harms accuracy,
not privacy: wrapping is a public function of the sum and of that client's own vector.

**Who must be honest.** The guarantee counts the noise of ``min_clients`` clients. Clients who
collude with the server and leave their noise out take it away; to tolerate k of them, set
``min_clients`` to the smallest number of *honest* inputs a revealed sum contains (the
protocol's minimum cohort minus k).

**Rounding does not silently dominate.** Rounding to integers inflates the sensitivity from
``c s`` to ``Delta_2`` (up to ``c s + sqrt(D)``), and the noise with it; a configuration where
the ring is too narrow for a useful scale (``Delta_2 / (c s) > max_rounding_inflation``) is
refused rather than run with noise that drowns the signal. Conditional rounding (``beta > 0``)
tightens ``Delta_2`` but biases the rounding by at most ``min(beta, sqrt(beta)/2) sqrt(D) /
((1 - beta) s)`` in L2 (original units); above ``max_rounding_bias * l2_clip`` it is refused.

The DP mode computes an *unweighted* mean: each client's contribution is bounded by the clip,
which is what the sensitivity counts; a weight would multiply it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from secagg.checks import is_int, is_number
from secagg.dp import accounting
from secagg.dp.layers import NoiseLayers
from secagg.dp.mechanism import Mechanism
from secagg.dp.noise import MAX_LOCAL_VARIANCE
from secagg.dp.rotation import padded_dimension
from secagg.errors import ConfigurationError, UsageError

__all__ = [
    "MAX_DP_BITS",
    "MIN_DP_BITS",
    "DpConfig",
    "DpPlan",
    "achieved_epsilon",
    "calibrate",
    "carried_noise_multiplier",
    "epsilon_at_noise",
    "epsilon_spent",
    "wrap_probability_bound",
]

MIN_DP_BITS = 2
# Noisy coordinates are sampled and summed in float64 and int64; 32 bits keeps every value
# exact with room to spare (and matches the ring's uint32 width).
MAX_DP_BITS = 32

# Relative precision of the searches: the scale to 1e-3 (it only trades wrap probability
# against rounding); the noise to 1e-4 while searching the scale and to 1e-6 for the plan
# (epsilon then lands within ~1e-6 of the target, never above it).
_SCALE_TOLERANCE = 1e-3
_SEARCH_NOISE_TOLERANCE = 1e-4
_NOISE_TOLERANCE = 1e-6
_MAX_EXPANSIONS = 200


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


@dataclass(frozen=True)
class DpConfig:
    """What a deployment asks of distributed DP. Exactly one of ``target_epsilon`` and
    ``noise_multiplier`` is given.

    - ``dim``: values per client update; ``l2_clip``: each update is scaled down to this L2 norm.
    - ``bits``: bits per coordinate of the ring the sum lives in (what travels on the wire).
    - ``min_clients``: the fewest inputs a revealed sum may contain (the guarantee holds from
      here up); ``max_clients``: the most (the ring is sized for it).
    - ``target_epsilon`` at ``delta`` over ``rounds`` rounds, each sampling clients with
      probability ``sampling_rate`` (1: no sampling); or ``noise_multiplier``: the central
      noise std at ``min_clients`` in units of ``l2_clip`` (epsilon is then reported).
    - ``mechanism``: Skellam (default) or the distributed discrete Gaussian.
    - ``noise_layers``: removable noise (docs/XNOISE.md): each client's Skellam noise is a
      base for ``max_clients`` and layers the server takes off down to what the certified
      honest inputs need (``layers``). Skellam only; needs ``max_clients > min_clients``.
    - ``beta``: conditional randomised rounding (0: plain randomised rounding, unbiased).
    - ``max_wrap_probability``: per coordinate of the sum; ``max_rounding_bias``: as a fraction
      of ``l2_clip``; ``max_rounding_inflation``: the largest tolerated Delta_2 / (clip x scale).
    """

    dim: int
    l2_clip: float
    bits: int
    min_clients: int
    max_clients: int
    delta: float
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    rounds: int = 1
    sampling_rate: float = 1.0
    mechanism: Mechanism = Mechanism.SKELLAM
    beta: float = 0.0
    max_wrap_probability: float = 1e-4
    max_rounding_bias: float = 0.01
    max_rounding_inflation: float = 2.0
    noise_layers: bool = False

    def __post_init__(self) -> None:
        _require(is_int(self.dim) and self.dim >= 1, "dim must be a positive integer")
        _require(
            is_number(self.l2_clip) and math.isfinite(self.l2_clip) and self.l2_clip > 0,
            "l2_clip must be finite and positive",
        )
        _require(
            is_int(self.bits) and MIN_DP_BITS <= self.bits <= MAX_DP_BITS,
            f"bits must be an integer in [{MIN_DP_BITS}, {MAX_DP_BITS}]",
        )
        _require(
            is_int(self.min_clients) and self.min_clients >= 1,
            "min_clients must be a positive integer",
        )
        _require(
            is_int(self.max_clients) and self.min_clients <= self.max_clients < 2**32,
            "max_clients must be an integer in [min_clients, 2**32)",
        )
        _require(is_number(self.delta) and 0.0 < self.delta < 1.0, "delta must be in (0, 1)")
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ConfigurationError("give exactly one of target_epsilon and noise_multiplier")
        if self.target_epsilon is not None:
            _require(
                is_number(self.target_epsilon)
                and math.isfinite(self.target_epsilon)
                and self.target_epsilon > 0,
                "target_epsilon must be finite and positive",
            )
        if self.noise_multiplier is not None:
            _require(
                is_number(self.noise_multiplier)
                and math.isfinite(self.noise_multiplier)
                and self.noise_multiplier > 0,
                "noise_multiplier must be finite and positive",
            )
        _require(is_int(self.rounds) and self.rounds >= 1, "rounds must be a positive integer")
        _require(
            is_number(self.sampling_rate) and 0.0 < self.sampling_rate <= 1.0,
            "sampling_rate must be in (0, 1]",
        )
        try:
            object.__setattr__(self, "mechanism", Mechanism(self.mechanism))
        except ValueError:
            names = ", ".join(m.value for m in Mechanism)
            raise ConfigurationError(
                f"mechanism must be one of {names}, got {self.mechanism!r}"
            ) from None
        _require(isinstance(self.noise_layers, bool), "noise_layers must be true or false")
        if self.noise_layers:
            # X8: the discrete Gaussian's accounting covers sums of identical components,
            # which a base plus partly removed layers are not.
            _require(
                self.mechanism is Mechanism.SKELLAM,
                "noise_layers needs the skellam mechanism (the discrete Gaussian's "
                "accounting does not cover partly removed noise)",
            )
            _require(
                self.max_clients > self.min_clients,
                "noise_layers needs max_clients above min_clients: with no larger cohort "
                "there is no noise to remove",
            )
            self.layers  # noqa: B018 (refuses a structure of more than 16 layers now)
        _require(is_number(self.beta) and 0.0 <= self.beta < 1.0, "beta must be in [0, 1)")
        _require(
            is_number(self.max_wrap_probability) and 0.0 < self.max_wrap_probability < 1.0,
            "max_wrap_probability must be in (0, 1)",
        )
        _require(
            is_number(self.max_rounding_bias)
            and math.isfinite(self.max_rounding_bias)
            and self.max_rounding_bias >= 0,
            "max_rounding_bias must be finite and non-negative",
        )
        _require(
            is_number(self.max_rounding_inflation)
            and math.isfinite(self.max_rounding_inflation)
            and self.max_rounding_inflation > 1.0,
            "max_rounding_inflation must be finite and above 1",
        )

    @property
    def layers(self) -> NoiseLayers | None:
        """The removable layers each client adds (None: none): a function of this block
        alone, ``min_clients`` and ``max_clients``, never of a cohort a server configures
        (docs/XNOISE.md X3)."""
        if not self.noise_layers:
            return None
        return NoiseLayers.for_cohort(self.min_clients, self.max_clients)


@dataclass(frozen=True)
class DpPlan:
    """The calibrated parameters of distributed DP for a ``DpConfig``.

    ``scale`` multiplies the clipped, rotated update before rounding; ``local_noise`` is each
    client's Skellam variance mu or discrete Gaussian sigma, in scaled (integer) units;
    ``padded_dim`` the rotated length every client sends; ``ring_bits`` the ring's width.
    ``central_noise_std`` is the std of the noise in the decoded *sum* at ``min_clients``, in
    original units, and ``noise_multiplier`` that over ``l2_clip``. ``rounding_inflation`` is
    Delta_2 / (clip x scale). ``wrap_probability_bound`` bounds, per coordinate, the
    probability that a sum of up to ``max_clients`` inputs wraps; ``rounding_bias_bound`` the
    L2 norm of the rounding's bias on the mean (0 unless beta > 0). ``epsilon_per_round`` and
    ``epsilon_total`` (over ``rounds``) hold at ``delta`` for every revealed sum of
    ``min_clients`` to ``max_clients`` inputs.
    """

    config: DpConfig
    scale: float
    local_noise: float
    padded_dim: int
    ring_bits: int
    central_noise_std: float
    noise_multiplier: float
    rounding_inflation: float
    wrap_probability_bound: float
    rounding_bias_bound: float
    epsilon_per_round: float
    epsilon_total: float
    rounded_l2_bound: float = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.config, DpConfig):
            raise UsageError("a DpPlan needs a DpConfig")
        for name in ("scale", "central_noise_std", "noise_multiplier", "rounding_inflation"):
            value = getattr(self, name)
            if not (is_number(value) and math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be finite and positive, got {value!r}")
        variance = (
            self.local_noise**2
            if self.mechanism is Mechanism.DISCRETE_GAUSSIAN
            else (self.local_noise)
        )
        if not (is_number(self.local_noise) and 0 < variance <= MAX_LOCAL_VARIANCE):
            raise UsageError(f"local noise out of range: {self.local_noise!r}")
        if self.padded_dim != padded_dimension(self.config.dim):
            raise UsageError("padded_dim does not match the configuration's dim")
        if self.ring_bits != self.config.bits:
            raise UsageError("ring_bits does not match the configuration's bits")
        bound = accounting.l2_sensitivity(self.scaled_clip, self.padded_dim, self.config.beta)
        object.__setattr__(self, "rounded_l2_bound", bound)

    @property
    def mechanism(self) -> Mechanism:
        return self.config.mechanism

    @property
    def scaled_clip(self) -> float:
        """The L2 clip in scaled units (before rounding)."""
        return self.config.l2_clip * self.scale

    @property
    def ring_modulus(self) -> int:
        return 1 << self.ring_bits

    @property
    def mu_total(self) -> float:
        """The Skellam parameter the *sum* needs (the noise of ``min_clients`` clients): what
        noise layers split (``secagg.dp.layers``)."""
        return self.local_noise * self.config.min_clients

    def central_noise_std_for(self, included: int) -> float:
        """The std of the noise in the decoded sum of ``included`` inputs, original units."""
        local_std = (
            math.sqrt(self.local_noise) if self.mechanism is Mechanism.SKELLAM else self.local_noise
        )
        return math.sqrt(included) * local_std / self.scale


def wrap_probability_bound(
    mechanism: Mechanism,
    *,
    scaled_clip: float,
    local_noise: float,
    clients: int,
    padded_dim: int,
    bits: int,
    beta: float = 0.0,
) -> float:
    """An upper bound on the probability that one coordinate of a sum of ``clients`` inputs
    leaves ``[-2^(bits-1), 2^(bits-1))`` (so wraps modulo 2^bits).

    Chernoff: P(|T| >= L) <= 2 min_t exp(K(t) - t L), with the cumulant bound
    K(t) = t^2 A / 2 + t B + noise(t), where A = (n c s)^2 / D + n / 4 (signal after the
    rotation, and rounding), B = n beta / (1 - beta) (conditional rounding's bias) and noise(t)
    = n mu (cosh t - 1) for Skellam or n sigma^2 t^2 / 2 for the discrete Gaussian.
    """
    n = clients
    limit = float(2 ** (bits - 1))
    quadratic = (n * scaled_clip) ** 2 / padded_dim + n / 4.0
    shift = n * beta / (1.0 - beta)
    if shift >= limit:
        return 1.0
    if mechanism is Mechanism.DISCRETE_GAUSSIAN or local_noise == 0.0:
        if mechanism is Mechanism.DISCRETE_GAUSSIAN:
            quadratic += n * local_noise**2
        exponent = -((limit - shift) ** 2) / (2.0 * quadratic)
        return min(1.0, 2.0 * math.exp(exponent))
    total_mu = n * local_noise

    def slope(t: float) -> float:
        return t * quadratic + shift + total_mu * math.sinh(t)

    # K is convex, so the best t solves K'(t) = L; bisect for it. K'(hi) >= L well before
    # sinh overflows, since total_mu sinh(t) alone reaches L by t = asinh(L / total_mu).
    lo, hi = 0.0, 1.0
    while slope(hi) < limit:
        lo, hi = hi, 2.0 * hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if slope(mid) < limit:
            lo = mid
        else:
            hi = mid
    t = hi
    cumulant = t * t * quadratic / 2.0 + t * shift + total_mu * 2.0 * math.sinh(t / 2.0) ** 2
    return min(1.0, 2.0 * math.exp(cumulant - t * limit))


def _rounding_bias_bound(beta: float, padded_dim: int, scale: float) -> float:
    """L2 bound on E[rounded] - scaled input, in original units: conditioning on an event of
    probability >= 1 - beta moves the mean by at most E[|err| ; reject] / (1 - beta), and
    |err| <= sqrt(D) always, sqrt(E|err|^2) <= sqrt(D)/2 (Cauchy-Schwarz gives sqrt(beta))."""
    if beta == 0.0:
        return 0.0
    return min(beta, math.sqrt(beta) / 2.0) * math.sqrt(padded_dim) / ((1.0 - beta) * scale)


class _Calibration:
    """The searches of :func:`calibrate`, over u = l2_clip x scale (the clip in integers)."""

    def __init__(self, config: DpConfig) -> None:
        self.config = config
        self.padded_dim = padded_dimension(config.dim)
        # The central std / Delta_2 ratio found last: a good start for the next noise search.
        self._ratio_guess = 1.0

    # Noise, as the central std (scaled units) at min_clients, and back.
    def local_noise(self, central_std: float) -> float:
        n = self.config.min_clients
        if self.config.mechanism is Mechanism.SKELLAM:
            return central_std**2 / n
        return central_std / math.sqrt(n)

    def local_variance(self, local: float) -> float:
        return local if self.config.mechanism is Mechanism.SKELLAM else local * local

    def round_rdp(self, u: float, local: float, clients: int) -> np.ndarray:
        c = self.config
        return accounting.round_rdp(
            c.mechanism,
            scaled_clip=u,
            dim=self.padded_dim,
            beta=c.beta,
            local_noise=local,
            clients=clients,
            sampling_rate=c.sampling_rate,
            # The guarantee covers every sum from min_clients to max_clients inputs.
            tau_clients=c.max_clients,
        )

    def epsilon(self, u: float, local: float, rounds: int) -> float:
        rdp = self.round_rdp(u, local, self.config.min_clients) * rounds
        return accounting.epsilon_from_rdp(rdp, self.config.delta)

    def noise_for(self, u: float, tolerance: float = _NOISE_TOLERANCE) -> float:
        """Each client's noise parameter at scaled clip u: from the noise multiplier, or the
        least noise (to 1e-6) whose epsilon over all rounds is at most the target."""
        c = self.config
        if c.noise_multiplier is not None:
            return self.local_noise(c.noise_multiplier * u)
        target = c.target_epsilon
        assert target is not None
        l2 = accounting.l2_sensitivity(u, self.padded_dim, c.beta)

        def too_little(central_std: float) -> bool:
            return self.epsilon(u, self.local_noise(central_std), c.rounds) > target

        def past_cap(central_std: float) -> bool:
            return self.local_variance(self.local_noise(central_std)) > MAX_LOCAL_VARIANCE

        guess = self._ratio_guess * l2
        lo, hi = guess / 1.25, guess * 1.25
        for _ in range(_MAX_EXPANSIONS):
            if not too_little(hi) or past_cap(hi):
                break
            lo, hi = hi, hi * 2.0
        if too_little(hi):
            return self.local_noise(hi)  # beyond what the samplers support; the caller refuses
        for _ in range(_MAX_EXPANSIONS):
            if too_little(lo):
                break
            lo, hi = lo / 2.0, lo
        while hi / lo > 1.0 + tolerance:
            mid = math.sqrt(lo * hi)
            if too_little(mid):
                lo = mid
            else:
                hi = mid
        self._ratio_guess = hi / l2
        return self.local_noise(hi)

    def wrap(self, u: float, local: float) -> float:
        c = self.config
        return wrap_probability_bound(
            c.mechanism,
            scaled_clip=u,
            local_noise=local,
            clients=c.max_clients,
            padded_dim=self.padded_dim,
            bits=c.bits,
            beta=c.beta,
        )

    def fits(self, u: float, local: float) -> bool:
        within_cap = self.local_variance(local) <= MAX_LOCAL_VARIANCE
        return within_cap and self.wrap(u, local) <= self.config.max_wrap_probability

    def inflation(self, u: float) -> float:
        return accounting.l2_sensitivity(u, self.padded_dim, self.config.beta) / u

    def smallest_clip(self) -> float:
        """The smallest u whose rounding inflation is within the bound (inflation falls as u
        grows)."""
        bound = self.config.max_rounding_inflation
        lo, hi = 1.0, 1.0
        while self.inflation(hi) > bound:
            lo, hi = hi, hi * 2.0
        while self.inflation(lo) <= bound:
            lo, hi = lo / 2.0, lo
        while hi / lo > 1.0 + _SCALE_TOLERANCE / 10:
            mid = math.sqrt(lo * hi)
            if self.inflation(mid) > bound:
                lo = mid
            else:
                hi = mid
        return hi


def _privacy_knob(config: DpConfig) -> str:
    """The knob that asks for less noise, in the terms the user configured."""
    if config.target_epsilon is not None:
        return "raise target_epsilon (or lower rounds or sampling_rate)"
    return "lower noise_multiplier"


def calibrate(config: DpConfig) -> DpPlan:
    """The plan for ``config``: the largest scale whose wrap bound holds at ``max_clients``,
    with the least noise that meets the target epsilon at ``min_clients`` (or the noise the
    multiplier asks for). Needs dp-accounting (``secagg[dp]``).

    Raises ConfigurationError, naming the knob to turn, when no scale satisfies the wrap,
    rounding-inflation and rounding-bias bounds together.
    """
    accounting.require_dp_accounting()
    if not isinstance(config, DpConfig):
        raise UsageError("calibrate expects a DpConfig")
    search = _Calibration(config)
    u_min = search.smallest_clip()
    noise = search.noise_for(u_min, _SEARCH_NOISE_TOLERANCE)
    if search.local_variance(noise) > MAX_LOCAL_VARIANCE:
        raise ConfigurationError(
            f"the noise this guarantee needs is beyond what the samplers support "
            f"(local variance above 2^50 at the smallest usable scale): {_privacy_knob(config)}"
        )
    wrap_at_min = search.wrap(u_min, noise)
    if wrap_at_min > config.max_wrap_probability:
        raise ConfigurationError(
            f"a {config.bits}-bit ring cannot hold a sum of {config.max_clients} noisy inputs: "
            f"even at the smallest scale rounding allows (inflation "
            f"{config.max_rounding_inflation:g}) a coordinate wraps with probability up to "
            f"{wrap_at_min:.3g} > max_wrap_probability={config.max_wrap_probability:g}; "
            f"raise bits (or {_privacy_knob(config)}, lower max_clients, raise "
            f"max_rounding_inflation or max_wrap_probability)"
        )
    # The largest u that still fits: at u_hi the rotated signal alone has a proxy std of
    # 2^(bits+2), so it cannot fit; bisect in log space between the two.
    lo, hi = u_min, float(2 ** (config.bits + 2)) * math.sqrt(search.padded_dim)
    coarse = noise
    while hi / lo > 1.0 + _SCALE_TOLERANCE:
        mid = math.sqrt(lo * hi)
        mid_noise = search.noise_for(mid, _SEARCH_NOISE_TOLERANCE)
        if search.fits(mid, mid_noise):
            lo, coarse = mid, mid_noise
        else:
            hi = mid
    u = lo
    # The least noise to 1e-6; it can exceed the coarse one by that much, so if that tips the
    # wrap bound, keep the coarse noise (which also meets the target).
    local = search.noise_for(u)
    if not search.fits(u, local):
        local = coarse
    scale = u / config.l2_clip
    bias = _rounding_bias_bound(config.beta, search.padded_dim, scale)
    if bias > config.max_rounding_bias * config.l2_clip:
        raise ConfigurationError(
            f"conditional rounding at beta={config.beta:g} biases the mean by up to "
            f"{bias:.3g} (L2), above max_rounding_bias={config.max_rounding_bias:g} x l2_clip: "
            f"lower beta (0 rounds without bias) or raise bits"
        )
    central_std = math.sqrt(config.min_clients * search.local_variance(local)) / scale
    return DpPlan(
        config=config,
        scale=scale,
        local_noise=local,
        padded_dim=search.padded_dim,
        ring_bits=config.bits,
        central_noise_std=central_std,
        noise_multiplier=central_std / config.l2_clip,
        rounding_inflation=search.inflation(u),
        wrap_probability_bound=search.wrap(u, local),
        rounding_bias_bound=bias,
        epsilon_per_round=search.epsilon(u, local, 1),
        epsilon_total=search.epsilon(u, local, config.rounds),
    )


def _included_rdp(plan: DpPlan, included: int) -> np.ndarray:
    if isinstance(included, bool) or not isinstance(included, int):
        raise UsageError(f"included must be an int, got {included!r}")
    if included < plan.config.min_clients:
        raise UsageError(
            f"a sum of {included} inputs is below min_clients={plan.config.min_clients}: the "
            "protocol must refuse to reveal it, and no epsilon covers it"
        )
    c = plan.config
    # With removable noise layers the server takes off what the inputs beyond the minimum
    # cohort carry (docs/XNOISE.md X7): every round spends its full target, so a count of
    # inputs alone is charged at the minimum cohort's noise (the round's own report states
    # the figure at the noise it kept: ``epsilon_at_noise``).
    clients = included if c.layers is None else c.min_clients
    return accounting.round_rdp(
        c.mechanism,
        scaled_clip=plan.scaled_clip,
        dim=plan.padded_dim,
        beta=c.beta,
        local_noise=plan.local_noise,
        clients=clients,
        sampling_rate=c.sampling_rate,
    )


def epsilon_at_noise(plan: DpPlan, local_noise: float, honest: int) -> float:
    """Epsilon (at the plan's delta) of one round whose sum holds the noise of ``honest``
    inputs of ``local_noise`` each: how a round whose removable noise came off is accounted
    (docs/XNOISE.md X7, at the noise it kept over the inputs its count vouches for)."""
    c = plan.config
    rdp = accounting.round_rdp(
        c.mechanism,
        scaled_clip=plan.scaled_clip,
        dim=plan.padded_dim,
        beta=c.beta,
        local_noise=local_noise,
        clients=honest,
        sampling_rate=c.sampling_rate,
    )
    return accounting.epsilon_from_rdp(rdp, c.delta)


def achieved_epsilon(plan: DpPlan, included: int) -> float:
    """Epsilon (at the plan's delta) of one round whose revealed sum had ``included`` inputs.

    More inputs carry more noise, so this is at most ``plan.epsilon_per_round``. Fewer than
    ``min_clients`` is a UsageError: the protocol must never reveal such a sum.
    """
    return accounting.epsilon_from_rdp(_included_rdp(plan, included), plan.config.delta)


def carried_noise_multiplier(plan: DpPlan, included: int) -> float:
    """The noise multiplier a revealed sum of ``included`` inputs actually carries: its noise
    std over the clip. Every input brings its own noise, so it is the plan's (calibrated for
    ``min_clients``) times sqrt(included / min_clients): what the user got, not what was
    planned for the smallest sum."""
    if isinstance(included, bool) or not isinstance(included, int) or included < 1:
        raise UsageError(f"included must be a positive int, got {included!r}")
    return plan.central_noise_std_for(included) / plan.config.l2_clip


def epsilon_spent(plan: DpPlan, included_per_round: Sequence[int]) -> float:
    """Epsilon (at the plan's delta) of the rounds run so far, given how many inputs each one's
    revealed sum had: their RDP curves add, then convert once."""
    counts = list(included_per_round)
    if not counts:
        return 0.0
    total = _sum_curves(lambda n: _included_rdp(plan, n), counts)
    return accounting.epsilon_from_rdp(total, plan.config.delta)


def _sum_curves(curve: Callable[[int], np.ndarray], counts: list[int]) -> np.ndarray:
    # Rounds with the same count have the same curve: compute each once.
    total = np.zeros(len(accounting.ORDERS))
    for count in sorted(set(counts)):
        total = total + counts.count(count) * curve(count)
    return total
