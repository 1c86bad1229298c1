"""A coordinator that lies, over the real gRPC schema and TLS, against real ``secagg join``
processes, in both modes.

Eight unmodified client processes per mode stay connected for the whole module, as a real
fleet would; the attacker (``tests/service/adversary.py``) plays one attack per test and then
hands its loot to ``Loot.recover``, which rebuilds every secret the collected shares allow and
strips every mask it can. Every test asserts on what the attacker actually recovers. The last
test checks that after all of them every client process is still alive, still honest, and
completes an ordinary round with the exact mean.

Where an attack still works against semi-honest mode, the test says so: those are the reasons
docs/THREAT_MODEL.md gives for active mode. Nothing works through a downgrade, a plaintext
request, an invented cohort, a replayed round or a steered session, in either mode.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from secagg.errors import AbortReason
from secagg.hazmat import aead
from secagg.hazmat.keys import X25519KeyPair
from secagg.hazmat.quantize import Quantizer
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.hazmat.shamir import Share
from secagg.protocol.codec import Message
from secagg.protocol.stages import Stage
from secagg.schemes.masking import derivations as derive
from secagg.schemes.masking.messages import (
    ConsistencySignature,
    Contributions,
    PeerKeyEntry,
    PeerKeys,
    RoundConfig,
    SurvivorList,
    UnmaskRequest,
)
from secagg.schemes.masking.parameters import Params, Protocol, ServerModel
from secagg.schemes.masking.server import RoundResult, Server
from secagg.service.config import DeploymentConfig
from secagg.service.credentials import AllowList, create_deployment, load_tls_server_credentials
from secagg.service.run import start_client_process
from secagg.service.tasks import random_update, random_weight
from secagg.service.v1 import coordinator_pb2 as pb
from secagg.service.wire import encode_model, task_digest
from tests.protocol.loot import Loot
from tests.service.adversary import Adversary, Reply

pytestmark = pytest.mark.timeout(300)

DIM = 16
CLIENTS = 8
TASK_SEED = 0
VICTIM = 0
OTHERS = tuple(range(1, CLIENTS))
CLIENT_STAGE_TIMEOUT = 4.0  # short, so that the silent-coordinator test is quick


@dataclass
class Fleet:
    """Eight real client processes connected to the lying coordinator."""

    mode: ServerModel
    params: Params
    adversary: Adversary
    root: Path
    processes: dict[int, subprocess.Popen[bytes]]
    pki: dict[int, bytes]
    round_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def active(self) -> bool:
        return self.mode is ServerModel.SEMI_MALICIOUS

    def config(
        self, cohort: tuple[int, ...] = tuple(range(CLIENTS)), **changes: object
    ) -> RoundConfig:
        """A round configuration exactly as the deployment makes it, then changed as asked."""
        round_id = next(self.round_ids)
        config = self.params.round_config(
            cohort,
            nonce=round_id.to_bytes(16, "big"),
            round_id=round_id,
            task_hash=self.task_hash(round_id),
        )
        return dataclasses.replace(config, **changes) if changes else config

    @staticmethod
    def model() -> bytes:
        return encode_model(np.zeros(DIM, dtype=np.float32))

    def task_hash(self, step: int) -> bytes:
        return task_digest(self.model(), step)

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.root.glob("client-*.log"))
        )


def _write_deployment(root: Path, mode: ServerModel) -> tuple[Params, Path]:
    deployment = create_deployment(root, CLIENTS)
    params = Params(
        dim=DIM,
        max_clients=CLIENTS,
        max_weight=3,
        protocol=Protocol.SECAGG,
        server_model=mode,
        # Semi-honest: t = 3 of 8, low enough that a split view can collect both kinds of share
        # of one client (the attack active mode exists to stop); active mode needs t = 5.
        dropout_rate=0.5 if mode is ServerModel.SEMI_HONEST else 0.33,
        min_cohort=4,
    )
    path = DeploymentConfig.write(root, deployment, params, stage_timeout=1.0, min_clients=6)
    text = re.sub(
        r"(\[clients\][^\[]*?stage_timeout = )[0-9.]+",
        rf"\g<1>{CLIENT_STAGE_TIMEOUT}",
        path.read_text(),
    )
    path.write_text(text)
    return params, path


@pytest.fixture(
    scope="module",
    params=[ServerModel.SEMI_HONEST, ServerModel.SEMI_MALICIOUS],
    ids=["semi-honest", "active"],
)
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    mode: ServerModel = request.param
    root = tmp_path_factory.mktemp(f"wire-{mode.value}")
    params, config_path = _write_deployment(root, mode)
    config = DeploymentConfig.load(config_path)
    assert config.tls is not None and config.allow_list is not None
    allow_list = AllowList.load(config.allow_list)
    adversary = Adversary(
        allow_list, load_tls_server_credentials(config.tls), config.coordinator.max_message_bytes
    )
    port = adversary.start()
    identities = {c: root / "clients" / f"client-{c}.key" for c in range(CLIENTS)}
    processes = {
        c: start_client_process(
            config_path,
            identities[c],
            f"127.0.0.1:{port}",
            root / f"client-{c}.log",
            task_seed=TASK_SEED,
        )
        for c in range(CLIENTS)
    }
    fleet = Fleet(mode, params, adversary, root, processes, dict(allow_list.keys))
    try:
        adversary.wait_for(range(CLIENTS), 60)
        yield fleet
    finally:
        stop(processes, adversary)


def stop(processes: dict[int, subprocess.Popen[bytes]], adversary: Adversary) -> None:
    """Kill every client process still running, then the adversary."""
    for process in processes.values():
        if process.poll() is None:
            process.kill()
        process.wait()
    adversary.stop()


# ---------------------------------------------------------------------------- the attacker's tools
def _update(client: int, step: int) -> np.ndarray:
    return random_update(client, DIM, step, TASK_SEED)


def assert_exact_mean(
    result: RoundResult, params: Params, clients: int, dim: int, step: int
) -> None:
    """An honest round over every client: the mean of their random updates, within the
    quantisation bound."""
    assert result.included == tuple(range(clients))
    weights = np.array([random_weight(c) for c in range(clients)], dtype=np.float64)
    updates = np.stack([random_update(c, dim, step, TASK_SEED) for c in range(clients)])
    exact = weights @ updates.astype(np.float64) / weights.sum()
    mean = result.weighted_mean(params.quantizer)
    assert np.max(np.abs(mean - exact)) <= params.quantizer.error_bound()


def _recovered(loot: Loot, client: int, step: int, params: Params) -> bool:
    """Did the loot give the attacker this client's update?"""
    vector = loot.recover(client)
    if vector is None:
        return False
    quantizer: Quantizer = params.quantizer
    if int(vector[-1]) != random_weight(client):
        return False
    values = quantizer.decode(vector)
    return bool(np.max(np.abs(values - _update(client, step))) <= quantizer.error_bound())


