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

import numpy as np

from secagg.errors import AbortReason, ClientAbort
from secagg.protocol.graph import SurvivorRule, _ring
from secagg.protocol.messages import (
    ConsistencySignature,
    PeerShares,
    SurvivorList,
    UnmaskRequest,
)
from tests.protocol.harness import Harness
from tests.protocol.loot import Loot

N, K, T, MIN_COHORT = 60, 12, 8, 40
HALF = K // 2
# What clients checked before the certificate: nothing across the cohort.
PERMISSIVE = SurvivorRule(quorum=1, window=0, least_in_window=0)


def ring_order(h: Harness) -> list[int]:
    ring, _ = _ring(N, h.server.session.graph_seed)
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


def cut_attack(
    rule: SurvivorRule | None,
) -> tuple[Harness, Loot, dict[int, bytes], list[int], list[int], dict[int, object]]:
    h = Harness(
        N,
        degree=K,
        threshold=T,
        active=True,
        min_cohort=MIN_COHORT,
        seed=7,
        adversarial_rate=0.1,
        rule=rule,
    )
    order = ring_order(h)
    first, second = order[0:HALF], order[N // 2 : N // 2 + HALF]
    corrupt = {first[1], first[4], second[1], second[4]}
    gap = [c for c in first + second if c not in corrupt]
    arcs = (
        [c for c in order[HALF : N // 2] if c not in corrupt],
        [c for c in order[N // 2 + HALF :] if c not in corrupt],
    )
    loot, keys = play_until_masked(h, gap, corrupt)
    survivors = tuple(sorted(loot.masked))
    sid = h.session_id
    # One survivor set, shown to every client that sent a masked input.
    answers: dict[int, object] = {}
    signatures: dict[int, bytes] = {}
    for client in survivors:
        try:
            reply = h.clients[client].receive(SurvivorList(sid, client, survivors).encode())
        except ClientAbort as exc:
            answers[client] = exc.reason
            continue
        assert isinstance(reply, ConsistencySignature)
        signatures[client] = reply.signature
        answers[client] = reply
    neighbours = h.server.session.neighbours
    for client in survivors:
        if client not in signatures:
            continue
        view = [u for u in loot.masked_with[client]]
        request = UnmaskRequest(
            sid,
            client,
            tuple(u for u in view if u in survivors),
            tuple(u for u in view if u not in survivors),
            tuple(
                (u, s)
                for u, s in sorted(
                    signatures.items(), key=lambda e: (e[0] not in neighbours(client), e[0])
                )
            ),
        )
        try:
            loot.take(client, h.clients[client].receive(request.encode()))
        except ClientAbort as exc:
            answers[client] = exc.reason
    return h, loot, keys, arcs[0], arcs[1], answers


def test_a_cut_survivor_set_lets_a_permissive_client_reveal_two_arcs_below_the_minimum() -> None:
    h, loot, keys, first, second, _ = cut_attack(PERMISSIVE)
    sums = loot.recoverable_sums(keys)
    for arc in (first, second):
        honest = frozenset(arc)
        # The attacker's component is the arc plus the corrupt clients' inputs it knows.
        (members,) = [members for members in sums if honest <= members]
        assert np.array_equal(sums[members], h.expected_total(members))  # exactly
        assert len(honest) < MIN_COHORT


def test_the_deployments_rule_refuses_to_sign_a_set_that_cuts_the_graph() -> None:
    _, loot, keys, first, second, answers = cut_attack(None)
    honest = set(first) | set(second)
    assert {answers[c] for c in honest} == {AbortReason.SURVIVORS_CUT}
    assert loot.recoverable_sums(keys) == {}


def split_view_attack(rule: SurvivorRule | None) -> tuple[Harness, dict[int, object], Loot]:
    """Two halves of the ring are shown two survivor sets, each leaving out one honest client
    of the other half; each set passes every local check."""
    h = Harness(N, degree=K, threshold=T, active=True, min_cohort=MIN_COHORT, seed=11, rule=rule)
    order = ring_order(h)
    loot, _ = play_until_masked(h, [], set())
    survivors = sorted(loot.masked)
    left, right = order[: N // 2], order[N // 2 :]
    views = {
        **{c: tuple(u for u in survivors if u != right[10]) for c in left},
        **{c: tuple(u for u in survivors if u != left[10]) for c in right},
    }
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
    return h, answers, loot


def test_split_views_get_a_permissive_cohort_to_act_on_two_survivor_sets() -> None:
    _, answers, _ = split_view_attack(SurvivorRule(quorum=1, window=0, least_in_window=0))
    acted_on = {a for a in answers.values() if isinstance(a, tuple)}
    assert len(acted_on) == 2  # the survivor set is not unique across the cohort


def test_under_the_deployments_rule_no_client_unmasks_against_a_set_half_the_cohort_signed() -> (
    None
):
    h, answers, loot = split_view_attack(None)
    assert h.survivor_rule is not None and h.survivor_rule.quorum > N // 2
    assert not any(isinstance(a, tuple) for a in answers.values())
    assert set(answers.values()) == {AbortReason.BELOW_THRESHOLD}
    assert loot.self_mask_shares == {} and loot.key_shares == {}
