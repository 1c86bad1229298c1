"""The harness of the scheme contract suite (``test_contract.py``): the schemes it runs, and
one in-memory transport that drives a round of any of them through the round engine.

A new scheme joins the suite with one ``Contender`` line in ``CONTENDERS``: how to build it,
its cohort, and which silence it cannot survive. Everything else the suite asks of a scheme
it learns from the scheme itself (its stages, its configuration, what its server sends) or
from the round (which message uses a client's input, which messages travel).

The transport is the simulator's, cut to what a test needs: every message is encoded,
metered and decoded on the other side; a client is given its input up front; randomness is
deterministic (every client's forks from one seed, as ``tests/protocol`` seeds its
harness); the engine's clock ticks once per read, so stage times are counts, never wall time.
A client can be made silent from a stage on, or made to send something else than its answer
once, or more besides it (``Misbehaviour``); an id outside the cohort can send at every stage.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg import Params
from secagg.errors import AbortReason, ClientAbort
from secagg.hazmat.keys import Ed25519SigningKey
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.protocol.codec import Message, decode
from secagg.protocol.runner import RoundListener, RoundRecord, RoundRun
from secagg.protocol.stages import Drop, Stage
from secagg.schemes.base import Scheme
from secagg.schemes.masking import MaskingScheme
from secagg.schemes.plaintext import PlaintextScheme

__all__ = [
    "CONTENDERS",
    "DIM",
    "MAX_WEIGHT",
    "Contender",
    "Misbehaviour",
    "Round",
    "another_round",
    "honest_rounds",
    "run_round",
]

DIM = 16
MAX_WEIGHT = 3
SEED = b"secagg/tests/schemes/contract"

# Which clients a silence or a misbehaviour picks among those a stage's messages went to.
Pick = Callable[[Message, Sequence[int]], Collection[int]]


def highest(config: Message, recipients: Sequence[int]) -> Collection[int]:
    """The client with the highest id (for CKKS, never the first key holder)."""
    del config
    return (max(recipients),)


@dataclass(frozen=True)
class Contender:
    """One scheme in the suite.

    ``build`` makes the scheme (once: it is cached); ``n`` is the cohort. ``fatal`` names,
    for a stage and the clients its messages went to, a silence the scheme cannot survive
    (its round must abort with no aggregate); ``tolerates`` says in words what it can.
    """

    name: str
    build: Callable[[], Scheme]
    n: int
    fatal: Callable[[Message, Stage, Sequence[int]], Collection[int]]
    tolerates: str
    needs: str | None = None  # a module the scheme needs; without it the scheme is skipped
    max_weight: int = MAX_WEIGHT  # the clients' weights are 1 .. max_weight

    @functools.cached_property
    def scheme(self) -> Scheme:
        return self.build()


def _masking(**overrides: object) -> Callable[[], Scheme]:
    def build() -> Scheme:
        if overrides.get("dp") == "dp":
            from secagg.dp.calibrate import DpConfig

            overrides["dp"] = DpConfig(
                dim=DIM,
                l2_clip=1.0,
                bits=20,
                min_clients=3,
                max_clients=8,
                delta=1e-5,
                target_epsilon=10.0,
            )
        overrides.setdefault("max_weight", MAX_WEIGHT)
        params = Params(dim=DIM, max_clients=8, **overrides)  # type: ignore[arg-type]
        if not params.active:
            return MaskingScheme(params)
        root = DeterministicRandomness(hashlib.sha256(SEED + b"/identities").digest())
        identities = {i: Ed25519SigningKey.generate(root.fork(f"identity/{i}")) for i in range(8)}
        return MaskingScheme(
            params, identities=identities, pki={i: k.public for i, k in identities.items()}
        )

    return build


def _masking_fatal(config: Message, stage: Stage, to: Sequence[int]) -> list[int]:
    """All but t - 1 of those asked: no secret can be rebuilt, no sum certified."""
    del stage
    threshold = getattr(config, "threshold")  # noqa: B009  (masking's RoundConfig)
    return sorted(to)[threshold - 1 :]


def _ckks() -> Scheme:
    from secagg.hazmat import ckks
    from secagg.schemes.ckks import CkksScheme, simulated_keys

    # The smallest ring with 128-bit security: the contract is about the protocol, not SEAL.
    params = ckks.CkksParameters(4096, (40, 20, 40), 20)
    client, server = simulated_keys(params)
    return CkksScheme(
        dim=DIM,
        max_weight=MAX_WEIGHT,
        clip=1.0,
        min_cohort=3,
        params=params,
        client_context=client,
        server_context=server,
        key_holders=2,
    )


def _ckks_fatal(config: Message, stage: Stage, to: Sequence[int]) -> list[int]:
    """Every key holder: nobody is left who can decrypt the sum."""
    if stage is Stage.UPLOAD:
        return list(getattr(config, "key_holders"))  # noqa: B009  (CKKS's CkksConfig)
    return list(to)


def _plaintext_fatal(config: Message, stage: Stage, to: Sequence[int]) -> list[int]:
    """All but min_cohort - 1 of the cohort: no sum of fewer is revealed."""
    del stage
    return sorted(to)[getattr(config, "min_cohort") - 1 :]  # noqa: B009


CONTENDERS: tuple[Contender, ...] = (
    Contender(
        "secagg",
        _masking(protocol="secagg"),
        6,
        _masking_fatal,
        "any dropout that leaves t = 4 of 6 at every stage",
    ),
    Contender(
        "secagg+",
        _masking(protocol="secagg+", degree=4, threshold=3),
        8,
        _masking_fatal,
        "any dropout that leaves t = 3 of each client's 4 neighbours",
    ),
    Contender(
        "secagg-active",
        _masking(protocol="secagg", server_model="semi-malicious"),
        6,
        _masking_fatal,
        "any dropout that leaves t = 4 of 6 at every stage, consistency included",
    ),
    Contender(
        "secagg-dp",
        _masking(protocol="secagg", max_weight=1, min_cohort=3, dp="dp"),
        6,
        _masking_fatal,
        "as SecAgg: any dropout that leaves t = 4 of 6 (distributed DP noise, unweighted)",
        max_weight=1,
    ),
    Contender(
        "ckks",
        _ckks,
        5,
        _ckks_fatal,
        "any dropout but the last key holder's (2 of 5 hold the key)",
        needs="tenseal",
    ),
    Contender(
        "plaintext",
        lambda: PlaintextScheme(dim=DIM, max_weight=MAX_WEIGHT, min_cohort=3),
        5,
        _plaintext_fatal,
        "any dropout that leaves min_cohort = 3 uploads",
    ),
)


@dataclass(frozen=True)
class Misbehaviour:
    """What one client sends once, at the first time ``stage`` runs, instead of its answer;
    it is silent afterwards (unless told otherwise). ``make`` gets the client's id, its own
    answer (encoded) and every other answer of the stage by sender; it returns the bytes
    sent (or several messages, sent in order)."""

    stage: Stage
    pick: Pick
    make: Callable[[int, bytes, Mapping[int, bytes]], bytes | Sequence[bytes]]
    silent_after: bool = True  # False: the client goes on answering as if nothing happened


@dataclass
class Round:
    """What a round did, as the transport and the engine's listener saw it."""

    config: Message
    record: RoundRecord
    inputs: Mapping[int, NDArray[np.float64]]
    weights: Mapping[int, int]
    opened: list[Stage] = field(default_factory=list)
    heard: list[Drop] = field(default_factory=list)
    down: list[tuple[Stage, int, Message]] = field(default_factory=list)
    up: list[tuple[Stage, int, Message]] = field(default_factory=list)
    gone: dict[int, Stage] = field(default_factory=dict)  # silent from, by client
    contributed: set[int] = field(default_factory=set)  # clients that used their input
    input_stage: Stage | None = None  # the stage whose answer carries the input
    client_aborts: dict[int, AbortReason] = field(default_factory=dict)
    misbehaved: int | None = None

    def exact_mean(self, scheme: Scheme, ids: Collection[int]) -> NDArray[np.float64]:
        """The weighted mean of ``ids``' inputs, as the scheme clips them."""
        total = np.zeros(DIM)
        for i in ids:
            total += self.weights[i] * scheme.reference(self.inputs[i])
        return total / sum(self.weights[i] for i in ids)