def _plaintext_sent(fleet: Fleet, client: int, step: int) -> bool:
    """Did any frame of this client carry its raw update (float32 or float64)?"""
    update = _update(client, step)
    raw = [update.astype("<f4").tobytes(), update.astype("<f8").tobytes()]
    return any(
        any(blob in frame.SerializeToString() for blob in raw)
        for sender, frame in fleet.adversary.sent_up
        if sender == client
    )


@dataclass
class Round:
    """An attacker-driven round: a real ``Server`` computes what honest messages would be, and
    the attacker changes what it likes before sending."""

    fleet: Fleet
    config: RoundConfig
    cohort: tuple[int, ...]
    server: Server = field(init=False)
    outgoing: dict[int, Message] = field(init=False)
    loot: Loot | None = None
    aborts: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        active = self.fleet.active
        self.server = Server(
            self.config,
            pki=self.fleet.pki if active else None,
            survivor_rule=(
                self.fleet.params.survivor_rule(len(self.config.client_ids), self.config.degree)
                if active
                else None
            ),
        )
        self.outgoing = self.server.start()

    @property
    def step(self) -> int:
        return self.config.round_id

    def deliver(self, messages: dict[int, Message]) -> dict[int, Reply | None]:
        adversary = self.fleet.adversary
        for c, m in messages.items():
            if isinstance(m, RoundConfig):
                adversary.send_task(c, m, self.fleet.model(), self.step)
            else:
                adversary.send(c, m)
                if self.loot is not None:
                    self.loot.sent(c, m)
        replies = adversary.replies(messages)
        for c, reply in replies.items():
            if reply is not None and reply.abort is not None:
                self.aborts[c] = reply.abort
        return replies

    def stage(self, tamper: Callable[[int, Message], Message] = lambda c, m: m) -> None:
        """One honest stage, with the attacker's changes to what each client is sent."""
        replies = self.deliver({c: tamper(c, m) for c, m in self.outgoing.items()})
        for c, reply in replies.items():
            message = None if reply is None else reply.message
            if message is not None:
                if self.loot is not None:
                    self.loot.take(c, message)
                self.server.receive(c, reply.frame.protocol)  # type: ignore[union-attr]
        self.outgoing = self.server.close_stage()
        if self.loot is None and self.server.stage is Stage.ADVERTISE:
            self.loot = Loot(self.config, self.server.session.session_id)

    def until(self, stage: Stage) -> None:
        while self.server.stage is not stage:
            self.stage()

    def end(self, included: tuple[int, ...] = ()) -> None:
        """Tell the cohort the round is over (completed if anyone is ``included``)."""
        self.fleet.adversary.end_round(self.cohort, self.config.round_id, included)
        self.fleet.adversary.drain(self.cohort)


