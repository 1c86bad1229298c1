"""Privacy accounting for the distributed Skellam and distributed discrete Gaussian sums.

Everything here is in *scaled* (integer) units: a client's clipped vector has L2 norm at most
``scaled_clip = l2_clip * scale`` before rounding, and noise parameters are those of the
integers the clients add. Scaling is a bijection, so epsilon does not depend on the units.

The pieces:

- Sensitivity after randomised rounding (Kairouz, Liu, Steinke, ICML 2021, Thm 1 / Prop 22):
  ``Delta_2 = c + sqrt(d)`` (always true: each coordinate moves by less than 1), or with
  conditional rounding at ``beta > 0`` the tighter
  ``sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2))``; and ``Delta_1 <= Delta_2
  min(sqrt(d), Delta_2)`` (on integers |x| <= x^2).
- RDP of the Skellam sum Sk(mu) with mu the *central* variance (Agarwal, Kairouz, Liu,
  NeurIPS 2021): ``eps(a) = a Delta_2^2 / (2 mu) + min(((2a - 1) Delta_2^2 + 6 Delta_1) /
  (4 mu^2), 3 Delta_1 / (2 mu))``.
- RDP of the sum of n discrete Gaussians N_Z(0, sigma^2) (Kairouz, Liu, Steinke, Prop 14), with
  ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1))``, ``l2 = Delta_2 / (sqrt(n) sigma)``,
  ``l1 = Delta_1 / (sqrt(n) sigma)``: ``eps(a) = min(a l2^2/2 + tau d, a/2 (l2^2 + 2 l1 tau +
  tau^2 d), a/2 (l2 + sqrt(d) tau)^2)``.
- Poisson subsampling of clients at rate q: Zhu and Wang (ICML 2019), Theorem 5, the general
  upper bound that holds for any mechanism with an RDP curve at integer orders (their tighter
  Theorem 6 needs a condition we do not check for these mechanisms). We take the minimum with
  the unsampled curve, which is also valid.
- Composition over rounds: RDP adds, so T rounds cost T times the per-round curve.
- Conversion to (epsilon, delta): ``dp_accounting.rdp.compute_epsilon`` (Google's
  ``dp-accounting``, the ``[dp]`` extra), over :data:`ORDERS`.

Orders are integers: the Skellam bound and Zhu-Wang's Theorem 5 are stated for integer orders,
and the authors' own accounting (``google-research/federated``, ``accounting_utils.py``) uses
integers. The continuous Gaussian reference is computed with the same orders, so comparisons
are like for like. Above 128 they thin out; they reach 1024, enough for an epsilon down to
about 0.03 at delta = 1e-5.

Neighbouring inputs follow the papers: one client's vector changes arbitrarily within the clip
(or is replaced by zeros) while the noise of at least ``n`` clients is in the sum.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secagg.dp.mechanism import Mechanism
from secagg.errors import UsageError
from secagg.extras import require

__all__ = [
    "ORDERS",
    "continuous_gaussian_epsilon",
    "ddg_rdp",
    "ddg_tau",
    "epsilon_from_rdp",
    "l1_sensitivity",
    "l2_sensitivity",
    "poisson_subsampled_rdp",
    "round_rdp",
    "skellam_rdp",
]

ORDERS: tuple[int, ...] = (*range(2, 129), 160, 192, 256, 384, 512, 768, 1024)

# tau sums n - 1 terms; past this many, the remaining (decreasing) terms are bounded by their
# first, which keeps the cost flat for huge cohorts and the bound an upper bound.
_TAU_EXACT_TERMS = 1 << 20


def require_dp_accounting() -> ModuleType:
    """The ``dp_accounting`` package, or ``MissingExtra`` naming the ``dp`` extra."""
    require("dp", "distributed DP accounting")
    import dp_accounting  # type: ignore[import-untyped, import-not-found, unused-ignore]

    module: ModuleType = dp_accounting
    return module


def _orders_array(orders: Sequence[int]) -> NDArray[np.float64]:
    array = np.asarray(orders, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0 or np.any(array < 2) or np.any(array != np.floor(array)):
        raise UsageError("RDP orders must be a non-empty sequence of integers >= 2")
    return array


def l2_sensitivity(scaled_clip: float, dim: int, beta: float = 0.0) -> float:
    """L2 sensitivity (scaled units) of a client's vector after (conditional) rounding.

    ``scaled_clip`` is the L2 clip after scaling, ``dim`` the (padded) number of coordinates,
    ``beta`` the conditional-rounding parameter (0: plain randomised rounding).
    """
    if not (math.isfinite(scaled_clip) and scaled_clip > 0):
        raise UsageError(f"scaled clip must be finite and positive, got {scaled_clip!r}")
    if not 0.0 <= beta < 1.0:
        raise UsageError(f"beta must be in [0, 1), got {beta!r}")
    plain = scaled_clip + math.sqrt(dim)
    if beta == 0.0:
        return plain
    conditional = math.sqrt(
        scaled_clip**2
        + dim / 4.0
        + math.sqrt(2.0 * math.log(1.0 / beta)) * (scaled_clip + math.sqrt(dim) / 2.0)
    )
    return min(plain, conditional)


def l1_sensitivity(l2: float, dim: int) -> float:
    """L1 sensitivity (scaled units) from the rounded L2 sensitivity: integers have
    |x|_1 <= sqrt(d) |x|_2 and |x|_1 <= |x|_2^2."""
    return l2 * min(math.sqrt(dim), l2)


def skellam_rdp(
    orders: NDArray[np.float64], l1: float, l2: float, central_variance: float
) -> NDArray[np.float64]:
    """RDP at ``orders`` of adding Sk(central_variance) to a sum with sensitivities l1, l2."""
    a, mu = orders, central_variance
    if not (math.isfinite(mu) and mu > 0):
        return np.full(len(a), np.inf)
    head = a * l2 * l2 / (2.0 * mu)
    tail = np.minimum(((2.0 * a - 1.0) * l2 * l2 + 6.0 * l1) / (4.0 * mu * mu), 3.0 * l1 / (2 * mu))
    rdp: NDArray[np.float64] = head + tail
    return rdp


def ddg_tau(local_sigma: float, clients: int) -> float:
    """The distributed discrete Gaussian's excess: 10 sum_{k=1}^{n-1} e^(-2 pi^2 s^2 k/(k+1)).

    It measures how far a sum of n discrete Gaussians of parameter s is from a discrete
    Gaussian; it vanishes fast once s is above ~1 (e^(-2 pi^2) ~ 3e-9).
    """
    if clients < 1:
        raise UsageError(f"clients must be at least 1, got {clients}")
    if clients == 1:
        return 0.0
    rate = 2.0 * math.pi**2 * local_sigma**2
    exact = min(clients - 1, _TAU_EXACT_TERMS)
    k = np.arange(1, exact + 1, dtype=np.float64)
    total = float(np.exp(-rate * k / (k + 1.0)).sum())
    rest = clients - 1 - exact
    if rest:
        total += rest * math.exp(-rate * (exact + 1) / (exact + 2))
    return 10.0 * total


def ddg_rdp(
    orders: NDArray[np.float64],
    l1: float,
    l2: float,
    local_sigma: float,
    clients: int,
    dim: int,
    tau_clients: int | None = None,
) -> NDArray[np.float64]:
    """RDP at ``orders`` of the sum of ``clients`` discrete Gaussians N_Z(0, local_sigma^2).

    tau grows with the number of summands while the rest of the bound shrinks, so epsilon need
    not fall as clients are added. ``tau_clients`` (>= clients) computes tau for that many
    instead: with ``clients`` the smallest and ``tau_clients`` the largest count a round may
    sum, the curve bounds every count in between.
    """
    a = orders
    if not (math.isfinite(local_sigma) and local_sigma > 0):
        return np.full(len(a), np.inf)
    tau = ddg_tau(local_sigma, clients if tau_clients is None else max(clients, tau_clients))
    spread = math.sqrt(clients) * local_sigma
    s2, s1 = l2 / spread, l1 / spread
    first = a / 2.0 * s2 * s2 + tau * dim
    second = a / 2.0 * (s2 * s2 + 2.0 * s1 * tau + tau * tau * dim)
    third = a / 2.0 * (s2 + math.sqrt(dim) * tau) ** 2
    rdp: NDArray[np.float64] = np.minimum(np.minimum(first, second), third)
    return rdp


@functools.lru_cache(maxsize=64)
def _zhu_wang_static(q: float, orders: tuple[int, ...]) -> tuple[NDArray[np.float64], ...]:
    """The parts of Zhu-Wang's Theorem 5 that do not depend on the mechanism, per order.

    Row i (order a) holds, for l = 2..max order, log(coef) + log C(a, l) + (a - l) log(1 - q)
    + l log q, with coef 1 at l = 2 and 3 above, and -inf where l > a; plus, separately, the
    log of the l = 0, 1 term (1 - q)^(a-1) (a q - q + 1).
    """
    top = max(orders)
    lgam = np.array([math.lgamma(j + 1.0) for j in range(top + 1)])
    ls = np.arange(2, top + 1, dtype=np.float64)
    a = np.asarray(orders, dtype=np.float64)[:, None]
    log_1mq = math.log1p(-q)
    with np.errstate(invalid="ignore"):
        log_comb = lgam[np.asarray(orders)][:, None] - lgam[2:][None, :]
        index = np.asarray(orders)[:, None] - np.arange(2, top + 1)[None, :]
        log_comb = log_comb - lgam[np.clip(index, 0, top)]
        static = log_comb + (a - ls) * log_1mq + ls * math.log(q)
    static[:, 1:] += math.log(3.0)
    static[index < 0] = -np.inf
    first = (a[:, 0] - 1.0) * log_1mq + np.log(a[:, 0] * q - q + 1.0)
    return static, first


def poisson_subsampled_rdp(
    base: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    q: float,
    orders: Sequence[int] = ORDERS,
) -> NDArray[np.float64]:
    """RDP at ``orders`` when each client takes part independently with probability ``q``.

    ``base(alphas)`` is the unsampled mechanism's RDP at integer orders ``alphas``. The bound
    is Zhu and Wang's Theorem 5 (min'ed with the unsampled curve):
    ``1/(a-1) log((1-q)^(a-1)(aq - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^(eps(2))
    + 3 sum_{l=3}^a C(a,l) q^l (1-q)^(a-l) e^((l-1) eps(l)))``.
    """
    alphas = _orders_array(orders)
    if not 0.0 < q <= 1.0:
        raise UsageError(f"sampling rate must be in (0, 1], got {q!r}")
    unsampled = base(alphas)
    if q == 1.0:
        return unsampled
    key = tuple(int(a) for a in alphas)
    static, first = _zhu_wang_static(q, key)
    ls = np.arange(2, max(key) + 1, dtype=np.float64)
    curve = base(ls)
    with np.errstate(invalid="ignore"):
        terms = static + ((ls - 1.0) * curve)[None, :]
    terms[np.isnan(terms)] = -np.inf  # -inf (l > a) plus +inf (an infinite eps(l))
    peak = np.maximum(terms.max(axis=1), first)
    finite = np.isfinite(peak)
    total = np.exp(first - np.where(finite, peak, 0.0))
    total = total + np.exp(terms - np.where(finite, peak, 0.0)[:, None]).sum(axis=1)
    sampled = np.where(finite, (peak + np.log(total)) / (alphas - 1.0), np.inf)
    result: NDArray[np.float64] = np.minimum(sampled, unsampled)
    return result


def round_rdp(
    mechanism: Mechanism,
    *,
    scaled_clip: float,
    dim: int,
    beta: float,
    local_noise: float,
    clients: int,
    sampling_rate: float = 1.0,
    tau_clients: int | None = None,
    orders: Sequence[int] = ORDERS,
) -> NDArray[np.float64]:
    """The RDP curve of one round in which ``clients`` inputs are summed.

    ``local_noise`` is one client's Skellam variance (mu) or discrete Gaussian sigma, in scaled
    units; ``dim`` is the padded dimension (every padded coordinate is rounded and noised);
    ``tau_clients`` is passed to :func:`ddg_rdp` (ignored for Skellam, whose epsilon falls
    as clients are added).
    """
    mechanism = Mechanism(mechanism)
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise UsageError(f"clients must be a positive int, got {clients!r}")
    l2 = l2_sensitivity(scaled_clip, dim, beta)
    l1 = l1_sensitivity(l2, dim)

    def base(alphas: NDArray[np.float64]) -> NDArray[np.float64]:
        if mechanism is Mechanism.SKELLAM:
            return skellam_rdp(alphas, l1, l2, clients * local_noise)
        return ddg_rdp(alphas, l1, l2, local_noise, clients, dim, tau_clients)

    return poisson_subsampled_rdp(base, sampling_rate, orders)


def epsilon_from_rdp(
    rdp: NDArray[np.float64], delta: float, orders: Sequence[int] = ORDERS
) -> float:
    """The smallest epsilon the RDP curve gives at ``delta`` (dp_accounting's conversion)."""
    dp_accounting = require_dp_accounting()
    if not 0.0 < delta < 1.0:
        raise UsageError(f"delta must be in (0, 1), got {delta!r}")
    curve = np.asarray(rdp, dtype=np.float64)
    if len(curve) != len(orders):
        raise UsageError("the RDP curve and the orders must have the same length")
    if not np.all(np.isfinite(curve)):
        # compute_epsilon would pick a finite order anyway; infinite orders are dropped so it
        # never does arithmetic on inf.
        keep = np.isfinite(curve)
        if not np.any(keep):
            return math.inf
        curve = curve[keep]
        orders = [o for o, k in zip(orders, keep, strict=True) if k]
    epsilon, _order = dp_accounting.rdp.compute_epsilon(list(orders), list(curve), delta)
    return float(epsilon)


def continuous_gaussian_epsilon(
    noise_multiplier: float,
    delta: float,
    rounds: int = 1,
    sampling_rate: float = 1.0,
    orders: Sequence[int] = ORDERS,
) -> float:
    """Epsilon of the continuous Gaussian mechanism (std = noise_multiplier x sensitivity),
    composed over ``rounds``, optionally Poisson-subsampled: computed entirely by dp-accounting
    (its ``RdpAccountant`` and events), as the reference the discrete mechanisms approach."""
    dp_accounting = require_dp_accounting()
    event: Any = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    if rounds > 1:
        event = dp_accounting.SelfComposedDpEvent(event, rounds)
    accountant = dp_accounting.rdp.RdpAccountant(orders=[float(o) for o in orders])
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))
