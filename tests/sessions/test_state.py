"""A session client's durable state: what ``SessionClient.snapshot`` writes is exactly what
``SessionClient.restore`` rebuilds, at every step of a session, and nothing else decodes.

Specification:
- at every message of the set-up and of every round, in both modes, a client restored from its
  snapshot (with the same randomness to come) answers that message with the same bytes as the
  client itself, refuses what it refuses, and snapshots to the same bytes before and after;
- the restored client's session is the agreed one (id, graph seed, absent members);
- a client that left restores as one that has left, and answers nothing;
- every truncation, every trailing byte, a wrong magic or version, ids out of order or outside
  the session's graph, an unknown tag: ``DecodeError``; no single flipped byte raises anything
  else;
- no secret of the state is in the repr of what ``decode`` reads or of the restored client.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from secagg.errors import AbortReason, ClientAbort, DecodeError
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import Message, Writer, decode
from secagg.schemes.masking.session import state as session_state
from secagg.schemes.masking.session.client import (
    Agreeing,
    Between,
    Left,
    Masked,
    SessionClient,
    Signed,
)
from secagg.schemes.masking.session.local import LocalSession
from secagg.schemes.masking.session.messages import SessionConfig
from tests.sessions.cohort import Cohort, task_of


class Recorded:
    """Reproducible randomness whose draws to come can be copied (``clone``) and whose every
    draw is kept (``drawn``): the tests' window into what a client drew, and a way to give a
    rebuilt client the very randomness the original is about to use."""

    def __init__(self, seed: bytes, count: int = 0) -> None:
        self.seed = seed
        self.count = count
        self.drawn: list[bytes] = []

    def _next(self) -> DeterministicRandomness:
        self.count += 1
        return DeterministicRandomness(self.seed + self.count.to_bytes(8, "big"))

    def bytes(self, n: int) -> bytes:
        out = self._next().bytes(n)
        self.drawn.append(out)
        return out

    def words(self, n: int) -> NDArray[np.uint32]:
        out = self._next().words(n)
        self.drawn.append(out.tobytes())
        return out

    def clone(self) -> Recorded:
        return Recorded(self.seed, self.count)

    def __repr__(self) -> str:
        return "Recorded(<seed>)"


class Twin:
    """A client of a ``LocalSession`` that, before every message, restores a second client
    from the first one's snapshot, hands it the same message, and requires the same answer."""

    def __init__(self, cohort: Cohort, client_id: int) -> None:
        self.cohort = cohort
        self.rng = Recorded(f"twin/{client_id}".encode() * 2)
        self.real = self._make(client_id)
        self.input: tuple[NDArray[np.floating], int, bytes] | None = None
        self.checked = 0
        self.states: set[str] = set()

    def _make(self, client_id: int) -> SessionClient:
        c = self.cohort
        return SessionClient(
            c.terms,
            client_id,
            self.rng,
            identity=c.identities[client_id],
            pki=c.pki,
            survivor_rule=c.rule,
            clock=lambda: c.clock[0],
        )

    def restored(self, blob: bytes, rng: Recorded) -> SessionClient:
        c = self.cohort
        return SessionClient.restore(
            blob,
            rng,
            identity=c.identities[self.real.client_id],
            pki=c.pki,
            survivor_rule=c.rule,
            clock=lambda: c.clock[0],
        )

    @property
    def state(self) -> object:
        return self.real.state

    def set_input(self, values: NDArray[np.floating], weight: int, task: bytes) -> None:
        self.input = (values, weight, task)
        self.real.set_input(values, weight, task)

    def receive(self, data: bytes) -> Message | None:
        blob = self.real.snapshot()
        twin = self.restored(blob, self.rng.clone())
        assert twin.snapshot() == blob
        assert twin.terms == self.real.terms and twin.dead == self.real.dead
        if not isinstance(self.real.state, Agreeing | Left):
            assert twin.session == self.real.session  # the agreed session, graph seed included
        self.states.add(type(self.real.state).__name__)
        if self.input is not None and isinstance(self.real.state, Between):
            twin.set_input(*self.input)
        answers = []
        for client in (self.real, twin):
            try:
                answer = client.receive(data)
                answers.append(None if answer is None else answer.encode())
            except ClientAbort as exc:
                answers.append(exc.reason)
        assert answers[0] == answers[1]
        assert twin.snapshot() == self.real.snapshot()
        self.checked += 1
        if isinstance(answers[0], AbortReason):
            raise ClientAbort(answers[0], "refused by both")
        return None if answers[0] is None else decode(answers[0])


def run(cohort: Cohort, rounds: int, make: Callable[[int], object]) -> LocalSession:
    local = LocalSession(cohort.server, make)  # type: ignore[arg-type]
    local.set_up()
    for r in range(1, rounds + 1):
        updates = cohort.updates()
        result = local.run_round(task_of(r), updates)
        assert list(result.aggregate.ring_total) == cohort.expected_ring_sum(
            updates, result.included
        )
    return local


@pytest.mark.parametrize("active", [False, True], ids=["semi-honest", "active"])
def test_a_client_restored_from_its_snapshot_answers_every_message_as_the_client_does(
    active: bool,
) -> None:
    cohort = Cohort(8, threshold=5 if active else 3, active=active)
    twins: dict[int, Twin] = {}

    def make(u: int) -> Twin:
        twins[u] = Twin(cohort, u)
        return twins[u]

    run(cohort, 3, make)
    expected = {"Agreeing", "AwaitingSetupKeys", "AwaitingSetupShares", "Between", "Masked"}
    if active:
        expected.add("Signed")
    for twin in twins.values():
        assert twin.states == expected
        assert twin.checked == 5 + 3 * (3 if active else 2)  # every message of the session


