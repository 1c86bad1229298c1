"""Active mode on the sparse graph: no server obtains a sum over part of the survivors.

A server that decides who "dropped" can cut the SecAgg+ ring: declare the honest clients of
two windows of k/2 ring slots dropped (keeping corrupt clients there, whose keys it holds),
and the survivors fall into two arcs whose sums it unmasks one by one, each below the
minimum cohort, although every client signed one and the same survivor set. A server that
shows different arcs different survivor sets gets each arc to act on its own set. Each test
plays the attack twice against real clients: under a permissive rule (what clients checked
before: the set's size, t signatures of their own neighbours), where the loot unmasks the
arcs' sums exactly; and under the deployment's rule (``Params.survivor_rule``), where the
loot unmasks nothing (docs/SURVIVOR_CERTIFICATE.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from secagg.errors import AbortReason, ClientAbort
from secagg.schemes.masking.graph import SurvivorRule, _ring
from secagg.schemes.masking.messages import (
    ConsistencySignature,
    PeerShares,
    SurvivorList,
    UnmaskRequest,
)
from secagg.schemes.masking.parameters import Params
from tests.protocol.harness import Harness
from tests.protocol.loot import Loot

# What clients checked before the certificate: nothing across the cohort.
PERMISSIVE = SurvivorRule(quorum=1, window=0, least_in_window=0)


def ring_order(h: Harness) -> list[int]:
    ring, _ = _ring(len(h.config.client_ids), h.server.session.graph_seed)
    ids = h.config.client_ids
    return [ids[p] for p in ring.tolist()]


def play_until_masked(
    h: Harness, skip: list[int], corrupt: set[int]
) -> tuple[Loot, dict[int, bytes]]:
    """The honest stages up to the masked inputs, all kept; ``skip`` are declared dropped
    at the advertise stage; the corrupt clients' mask keys are the attacker's."""
    loot = Loot(h.config, h.session_id)
    h.advertise(skip=skip)
    keys = {c: h.clients[c].state.mask_keys.private_bytes() for c in corrupt}  # type: ignore[union-attr]
    for client, advert in h.adverts.items():
        loot.take(client, advert)
    for stage in ("share", "mask"):
        for client in list(h.outgoing):
            reply = h.respond(client, h.outgoing[client])
            h.server.receive(client, reply.encode())
            loot.take(client, reply)
        if stage == "share":
            for client, message in h.server.close_stage().items():
                h.outgoing[client] = message
                assert isinstance(message, PeerShares)
                loot.sent(client, message)
            h.outgoing = {c: m for c, m in h.outgoing.items() if isinstance(m, PeerShares)}
    return loot, keys


def show_and_unmask(h: Harness, loot: Loot, views: dict[int, tuple[int, ...]]) -> dict[int, object]:
    """Show each client its survivor set, then ask each signer to unmask against it with
    every signature gathered on that same set (its neighbours' first). What each client did:
    the set it unmasked against, or why it refused."""
    sid = h.session_id
    signed: dict[tuple[int, ...], dict[int, bytes]] = {}
    answers: dict[int, object] = {}
    for client, shown in views.items():
        if client not in shown:
            continue
        try:
            reply = h.clients[client].receive(SurvivorList(sid, client, shown).encode())
        except ClientAbort as exc:
            answers[client] = exc.reason
            continue
        assert isinstance(reply, ConsistencySignature)
        signed.setdefault(shown, {})[client] = reply.signature
    neighbours = h.server.session.neighbours
    for shown, signatures in signed.items():
        for client in signatures:
            view = list(loot.masked_with[client])
            certificate = sorted(
                signatures.items(), key=lambda e: (e[0] not in neighbours(client), e[0])
            )
            request = UnmaskRequest(
                sid,
                client,
                tuple(u for u in view if u in shown),
                tuple(u for u in view if u not in shown),
                tuple(certificate),
            )
            try:
                loot.take(client, h.clients[client].receive(request.encode()))
                answers[client] = shown
            except ClientAbort as exc:
                answers[client] = exc.reason
    return answers


@dataclass(frozen=True)
class Cut:
    """What the cutting server ends up with."""

    harness: Harness
    loot: Loot
    corrupt_keys: dict[int, bytes]
    arcs: tuple[list[int], list[int]]
    answers: dict[int, object]
    min_cohort: int


def cut_attack(n: int, dropout: float, rule: SurvivorRule | None) -> Cut:
    """The finder's own parameters for n and the dropout rate; t - k/2 corrupt clients in each
    of two windows of k/2 ring slots half a ring apart (no more than chance allows a window:
    at most the rule's m), whose honest clients the server declares dropped at the advertise
    stage; a minimum cohort the whole survivor set meets and neither arc does."""
    params = Params(dim=2, max_clients=n, server_model="semi-malicious", dropout_rate=dropout)
    graph = params.graph(n)
    k, t, half = graph.degree, graph.threshold, graph.degree // 2
    min_cohort = n - k
    h = Harness(
        n, degree=k, threshold=t, dim=2, active=True, min_cohort=min_cohort, seed=n, rule=rule
    )
    order = ring_order(h)
    first, second = order[0:half], order[n // 2 : n // 2 + half]
    per_window = t - half  # what the clients next to the cut need to find t signatures
    spread = [i * half // per_window for i in range(per_window)]
    corrupt = {first[i] for i in spread} | {second[i] for i in spread}
    gap = [c for c in first + second if c not in corrupt]
    arcs = (
        [c for c in order[half : n // 2] if c not in corrupt],
        [c for c in order[n // 2 + half :] if c not in corrupt],
    )
    loot, keys = play_until_masked(h, gap, corrupt)
    survivors = tuple(sorted(loot.masked))
    assert len(survivors) >= min_cohort
    # One survivor set, shown to every client that sent a masked input.
    answers = show_and_unmask(h, loot, dict.fromkeys(survivors, survivors))
    return Cut(h, loot, keys, arcs, answers, min_cohort)


# The finder's parameters at a few sizes and dropout rates. (At 33% dropout the finder's
# graph is so dense that the two cut windows hold a third of the cohort: the clients next to
# them no longer find t neighbours, and the cut cannot be made; split views remain, below.)
SIZES = [(60, 0.1), (300, 0.05), (400, 0.1)]
# A thousand clients takes half a minute per attack; SECAGG_LARGE_ATTACKS=1 adds it.
LARGE = [(1000, 0.1)] if os.environ.get("SECAGG_LARGE_ATTACKS") else []


@pytest.mark.parametrize(("n", "dropout"), [*SIZES, *LARGE])
def test_a_cut_survivor_set_lets_a_permissive_client_reveal_arcs_below_the_minimum(
    n: int, dropout: float
) -> None:
    cut = cut_attack(n, dropout, PERMISSIVE)
    sums = cut.loot.recoverable_sums(cut.corrupt_keys)
    for arc in cut.arcs:
        honest = frozenset(arc)
        # The attacker's component is the arc plus the corrupt clients' inputs it knows.
        (members,) = [members for members in sums if honest <= members]
        assert np.array_equal(sums[members], cut.harness.expected_total(members))  # exactly
        assert len(honest) < cut.min_cohort


@pytest.mark.parametrize(("n", "dropout"), [*SIZES, *LARGE])
def test_the_deployments_rule_refuses_to_sign_a_set_that_cuts_the_graph(
    n: int, dropout: float
) -> None:
    cut = cut_attack(n, dropout, None)
    honest = set(cut.arcs[0]) | set(cut.arcs[1])
    assert {cut.answers[c] for c in honest} == {AbortReason.SURVIVORS_CUT}
    assert cut.loot.recoverable_sums(cut.corrupt_keys) == {}


def split_view_attack(
    n: int, dropout: float, rule: SurvivorRule | None
) -> tuple[Harness, dict[int, object], Loot]:
    """Two halves of the ring are shown two survivor sets, each leaving out one honest client
    of the other half; each set passes every local check."""
    params = Params(dim=2, max_clients=n, server_model="semi-malicious", dropout_rate=dropout)
    graph = params.graph(n)
    h = Harness(
        n,
        degree=graph.degree,
        threshold=graph.threshold,
        dim=2,
        active=True,
        min_cohort=n - graph.degree,
        seed=n + 1,
        rule=rule,
    )
    order = ring_order(h)
    loot, _ = play_until_masked(h, [], set())
    survivors = sorted(loot.masked)
    left, right = order[: n // 2], order[n // 2 :]
    views = {
        **{c: tuple(u for u in survivors if u != right[10]) for c in left},
        **{c: tuple(u for u in survivors if u != left[10]) for c in right},
    }
    answers = show_and_unmask(h, loot, views)
    return h, answers, loot


SPLIT_SIZES = [(60, 0.1), (120, 0.33), (300, 0.05)]


@pytest.mark.parametrize(("n", "dropout"), SPLIT_SIZES)
def test_split_views_get_a_permissive_cohort_to_act_on_two_survivor_sets(
    n: int, dropout: float
) -> None:
    _, answers, _ = split_view_attack(n, dropout, PERMISSIVE)
    acted_on = {a for a in answers.values() if isinstance(a, tuple)}
    assert len(acted_on) == 2  # the survivor set is not unique across the cohort


@pytest.mark.parametrize(("n", "dropout"), SPLIT_SIZES)
def test_under_the_deployments_rule_no_client_unmasks_against_a_set_half_the_cohort_signed(
    n: int, dropout: float
) -> None:
    h, answers, loot = split_view_attack(n, dropout, None)
    assert h.survivor_rule is not None and h.survivor_rule.quorum > n // 2
    assert not any(isinstance(a, tuple) for a in answers.values())
    assert set(answers.values()) == {AbortReason.BELOW_THRESHOLD}
    assert loot.self_mask_shares == {} and loot.key_shares == {}