def _round(fleet: Fleet, **changes: object) -> Round:
    config = fleet.config(**changes)
    return Round(fleet, config, config.client_ids)


def _refused_at_once(fleet: Fleet, config: RoundConfig, model: bytes | None = None) -> Reply:
    """Send the victim a task; the only answer must be an abort, never a commitment."""
    fleet.adversary.send_task(
        VICTIM, config, fleet.model() if model is None else model, config.round_id
    )
    reply = fleet.adversary.reply(VICTIM)
    assert reply is not None and reply.abort is not None, reply
    assert fleet.adversary.drain([VICTIM]) == []
    return reply


# ---------------------------------------------------------------------------- downgrades
def test_a_task_asking_for_the_plaintext_update_gets_nothing_but_a_refusal(fleet: Fleet) -> None:
    """The old schema's ``Task{secure = false}`` (field 2), written as raw protobuf as a
    coordinator built against it would. The schema has no plaintext frame any more; the client
    refuses the task and never sends its update."""
    round_id = next(fleet.round_ids)
    task = pb.Task(round_id=round_id, model=fleet.model(), step=round_id).SerializeToString()
    for secure in (b"\x10\x00", b"\x10\x01"):  # field 2, varint: false, then true
        legacy = task + secure
        frame = pb.ServerFrame.FromString(b"\x1a" + _varint(len(legacy)) + legacy)
        fleet.adversary.send_frame(VICTIM, frame)
        reply = fleet.adversary.reply(VICTIM)
        assert reply is not None and reply.abort == AbortReason.INVALID_CONFIG
        assert fleet.adversary.drain([VICTIM]) == []
    assert not _plaintext_sent(fleet, VICTIM, round_id)
    fleet.adversary.end_round([VICTIM], round_id)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _downgrades(fleet: Fleet) -> list[tuple[str, dict[str, object], AbortReason]]:
    cases: list[tuple[str, dict[str, object], AbortReason]] = [
        ("threshold 2", {"threshold": 2}, AbortReason.WEAK_GRAPH),
        ("minimum cohort 1", {"min_cohort": 1}, AbortReason.DOWNGRADE),
        ("another dimension", {"dim": DIM + 1}, AbortReason.PARAMETER_MISMATCH),
        ("max weight below the client's", {"max_weight": 1}, AbortReason.PARAMETER_MISMATCH),
        ("a wider ring", {"ring_bits": 40}, AbortReason.PARAMETER_MISMATCH),
        ("another clip", {"clip": 1000.0}, AbortReason.PARAMETER_MISMATCH),
    ]
    if fleet.active:
        cases.append(
            ("semi-honest server model", {"server_model": "semi-honest"}, AbortReason.DOWNGRADE)
        )
    return cases