def test_a_client_that_left_restores_as_left_and_answers_nothing() -> None:
    cohort = Cohort(6)
    local = run(cohort, 1, cohort._client)
    client = local.clients[0]
    with pytest.raises(ClientAbort):
        client.receive(b"junk")
    assert isinstance(client.state, Left)
    restored = SessionClient.restore(client.snapshot(), clock=lambda: 0.0)
    assert restored.state == client.state
    with pytest.raises(ClientAbort) as refused:
        restored.receive(SessionConfig.of(cohort.terms).encode())
    assert refused.value.reason is AbortReason.ROUND_CLOSED


SNAPSHOT_COHORT = Cohort(8, threshold=5, active=True)


def snapshots() -> dict[str, bytes]:
    """One snapshot of client 0 in each state a client can be in, from a real session."""
    cohort = SNAPSHOT_COHORT
    found: dict[str, bytes] = {}

    class Keep(Twin):
        def receive(self, data: bytes) -> Message | None:
            if self.real.client_id == 0:
                found.setdefault(type(self.real.state).__name__, self.real.snapshot())
            return super().receive(data)

    run(cohort, 1, lambda u: Keep(cohort, u))
    return found


SNAPSHOTS = snapshots()


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_every_truncation_and_every_trailing_byte_is_a_decode_error(name: str) -> None:
    blob = SNAPSHOTS[name]
    for cut in range(len(blob)):
        with pytest.raises(DecodeError):
            session_state.decode(blob[:cut])
    with pytest.raises(DecodeError):
        session_state.decode(blob + b"\x00")


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_no_flipped_byte_raises_anything_but_a_decode_error(name: str) -> None:
    blob = SNAPSHOTS[name]
    for i in range(len(blob)):
        flipped = blob[:i] + bytes([blob[i] ^ 0x41]) + blob[i + 1 :]
        with contextlib.suppress(DecodeError):
            session_state.decode(flipped)


def _rewrite(blob: bytes, edit: Callable[[session_state.Durable], session_state.Durable]) -> bytes:
    held = edit(session_state.decode(blob))
    return session_state.encode(
        held.terms,
        held.client_id,
        held.started,
        held.session,
        held.dead,
        held.state,
        held.agreement,
    )


def test_what_the_graph_and_order_forbid_is_a_decode_error() -> None:
    between = SNAPSHOTS["Between"]
    held = session_state.decode(between)
    assert isinstance(held.state, Between) and held.session is not None
    state = held.state
    some = min(state.live)
    forged = {
        "the client dead to itself": lambda h: dataclasses.replace(h, dead=h.dead | {h.client_id}),
        "a live neighbour also dead": lambda h: dataclasses.replace(h, dead=h.dead | {some}),
        "a live neighbour outside the cohort": lambda h: dataclasses.replace(
            h, state=dataclasses.replace(state, live={**state.live, 99: state.live[some]})
        ),
        "survivors out of order": lambda h: dataclasses.replace(
            h, state=dataclasses.replace(state, survivors=tuple(reversed(state.survivors)))
        ),
        "survivors outside the session": lambda h: dataclasses.replace(
            h, state=dataclasses.replace(state, survivors=(*state.survivors, 99))
        ),
        "a round past the session's rounds": lambda h: dataclasses.replace(
            h, state=dataclasses.replace(state, closed=h.terms.max_rounds + 1)
        ),
    }
    for what, edit in forged.items():
        with pytest.raises(DecodeError):
            session_state.decode(_rewrite(between, edit))
            pytest.fail(what)
    # Magic, version, a state tag no state has, terms that are no session's configuration.
    w = Writer()
    w.fixed(b"SAss", 4)
    w.u8(1)
    w.blob(SessionConfig.of(held.terms).encode())
    w.u32(held.client_id)
    w.f64(0.0)
    w.u8(0)  # not agreed
    w.ids([])
    head = w.getvalue()
    assert session_state.decode(head + bytes([1, 0])).state == Agreeing()
    for bad in (
        head + bytes([9]),
        b"XXss" + head[4:] + bytes([1, 0]),
        head[:4] + bytes([2]) + head[5:] + bytes([1, 0]),
        head[:5] + (3).to_bytes(4, "big") + b"abc",
    ):
        with pytest.raises(DecodeError):
            session_state.decode(bad)


def test_no_secret_is_in_the_repr_of_a_state_or_a_restored_client() -> None:
    for name, blob in SNAPSHOTS.items():
        held = session_state.decode(blob)
        state = held.state
        secrets: list[bytes] = []
        masked = state.masked if isinstance(state, Signed) else state
        for attribute in ("mask_keys", "cipher_keys", "next_mask_keys", "next_cipher_keys"):
            keys = getattr(masked, attribute, None)
            if keys is not None:
                secrets.append(keys.private_bytes())
        for neighbour in getattr(masked, "live", {}).values():
            secrets += [neighbour.chain_key, neighbour.key_share.value_bytes()]
        if isinstance(state, Masked | Signed | Between):
            assert secrets, name
        c = SNAPSHOT_COHORT
        client = SessionClient.restore(
            blob, identity=c.identities[0], pki=c.pki, survivor_rule=c.rule, clock=lambda: 0.0
        )
        for text in (repr(held), repr(state), repr(client), str(held)):
            for secret in secrets:
                assert secret.hex() not in text and repr(secret)[2:-1] not in text