class _Listener(RoundListener):
    def __init__(self, trace: list[Stage], heard: list[Drop]) -> None:
        self._opened = trace
        self._heard = heard

    def stage_opened(self, stage: Stage) -> None:
        self._opened.append(stage)

    def dropped(self, drop: Drop) -> None:
        self._heard.append(drop)


def _inputs(n: int, max_weight: int) -> tuple[dict[int, NDArray[np.float64]], dict[int, int]]:
    """Client i's update: DIM float32 values in (-1, 1), weight 1..max_weight, from the seed."""
    root = DeterministicRandomness(hashlib.sha256(SEED + b"/inputs").digest())
    inputs, weights = {}, {}
    for i in range(n):
        words = root.fork(f"input/{i}").words(DIM + 1)
        values = words[:DIM].astype(np.float64) * (2.0 / 2**32) - 1.0
        inputs[i] = values.astype(np.float32).astype(np.float64)
        weights[i] = 1 + int(words[DIM]) % max_weight
    return inputs, weights


def run_round(
    contender: Contender,
    *,
    silent: Mapping[Stage, Pick] | None = None,
    misbehaviour: Misbehaviour | None = None,
    label: str = "",
    stranger: int | None = None,
) -> Round:
    """One round of ``contender``'s scheme through the engine.

    ``silent[stage]`` picks clients, among those the stage's messages first go to, that
    answer nothing from that stage on (a stage that runs again, such as a second commit,
    finds them still silent). ``label`` names another round of the same cohort (another
    nonce, so another configuration and session). ``stranger``, an id outside the cohort,
    sends junk and a copy of every answer, before the cohort answers, at every stage."""
    scheme = contender.scheme
    silent = dict(silent or {})
    root = DeterministicRandomness(
        hashlib.sha256(f"{SEED.decode()}/round/{contender.name}/{label}".encode()).digest()
    )
    config = scheme.round_config(range(contender.n), nonce=root.bytes(16))
    inputs, weights = _inputs(contender.n, contender.max_weight)
    clients = {}
    for i in range(contender.n):
        scheme.check(config, i)
        clients[i] = scheme.client(config, i, root.fork(f"client/{i}"))
        clients[i].set_input(inputs[i], weights[i])
    clock = itertools.count(0.0, 1.0)
    opened: list[Stage] = []
    heard: list[Drop] = []
    run = RoundRun(
        scheme.server(config), listener=_Listener(opened, heard), clock=lambda: next(clock)
    )
    result = Round(config, None, inputs, weights, opened, heard)  # type: ignore[arg-type]
    seen: set[Stage] = set()
    for stage, outgoing in run.stages():
        first = stage not in seen
        seen.add(stage)
        live = sorted(i for i in outgoing if i not in result.gone)
        if first and stage in silent:
            for i in silent.pop(stage)(config, live):
                result.gone[i] = stage
        bad: int | None = None
        if first and misbehaviour is not None and misbehaviour.stage is stage:
            (bad,) = misbehaviour.pick(config, [i for i in live if i not in result.gone])
        answers: dict[int, bytes] = {}
        sent: dict[int, tuple[bytes, ...]] = {}  # what a misbehaving client sends instead
        for i, message in outgoing.items():
            data = message.encode()
            run.meter.sent(i, len(data))
            received = decode(data)
            result.down.append((stage, i, received))
            if i in result.gone:
                continue
            try:
                uses_input = clients[i].needs_input(received)
                reply = clients[i].receive(received)
            except ClientAbort as exc:
                result.client_aborts[i] = exc.reason
                result.gone[i] = stage
                continue
            if uses_input:
                result.contributed.add(i)
                result.input_stage = stage
            if reply is not None:
                answers[i] = reply.encode()
        if bad is not None and bad in answers:
            assert misbehaviour is not None
            others = {i: a for i, a in answers.items() if i != bad}
            made = misbehaviour.make(bad, answers[bad], others)
            sent[bad] = (made,) if isinstance(made, bytes) else tuple(made)
            result.misbehaved = bad
        if stranger is not None:
            for data in (b"junk", *answers.values()):
                run.server.receive(stranger, data)
        for i, answer in sorted(answers.items()):
            if i != bad:
                result.up.append((stage, i, decode(answer)))
            for part in sent.get(i, (answer,)):
                run.meter.received(i, len(part))
                run.server.receive(i, part)  # never raises because of a client
        if bad is not None and misbehaviour is not None and misbehaviour.silent_after:
            result.gone[bad] = stage
    result.record = run.record
    return result


@functools.cache
def honest_rounds(name: str) -> tuple[Round, ...]:
    """The contender's honest round, then one round per stage with a client silent from it
    (the messages a round sends only when someone drops, such as a second commit request)."""
    (contender,) = (c for c in CONTENDERS if c.name == name)
    rounds = [run_round(contender)]
    for stage in contender.scheme.stages:
        rounds.append(run_round(contender, silent={stage: highest}))
    return tuple(rounds)


@functools.cache
def another_round(name: str) -> Round:
    """The contender's honest round of the same cohort under another nonce: its messages
    belong to another configuration and session."""
    (contender,) = (c for c in CONTENDERS if c.name == name)
    return run_round(contender, label="another")