def test_every_weaker_or_different_configuration_is_refused_before_any_key(fleet: Fleet) -> None:
    before = len(fleet.adversary.sent_up)
    for what, change, reason in _downgrades(fleet):
        config = fleet.config(**change)
        reply = _refused_at_once(fleet, config)
        assert reply.abort == reason, what
        fleet.adversary.end_round([VICTIM], config.round_id)
    # All the victim sent was its refusals: not one commitment, let alone a key.
    sent = [Reply(c, frame) for c, frame in fleet.adversary.sent_up[before:] if c == VICTIM]
    assert len(sent) == len(_downgrades(fleet))
    assert all(reply.abort is not None for reply in sent)


def test_an_invented_cohort_is_refused_in_both_modes(fleet: Fleet) -> None:
    """One victim and ids the allow-list does not know, all played by the server."""
    config = fleet.config((VICTIM, 100, 101, 102, 103, 104, 105, 106))
    assert _refused_at_once(fleet, config).abort == AbortReason.COHORT_NOT_ALLOWED
    fleet.adversary.end_round([VICTIM], config.round_id)


def test_a_model_other_than_the_sessions_or_not_finite_is_refused(fleet: Fleet) -> None:
    config = fleet.config()
    other = encode_model(np.ones(DIM, dtype=np.float32))
    assert _refused_at_once(fleet, config, other).abort == AbortReason.MODEL_MISMATCH
    # A NaN model the session really is bound to: the digest checks out, the values do not.
    nan = encode_model(np.full(DIM, np.nan, dtype=np.float32))
    fresh = fleet.config()
    bound = dataclasses.replace(fresh, task_hash=task_digest(nan, fresh.round_id))
    assert _refused_at_once(fleet, bound, nan).abort == AbortReason.INVALID_MODEL


def test_a_round_the_client_already_took_part_in_is_refused(fleet: Fleet) -> None:
    r = _round(fleet)
    r.stage()  # the victim commits: it has taken part in this round
    r.end()
    again = dataclasses.replace(r.config, nonce=b"\x99" * 16)
    reply = _refused_at_once(fleet, again)
    assert reply.abort == AbortReason.REPLAYED_ROUND


# ---------------------------------------------------------------------------- the session
def test_the_server_cannot_steer_the_session_by_changing_or_dropping_a_contribution(
    fleet: Fleet,
) -> None:
    """Grinding: choose a colluder's contribution after seeing the others', or leave one out."""
    for forge in (
        lambda entries: tuple((c, bytes(32)) if c == 5 else (c, r) for c, r in entries),
        lambda entries: tuple(e for e in entries if e[0] != 5),
        lambda entries: tuple(e for e in entries if e[0] != VICTIM),
    ):
        r = _round(fleet)
        r.stage()  # commit
        r.stage()  # reveal: the server now holds every contribution
        contributions = r.outgoing[VICTIM]
        assert isinstance(contributions, Contributions)
        forged = dataclasses.replace(contributions, entries=forge(contributions.entries))
        reply = r.deliver({VICTIM: forged})[VICTIM]
        assert reply is not None and reply.abort == AbortReason.BAD_CONTRIBUTIONS
        r.end()


def test_every_session_is_fresh_even_for_an_identical_configuration(fleet: Fleet) -> None:
    """The same clients, the same parameters: two sessions with nothing in common."""
    sessions = []
    for _ in range(2):
        r = _round(fleet)
        r.stage()
        r.stage()
        sessions.append(r.server.session.session_id)
        r.end()
    assert sessions[0] != sessions[1]


