"""The SecAgg+ neighbour graph and its (degree, threshold) parameter finder.

SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova, CCS 2020) replaces the complete graph of
SecAgg (Bonawitz et al., CCS 2017) by a random Harary graph ``H(n, k)``: the ``n`` clients are
placed on a ring in a uniformly random order and each is linked to the ``k / 2`` nearest
clients on either side. A client exchanges keys with, masks against and Shamir-shares its
secrets (threshold ``t``) among its ``k`` neighbours only. Neighbour lists never contain the
client itself, and ``t`` counts shares held by neighbours.

Parameter finder
----------------
With ``A = floor(gamma * n)`` corrupt clients, ``D = floor(delta * n)`` dropouts and
``B = A + D`` (``gamma``/``delta`` nudged up by 1e-14 before flooring, as Google's finder
does, so that ``0.05 * 1000`` is 50 and not 49), a degree ``k`` is accepted when, with
statistical security ``sigma`` and correctness ``eta``:

1. connectivity: ``n (n - k - 1) / 2 * C(B, k) / C(n, k) < 2**-(sigma + 1)``. Cutting the
   ring-Harary graph needs two disjoint runs of ``k / 2`` consecutive removed clients; there
   are at most ``n (n - k - 1) / 2`` pairs of such runs, and ``C(B, k) / C(n, k)`` is the chance
   that ``k`` given clients are all corrupt or dropped (union bound).
2. security: a client's neighbours are a uniform ``k``-subset of the ``n - 1`` others, so its
   number of corrupt neighbours is ``X ~ Hypergeometric(n - 1, A, k)``. Semi-honest server:
   ``P[X >= t] < 2**-(sigma + 1) / n``. Semi-malicious server (it may ask some neighbours for
   the self-mask share and others for the pairwise-key share of the same client, so it holds
   at most ``k + X`` shares and needs ``2t``): ``P[X >= 2t - k] < 2**-(sigma + 1) / n``.
3. correctness: a surviving client's surviving neighbours are
   ``Z ~ Hypergeometric(n - 1, n - D - 1, k)`` and we need ``P[Z < t] < 2**-eta / n``.

The security budget ``2**-sigma`` is split evenly between (1) and (2) and each per-client
event is union-bounded over the ``n`` clients. The finder returns the smallest even ``k`` (in
increasing order, from 2) for which some ``t >= 2`` satisfies (2) and (3), and the smallest
such ``t``: the value Google's production finder returns (``fcp/secagg/server/
graph_parameter_finder.cc``), which keeps Shamir reconstruction cheap. Tails are computed in
log space from ``math.lgamma`` and any comparison closer than a rounding margin is settled
with exact integer arithmetic, so the answer is the one exact arithmetic gives.

As in Google's finder, the Harary search is only attempted when ``gamma + delta <= 0.9``
(semi-honest) or ``gamma + 2 * delta <= 0.9`` (semi-malicious). When no ``k < n - 1`` qualifies
the complete graph (SecAgg) is used, with :func:`full_graph_threshold`.

See ``docs/secagg_plus_parameters.md`` for the derivation, the values it gives and how they
compare with Google's.

Graph construction
------------------
The ring order is a Fisher-Yates shuffle driven by AES-256-CTR keystream (key = HKDF-SHA256 of
the 32-byte seed, labelled with ``n``), with rejection sampling so every permutation is
equally likely. ``ring[s]`` is the client (by position ``0..n-1``) on ring slot ``s``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from secagg.errors import ConfigurationError
from secagg.hazmat.kdf import hkdf
from secagg.hazmat.keystream import Keystream

__all__ = [
    "GRAPH_SEED_BYTES",
    "GraphParameters",
    "ServerModel",
    "SurvivorRule",
    "corrupt_clients",
    "find_secagg_plus_parameters",
    "full_graph_threshold",
    "harary_neighbours",
    "neighbours_of",
    "survivor_rule",
    "thin_window",
    "thin_window_of",
]

GRAPH_SEED_BYTES: Final = 32
_MAX_NODES: Final = 2**32 - 1  # ring slots are drawn with 32-bit words
# Google's kSmall: rates are nudged up before flooring counts, so that float rounding never
# lowers the number of corrupt or dropped clients (0.05 * 1000 must be 50, not 49.999...).
_RATE_SLACK: Final = 1e-14
# Google's feasibility domain for the Harary search (graph_parameter_finder.cc).
_SEARCH_DOMAIN: Final = 0.9
_HKDF_INFO: Final = b"secagg/v1/graph/harary-ring"
_LN2: Final = math.log(2.0)


class ServerModel(StrEnum):
    """What the server may do besides following the protocol."""

    SEMI_HONEST = "semi-honest"  # follows the protocol, colludes with corrupt clients
    SEMI_MALICIOUS = "semi-malicious"  # may also show clients inconsistent views of dropouts


@dataclass(frozen=True)
class GraphParameters:
    """A neighbour graph's shape: ``n`` nodes of degree ``degree``, Shamir threshold ``threshold``.

    ``complete`` is true exactly when ``degree == n - 1`` (the SecAgg complete graph).
    """

    n: int
    degree: int
    threshold: int
    complete: bool

    def __post_init__(self) -> None:
        for name in ("n", "degree", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{name} must be an int, got {value!r}")
        if self.n < 2:
            raise ConfigurationError(f"a graph needs at least 2 nodes, got n={self.n}")
        if not 1 <= self.degree <= self.n - 1:
            raise ConfigurationError(f"degree must be in [1, n - 1], got {self.degree}")
        if self.complete != (self.degree == self.n - 1):
            raise ConfigurationError("complete must be true exactly when degree == n - 1")
        if not self.complete and self.degree % 2:
            raise ConfigurationError(f"a Harary graph's degree must be even, got {self.degree}")
        if not 1 <= self.threshold <= self.degree:
            raise ConfigurationError(
                f"threshold must be in [1, degree={self.degree}], got {self.threshold}"
            )


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    rate = float(value)
    if not 0.0 <= rate < 1.0:  # also refuses NaN
        raise ConfigurationError(f"{name} must be in [0, 1), got {value!r}")
    return rate


def _check_model(value: object) -> ServerModel:
    if isinstance(value, str):
        try:
            return ServerModel(value)
        except ValueError:
            pass
    models = ", ".join(m.value for m in ServerModel)
    raise ConfigurationError(f"server_model must be one of {models}; got {value!r}")


def _counts(n: int, adversarial_rate: float, dropout_rate: float) -> tuple[int, int]:
    """(corrupt, dropped): the largest whole numbers of clients the rates allow."""
    corrupt = math.floor((adversarial_rate + _RATE_SLACK) * n)
    dropped = math.floor((dropout_rate + _RATE_SLACK) * n)
    return min(corrupt, n), min(dropped, n)


# --------------------------------------------------------------------------------------------
# Complete graph (SecAgg)
# --------------------------------------------------------------------------------------------


def full_graph_threshold(
    n: int, *, adversarial_rate: float, dropout_rate: float, server_model: ServerModel
) -> int:
    """Shamir threshold for the complete graph (SecAgg): each secret shared among the n - 1 others.

    With ``A = floor(adversarial_rate * n)`` corrupt and ``D = floor(dropout_rate * n)``
    dropped clients, a threshold ``t >= 2`` must satisfy

    * correctness: ``t <= n - 1 - D`` (a surviving client's secret must be rebuilt from the
      shares of the other survivors);
    * security, semi-honest server: ``t > A`` (the corrupt clients' shares must not suffice);
    * security, semi-malicious server: ``2t > n + A``. The server can hold at most ``n - 1 + A``
      shares of one honest client's two secrets and needs ``2t``; we count ``n`` rather than
      ``n - 1`` so the rule also holds if a client keeps a share of its own secret. This is
      Bonawitz et al.'s ``t > (n + n_C) / 2`` (``t > 2n/3`` at ``n_C = n/3``) and Google's
      ``CheckFullGraphParameters`` rule.

    Returns the *largest* valid threshold, ``n - 1 - D``: every secret then needs as many
    shares as the dropout budget allows, and a round that completes has summed at least
    ``n - 1 - D`` inputs (Google's production server likewise raises the complete graph's
    threshold to ``ceil((1 - dropout_rate) * n)``). Raises ``ConfigurationError`` when no
    threshold satisfies both rules.
    """
    n = _check_int("n", n, 3, _MAX_NODES)
    gamma = _check_rate("adversarial_rate", adversarial_rate)
    delta = _check_rate("dropout_rate", dropout_rate)
    model = _check_model(server_model)
    corrupt, dropped = _counts(n, gamma, delta)
    lowest = corrupt + 1 if model is ServerModel.SEMI_HONEST else (n + corrupt) // 2 + 1
    lowest = max(lowest, 2)
    highest = n - 1 - dropped
    if lowest > highest:
        rule = "t > A" if model is ServerModel.SEMI_HONEST else "2t > n + A"
        raise ConfigurationError(
            f"no threshold works for the complete graph of n={n} clients with "
            f"A={corrupt} corrupt and D={dropped} dropped ({model.value} server): security "
            f"needs {rule} and t >= 2 (t >= {lowest}), correctness needs t <= n - 1 - D = "
            f"{highest}"
        )
    return highest


# --------------------------------------------------------------------------------------------
# Hypergeometric tails: floats in log space, exact integers when a comparison is close
# --------------------------------------------------------------------------------------------


def _rounding_margin(population: int) -> float:
    """How close (in natural log) a float comparison may come before it is redone exactly:
    ``math.lgamma`` near ``lgamma(population)`` rounds at about 1e-16 relative per term."""
    return 1e-9 + 1e-12 * math.lgamma(population + 1)


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


class _Hypergeometric:
    """Number of marked items among ``draws`` taken without replacement from ``population``."""

    __slots__ = ("_log_norm", "_tolerance", "draws", "high", "low", "marked", "mode", "population")

    def __init__(self, population: int, marked: int, draws: int) -> None:
        self.population = population
        self.marked = marked
        self.draws = draws
        self.low = max(0, draws - (population - marked))
        self.high = min(draws, marked)
        mode = (draws + 1) * (marked + 1) // (population + 2)
        self.mode = min(max(mode, self.low), self.high)
        self._log_norm = _log_comb(population, draws)
        self._tolerance = _rounding_margin(population)

    def _log_pmf(self, x: int) -> float:
        return (
            _log_comb(self.marked, x)
            + _log_comb(self.population - self.marked, self.draws - x)
            - self._log_norm
        )

    def _up_ratio(self, x: int) -> float:
        """pmf(x + 1) / pmf(x)."""
        rest = self.population - self.marked - self.draws
        return ((self.marked - x) * (self.draws - x)) / ((x + 1) * (rest + x + 1))

    def _down_ratio(self, x: int) -> float:
        """pmf(x - 1) / pmf(x)."""
        rest = self.population - self.marked - self.draws
        return (x * (rest + x)) / ((self.marked - x + 1) * (self.draws - x + 1))

    def _log_tail(self, start: int, upper: bool) -> float:
        """log P[X >= start] (upper) or log P[X <= start]; start lies beyond the mode.

        Past the mode the pmf falls with a falling ratio (it is log-concave), so the rest of
        the sum after a term is at most ``term * r / (1 - r)``: stop when that is negligible.
        """
        total = 1.0
        term = 1.0
        x = start
        end = self.high if upper else self.low
        step = 1 if upper else -1
        while x != end:
            ratio = self._up_ratio(x) if upper else self._down_ratio(x)
            term *= ratio
            total += term
            x += step
            if term == 0.0:
                break
            next_ratio = self._up_ratio(x) if upper else self._down_ratio(x)
            if next_ratio < 1.0 and term * next_ratio < 1e-18 * total * (1.0 - next_ratio):
                break
        return self._log_pmf(start) + math.log(total)

    def _exact_tail(self, start: int, upper: bool) -> int:
        """C(population, draws) * P[X >= start] (upper) or * P[X <= start], exactly."""
        marked, draws = self.marked, self.draws
        rest = self.population - marked - draws
        x = start
        term = math.comb(marked, x) * math.comb(self.population - marked, draws - x)
        total = 0
        if upper:
            while True:
                total += term
                if x >= self.high:
                    return total
                term = term * (marked - x) * (draws - x) // ((x + 1) * (rest + x + 1))
                x += 1
        while True:
            total += term
            if x <= self.low:
                return total
            term = term * x * (rest + x) // ((marked - x + 1) * (draws - x + 1))
            x -= 1

    def upper_tail_below(self, t: int, log_bound: float, inverse_bound: int) -> bool:
        """P[X >= t] < bound, where ``bound = 1 / inverse_bound = exp(log_bound)``."""
        if t > self.high:
            return True  # the tail is empty
        if t <= self.mode:
            # P[X >= t] >= pmf(mode) >= 1 / (draws + 1) > bound for every bound we use.
            return False
        log_tail = self._log_tail(t, upper=True)
        if abs(log_tail - log_bound) > self._tolerance:
            return log_tail < log_bound
        return self._exact_tail(t, upper=True) * inverse_bound < math.comb(
            self.population, self.draws
        )

    def lower_tail_below(self, t: int, log_bound: float, inverse_bound: int) -> bool:
        """P[X <= t] < bound, where ``bound = 1 / inverse_bound = exp(log_bound)``."""
        if t < self.low:
            return True
        if t >= self.mode:
            return False
        log_tail = self._log_tail(t, upper=False)
        if abs(log_tail - log_bound) > self._tolerance:
            return log_tail < log_bound
        return self._exact_tail(t, upper=False) * inverse_bound < math.comb(
            self.population, self.draws
        )


def _first_true(predicate: Callable[[int], bool], start: int, stop: int) -> int:
    """Smallest x in [start, stop] with predicate(x), for a predicate that is monotone
    (false ... false true ... true) and true at ``stop``; gallops up from ``start``."""
    if start >= stop or predicate(start):
        return min(start, stop)
    below = start  # predicate(below) is false
    step = 1
    above = min(start + step, stop)
    while above < stop and not predicate(above):
        below = above
        step *= 2
        above = min(start + step, stop)
    while above - below > 1:
        middle = (below + above) // 2
        if predicate(middle):
            above = middle
        else:
            below = middle
    return above


def _connected_enough(n: int, bad: int, k: int, sigma: int) -> bool:
    """n (n - k - 1) / 2 * C(bad, k) / C(n, k) < 2**-(sigma + 1): the union bound on the
    honest survivors of a random H(n, k) being cut apart (Google's
    LogProbOfDisconnectedRandomHarary), with bad = corrupt + dropped clients."""
    if k > bad:
        return True
    log_value = (
        math.log(n) + math.log(n - k - 1) + _log_comb(bad, k) - _log_comb(n, k) + sigma * _LN2
    )
    if abs(log_value) > _rounding_margin(n):
        return log_value < 0.0
    return (n * (n - k - 1) * math.comb(bad, k)) << sigma < math.comb(n, k)


def _smallest_connected_degree(n: int, bad: int, sigma: int) -> int | None:
    """Smallest even k in [2, n - 2] passing the connectivity bound (monotone in k)."""
    top = (n - 2) // 2  # k = 2 * m for m in [1, top]
    if top < 1 or not _connected_enough(n, bad, 2 * top, sigma):
        return None
    return 2 * _first_true(lambda m: _connected_enough(n, bad, 2 * m, sigma), 1, top)


@functools.lru_cache(maxsize=512)
def _find(
    n: int,
    gamma: float,
    delta: float,
    model: ServerModel,
    sigma: int,
    eta: int,
    google_population: bool = False,
) -> GraphParameters:
    """The finder proper. ``google_population`` swaps in the population model of Google's
    finder (a client's neighbours drawn from all n clients, A of them corrupt and n - D
    surviving) for ours (from the n - 1 others, A corrupt and n - D - 1 surviving); it exists
    so the tests can show that this is the only difference from Google's published values."""
    corrupt, dropped = _counts(n, gamma, delta)
    if model is ServerModel.SEMI_HONEST:
        searchable = gamma + delta <= _SEARCH_DOMAIN
    else:
        searchable = gamma + 2 * delta <= _SEARCH_DOMAIN
    first = _smallest_connected_degree(n, corrupt + dropped, sigma) if searchable else None
    if first is not None:
        security_inverse = n << (sigma + 1)  # per-client security bound 2**-(sigma+1) / n
        security_log = -math.log(security_inverse)
        correctness_inverse = n << eta  # per-client correctness bound 2**-eta / n
        correctness_log = -math.log(correctness_inverse)
        others = n - 1
        survivors = n - dropped - 1  # other survivors, seen from a surviving client
        if google_population:
            others, survivors = n, n - dropped
        # Both quantities only grow with k (more draws), so each search starts from the last.
        secure_from = 0  # smallest t with P[X >= t] below the security bound
        correct_upto = 0  # largest t with P[Z <= t - 1] below the correctness bound
        k = first
        while k <= n - 2:
            adversarial = _Hypergeometric(others, corrupt, k)
            surviving = _Hypergeometric(others, survivors, k)

            def secure(t: int, h: _Hypergeometric = adversarial) -> bool:
                return h.upper_tail_below(t, security_log, security_inverse)

            def incorrect(t: int, h: _Hypergeometric = surviving) -> bool:
                return not h.lower_tail_below(t, correctness_log, correctness_inverse)

            secure_from = _first_true(secure, secure_from, adversarial.high + 1)
            correct_upto = _first_true(incorrect, correct_upto, surviving.high)
            if model is ServerModel.SEMI_HONEST:
                threshold = secure_from
            else:  # need P[X >= 2t - k] below the bound: 2t - k >= secure_from
                threshold = (secure_from + k + 1) // 2
            threshold = max(threshold, 2)
            if threshold <= correct_upto:
                return GraphParameters(n=n, degree=k, threshold=threshold, complete=False)
            # Skip degrees that cannot close the gap. Two more draws raise correct_upto by at
            # most 2 (Z grows by at most 2) and never lower the threshold; against a
            # semi-malicious server they raise the threshold by at least 1 (it is
            # ceil((secure_from + k) / 2), and secure_from >= 1 keeps it above 2).
            deficit = threshold - correct_upto
            k += 2 * (deficit if model is ServerModel.SEMI_MALICIOUS else (deficit + 1) // 2)
    try:
        threshold = full_graph_threshold(
            n, adversarial_rate=gamma, dropout_rate=delta, server_model=model
        )
    except ConfigurationError as error:
        raise ConfigurationError(
            f"no SecAgg+ parameters for n={n}, adversarial_rate={gamma}, "
            f"dropout_rate={delta}, {model.value} server (sigma={sigma}, eta={eta}): no "
            f"Harary degree below n - 1 qualifies, and {error}"
        ) from None
    return GraphParameters(n=n, degree=n - 1, threshold=threshold, complete=True)


def find_secagg_plus_parameters(
    n: int,
    *,
    adversarial_rate: float = 0.05,
    dropout_rate: float = 0.33,
    server_model: ServerModel = ServerModel.SEMI_HONEST,
    sigma: int = 40,
    eta: int = 20,
) -> GraphParameters:
    """Smallest SecAgg+ degree ``k`` and its threshold ``t`` for ``n`` clients.

    ``k`` is the smallest even degree whose random Harary graph is ``2**-sigma``-secure and
    ``2**-eta``-correct against ``adversarial_rate * n`` corrupt clients and
    ``dropout_rate * n`` dropouts (see the module docstring for the bounds), and ``t`` the
    smallest threshold that is secure at that ``k`` (Google's choice; it is also correct).
    When no ``k < n - 1`` qualifies, returns the complete graph with
    :func:`full_graph_threshold`. Raises ``ConfigurationError`` for invalid inputs (``n < 3``,
    a rate outside ``[0, 1)``, ``sigma`` or ``eta`` outside ``[1, 256]``) and when not even
    the complete graph works. Cached: repeated calls are free.
    """
    n = _check_int("n", n, 3, _MAX_NODES)
    gamma = _check_rate("adversarial_rate", adversarial_rate)
    delta = _check_rate("dropout_rate", dropout_rate)
    model = _check_model(server_model)
    sigma = _check_int("sigma", sigma, 1, 256)
    eta = _check_int("eta", eta, 1, 256)
    return _find(n, gamma, delta, model, sigma, eta)


# --------------------------------------------------------------------------------------------
# The random Harary graph
# --------------------------------------------------------------------------------------------


def _swap_indices(n: int, seed: bytes) -> list[int]:
    """Fisher-Yates draws: for i = n - 1 down to 1, a uniform j in [0, i].

    Words are the little-endian uint32s of AES-256-CTR keystream (zero nonce) under
    ``HKDF-SHA256(seed, info = label || n as 8 bytes big-endian)``; a word ``w`` is accepted
    for bound ``b = i + 1`` when ``w < 2**32 - (2**32 mod b)`` (then ``j = w mod b``), else the
    next word is tried. Drawing is vectorised; rejections (probability < b / 2**32) restart
    the vector at the step that rejected.
    """
    stream = Keystream(hkdf(seed, info=_HKDF_INFO + n.to_bytes(8, "big"), length=32))
    steps = n - 1
    bounds = np.arange(n, 1, -1, dtype=np.uint64)  # b = i + 1 for i = n - 1 .. 1
    limits = np.uint64(2**32) - np.uint64(2**32) % bounds
    draws = np.empty(steps, dtype=np.uint64)
    # uint64, so that the limits (up to 2^32) and the comparisons need no casts.
    words = stream.words(steps).astype(np.uint64)
    done = 0
    used = 0
    while done < steps:
        need = steps - done
        if words.size - used < need:
            fresh = stream.words(need - (words.size - used) + 16).astype(np.uint64)
            words = np.concatenate((words[used:], fresh))
            used = 0
        window = words[used : used + need]
        accepted = window < limits[done:]
        rejected = int(np.argmin(accepted)) if not accepted.all() else need
        draws[done : done + rejected] = window[:rejected] % bounds[done : done + rejected]
        done += rejected
        used += rejected + 1  # skip the rejected word; the same step takes the next one
    result: list[int] = draws.tolist()
    return result


@functools.lru_cache(maxsize=8)
def _ring(n: int, seed: bytes) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(ring, slot): ring[s] is the position on ring slot s; slot[p] is position p's slot."""
    order = list(range(n))
    i = n - 1
    for j in _swap_indices(n, seed):
        order[i], order[j] = order[j], order[i]
        i -= 1
    ring = np.array(order, dtype=np.int64)
    slot = np.empty(n, dtype=np.int64)
    slot[ring] = np.arange(n, dtype=np.int64)
    ring.setflags(write=False)
    slot.setflags(write=False)
    return ring, slot


def _check_graph(n: int, degree: int, seed: bytes) -> None:
    _check_int("n", n, 2, _MAX_NODES)
    _check_int("degree", degree, 1, n - 1)
    if degree != n - 1 and degree % 2:
        raise ConfigurationError(
            f"a Harary graph's degree must be even (or n - 1 = {n - 1}), got {degree}"
        )
    if not isinstance(seed, bytes) or len(seed) != GRAPH_SEED_BYTES:
        raise ConfigurationError(f"the graph seed must be {GRAPH_SEED_BYTES} bytes")


def _offsets(degree: int) -> NDArray[np.int64]:
    half = degree // 2
    return np.concatenate(
        (np.arange(-half, 0, dtype=np.int64), np.arange(1, half + 1, dtype=np.int64))
    )


def harary_neighbours(n: int, degree: int, seed: bytes) -> list[tuple[int, ...]]:
    """Neighbour lists, by position 0..n-1, of the random Harary graph H(n, degree).

    Deterministic in ``seed`` (32 bytes). Each list is sorted and excludes the node; the
    graph is undirected and ``degree``-regular. ``degree == n - 1`` is the complete graph.
    """
    _check_graph(n, degree, seed)
    if degree == n - 1:
        everyone = tuple(range(n))
        return [everyone[:p] + everyone[p + 1 :] for p in range(n)]
    ring, slot = _ring(n, seed)
    half = degree // 2
    compact = ring.astype(np.int32 if n <= 2**31 else np.int64)
    # Window s of the wrapped ring holds slots s - half .. s + half; drop the middle (self).
    wrapped = np.concatenate((compact[n - half :], compact, compact[:half]))
    windows = sliding_window_view(wrapped, degree + 1)
    others = np.r_[0:half, half + 1 : degree + 1]
    table = windows[slot][:, others]
    table.sort(axis=1)
    rows: list[list[int]] = table.tolist()
    return list(map(tuple, rows))


def neighbours_of(n: int, degree: int, seed: bytes, position: int) -> tuple[int, ...]:
    """Sorted neighbours of one position in H(n, degree), as :func:`harary_neighbours` has them."""
    _check_graph(n, degree, seed)
    _check_int("position", position, 0, n - 1)
    if degree == n - 1:
        return tuple(p for p in range(n) if p != position)
    ring, slot = _ring(n, seed)
    neighbours: list[int] = np.sort(ring[(slot[position] + _offsets(degree)) % n]).tolist()
    return tuple(neighbours)


# --------------------------------------------------------------------------------------------
# The survivor set in active mode (docs/SURVIVOR_CERTIFICATE.md)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurvivorRule:
    """What an active-mode client requires of the survivor set S before it signs S and before
    it unmasks against it.

    ``quorum``: the distinct cohort members that must have signed the very same S (Q =
    floor((n + A) / 2) + 1, so that two certified sets share an honest signer). ``window``:
    ``k / 2`` consecutive ring slots (0 on the complete graph, where no window rule is
    needed); ``least_in_window``: the members of S every such window must hold, one more than
    the most corrupt clients any window holds except with probability 2**-(sigma+1), so that
    the honest members of S stay connected in the graph and no sum over a part of them can be
    unmasked.
    """

    quorum: int
    window: int
    least_in_window: int
    # A, the corrupt clients the finder counts in this cohort: the one bound every count of
    # honest inputs subtracts (docs/XNOISE.md X10), never re-derived from the quorum.
    corrupt: int = 0

    def __post_init__(self) -> None:
        if (
            self.quorum < 1
            or self.window < 0
            or not 0 <= self.least_in_window <= self.window
            or self.corrupt < 0
        ):
            raise ConfigurationError(f"an impossible survivor rule: {self}")


def survivor_rule(n: int, degree: int, adversarial_rate: float, sigma: int) -> SurvivorRule:
    """The rule for a cohort of ``n`` on a graph of ``degree`` (A corrupt clients counted as
    the parameter finder counts them)."""
    _check_int("n", n, 2, _MAX_NODES)
    corrupt = corrupt_clients(n, adversarial_rate)
    quorum = (n + corrupt) // 2 + 1
    if degree >= n - 1:
        return SurvivorRule(quorum, 0, 0, corrupt)
    half = degree // 2
    # Slots of a window are a uniform half-subset of the ring, independent of which clients
    # are corrupt (the graph comes from every client's contribution): at most ``most`` corrupt
    # in every window, union-bounded over the n windows.
    inverse = n << (sigma + 1)
    in_window = _Hypergeometric(n, corrupt, half)
    most = _first_true(
        lambda m: in_window.upper_tail_below(m + 1, -math.log(inverse), inverse),
        0,
        in_window.high,
    )
    return SurvivorRule(quorum, half, min(most + 1, half), corrupt)


def corrupt_clients(n: int, adversarial_rate: float) -> int:
    """A: the corrupt clients a cohort of ``n`` may hold at ``adversarial_rate``, counted as
    the parameter finder counts them. Every rule that needs the corruption bound takes this
    one (docs/XNOISE.md X10: two formulas would give two counts)."""
    corrupt, _ = _counts(n, _check_rate("adversarial_rate", adversarial_rate), 0.0)
    return corrupt


def thin_window(
    n: int, seed: bytes, members: Collection[int] | NDArray[np.integer], rule: SurvivorRule
) -> int | None:
    """The first ring slot of a window of ``rule.window`` consecutive slots holding fewer than
    ``rule.least_in_window`` of ``members`` (positions 0..n-1; others are ignored), or None
    if there is none."""
    if rule.window == 0:
        return None
    ring, _ = _ring(n, seed)
    positions = (
        members
        if isinstance(members, np.ndarray)
        else np.fromiter(members, dtype=np.int64, count=len(members))
    )
    chosen = np.zeros(n, dtype=np.bool_)
    chosen[positions[(positions >= 0) & (positions < n)]] = True
    held = chosen[ring].astype(np.int64)  # held[s]: ring slot s holds a member
    # Counts of every cyclic window at once: prefix sums over the ring read twice.
    prefix = np.concatenate(([0], np.cumsum(np.concatenate((held, held[: rule.window])))))
    counts = prefix[rule.window : rule.window + n] - prefix[:n]
    thin = np.flatnonzero(counts < rule.least_in_window)
    return int(thin[0]) if len(thin) else None


def thin_window_of(
    cohort: NDArray[np.int64], seed: bytes, survivors: Sequence[int], rule: SurvivorRule
) -> int | None:
    """``thin_window`` for ``survivors`` given by client id, the sorted ``cohort``'s ids
    (``RoundConfig.id_array``): a survivor's ring position is a binary search."""
    members = np.searchsorted(cohort, np.array(survivors, dtype=np.int64))
    return thin_window(len(cohort), seed, members, rule)