# ---------------------------------------------------------------------------- the classic attacks
def test_a_split_view_collects_both_shares_of_a_client_only_in_semi_honest_mode(
    fleet: Fleet,
) -> None:
    """Tell some clients the victim survived and the others it dropped."""
    r = _round(fleet)
    r.until(Stage.MASKED_INPUT)
    r.stage()  # masked inputs in (semi-honest: unmask requests next; active: survivor lists)
    assert r.loot is not None and VICTIM in r.loot.masked
    everyone = tuple(range(CLIENTS))
    without = tuple(c for c in everyone if c != VICTIM)
    group_a, group_b = (1, 2, 3), (4, 5, 6, 7)
    sid = r.server.session.session_id
    if fleet.active:
        shown = {c: everyone if c in (VICTIM, *group_a) else without for c in everyone}
        replies = r.deliver({c: SurvivorList(sid, c, shown[c]) for c in everyone})
        signatures = {
            c: reply.message.signature
            for c, reply in replies.items()
            if reply is not None and isinstance(reply.message, ConsistencySignature)
        }
        for group, survivors in ((group_a, everyone), (group_b, without)):
            forwarded = tuple((s, sig) for s, sig in signatures.items() if shown[s] == survivors)
            requests = {
                c: UnmaskRequest(
                    sid,
                    c,
                    tuple(u for u in survivors if u != c),
                    tuple(u for u in everyone if u not in survivors),
                    tuple((s, sig) for s, sig in forwarded if s != c),
                )
                for c in group
            }
            for reply in r.deliver(requests).values():
                assert reply is not None and reply.abort == AbortReason.BELOW_THRESHOLD
    else:
        requests: dict[int, Message] = {}
        for c in group_a:
            requests[c] = UnmaskRequest(sid, c, tuple(u for u in everyone if u != c), ())
        for c in group_b:
            requests[c] = UnmaskRequest(sid, c, tuple(u for u in without if u != c), (VICTIM,))
        for c, reply in r.deliver(requests).items():
            assert reply is not None and reply.message is not None
            r.loot.take(c, reply.message)
    recovered = _recovered(r.loot, VICTIM, r.step, fleet.params)
    # Semi-honest mode trusts the server's dropout lists: the attack works (THREAT_MODEL.md).
    assert recovered is (not fleet.active)
    r.end()


def test_substituted_public_keys_open_a_victims_shares_only_in_semi_honest_mode(
    fleet: Fleet,
) -> None:
    """Give the victim attacker-made keys for four of its peers."""
    r = _round(fleet)
    r.until(Stage.ADVERTISE)
    r.stage()  # advertise: the server's PeerKeys are next
    assert r.loot is not None
    forged = {
        u: (
            X25519KeyPair.generate(DeterministicRandomness(bytes([u]) * 32)),
            X25519KeyPair.generate(DeterministicRandomness(bytes([u + 100]) * 32)),
        )
        for u in (1, 2, 3, 4)
    }

    def substitute(c: int, m: Message) -> Message:
        if c != VICTIM or not isinstance(m, PeerKeys):
            return m
        entries = tuple(
            PeerKeyEntry(
                e.client_id,
                forged[e.client_id][0].public,
                forged[e.client_id][1].public,
                e.signature,
            )
            if e.client_id in forged
            else e
            for e in m.peers
        )
        return dataclasses.replace(m, peers=entries)

    r.stage(substitute)  # share
    if fleet.active:
        assert r.aborts.get(VICTIM) == AbortReason.BAD_SIGNATURE
        assert VICTIM not in r.loot.sealed
        r.end()
        return
    sid = r.server.session.session_id
    victim_cipher = r.loot.adverts[VICTIM].cipher_public
    for u, (cipher, _) in forged.items():
        key = derive.share_encryption_key(
            cipher.exchange(victim_cipher), sid, VICTIM, victim_cipher, u, cipher.public
        )
        plain = aead.open_sealed(
            key, r.loot.sealed[VICTIM][u], derive.share_associated_data(sid, VICTIM, u)
        )
        _, _, seed_share, key_share = derive.decode_share_plaintext(plain)
        x = derive.share_x(u)
        r.loot.self_mask_shares.setdefault(VICTIM, {})[u] = Share.from_value_bytes(x, seed_share)
        r.loot.key_shares.setdefault(VICTIM, {})[u] = Share.from_value_bytes(x, key_share)
    r.stage()  # masked input
    # The victim's own pairwise masks with the forged peers use keys the attacker made.
    for u, (_, mask) in forged.items():
        r.loot.adverts[u] = dataclasses.replace(r.loot.adverts[u], mask_public=mask.public)
    # Semi-honest mode cannot tell a substituted key from a real one (THREAT_MODEL.md).
    assert _recovered(r.loot, VICTIM, r.step, fleet.params)
    r.end()


def test_asking_for_both_shares_of_a_peer_or_listing_the_client_as_dropped_is_refused(
    fleet: Fleet,
) -> None:
    for forge, reason in (
        (
            lambda m: dataclasses.replace(m, dropped=(*m.dropped, m.survivors[0])),
            AbortReason.BOTH_SHARES_REQUESTED,
        ),
        (
            lambda m: dataclasses.replace(m, dropped=(*m.dropped, VICTIM)),
            AbortReason.LISTED_AS_DROPPED,
        ),
    ):
        r = _round(fleet)
        r.until(Stage.UNMASK)
        request = r.outgoing[VICTIM]
        assert isinstance(request, UnmaskRequest)
        reply = r.deliver({VICTIM: forge(request)})[VICTIM]
        assert reply is not None and reply.abort == reason
        assert r.loot is not None and VICTIM not in {
            holder for shares in r.loot.self_mask_shares.values() for holder in shares
        }
        assert not _recovered(r.loot, VICTIM, r.step, fleet.params)
        r.end()


# ---------------------------------------------------------------------------- crash attempts
def test_junk_and_stray_frames_never_crash_a_client(fleet: Fleet) -> None:
    r = _round(fleet)
    r.stage()  # commit
    adversary = fleet.adversary
    for frame in (
        pb.ServerFrame(),
        pb.ServerFrame(challenge=pb.Challenge(nonce=b"x" * 32)),
        pb.ServerFrame(welcome=pb.Welcome(client_id=9, max_message_bytes=1)),
        pb.ServerFrame(round_end=pb.RoundEnd(round_id=10**12, completed=True)),
    ):
        adversary.send_frame(VICTIM, frame)
    assert adversary.replies([VICTIM], 1.0)[VICTIM] is None  # ignored, and still in the round
    reply = r.deliver({VICTIM: b"\x00 not a message"})[VICTIM]  # type: ignore[dict-item]
    assert reply is not None and reply.abort == AbortReason.MALFORMED_MESSAGE
    r.end()
    assert fleet.processes[VICTIM].poll() is None


def test_a_coordinator_that_goes_silent_is_left_at_the_clients_own_deadline(fleet: Fleet) -> None:
    r = _round(fleet)
    r.stage()  # everyone committed; the coordinator now says nothing
    replies = fleet.adversary.replies(r.cohort, CLIENT_STAGE_TIMEOUT + 10)
    assert {c: reply.abort if reply else None for c, reply in replies.items()} == dict.fromkeys(
        r.cohort, AbortReason.STAGE_TIMEOUT.value
    )
    r.end()


# ---------------------------------------------------------------------------- and afterwards
def test_after_every_attack_every_client_is_alive_and_completes_an_honest_round(
    fleet: Fleet,
) -> None:
    r = _round(fleet)
    while not r.server.done:
        r.stage()
    result = r.server.result
    assert_exact_mean(result, fleet.params, CLIENTS, DIM, r.step)
    r.end(included=result.included)
    assert all(p.poll() is None for p in fleet.processes.values())
    logs = fleet.logs()
    assert "Traceback" not in logs
    # Every client's audit line for the round: what it agreed to and how the round ended.
    audit = (
        f"round {r.config.round_id}: server model {fleet.mode.value}, secagg "
        f"k=7 t={r.config.threshold}, cohort 8, min cohort 4: included; answered the unmask request"
    )
    assert logs.count(audit) == CLIENTS
    for c in range(CLIENTS):
        assert not _plaintext_sent(fleet, c, r.step)
