"""The coordinator's Prometheus metrics: what a scrape of the endpoint shows after real rounds.

Rounds here are real sans-I/O rounds (real clients, a real ``Server``, real encoded messages),
metered the way the coordinator meters its streams; the endpoint is scraped over a real socket
and the text exposition parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families

from secagg import __version__
from secagg.errors import ConfigurationError, DropReason, RoundAborted, UsageError
from secagg.hazmat import prg
from secagg.protocol.codec import Message
from secagg.protocol.runner import RoundOutcome
from secagg.schemes.masking.messages import AdvertiseKeys, PeerKeys, RoundConfig
from secagg.schemes.masking.server import Server, Stage
from secagg.service.metrics import (
    DURATION_BUCKETS,
    NEEDS_EXTRA,
    CoordinatorMetrics,
    Direction,
    MessageType,
    Metrics,
    MetricsEndpoint,
    NullMetrics,
    frame_message_type,
    protocol_message_type,
    serve_metrics,
)
from secagg.service.v1 import coordinator_pb2 as pb
from tests.protocol.harness import Harness

# Six clients, threshold 3. Client 12345 goes silent at the share stage; client 77 sends junk
# instead of its masked input.
IDS = (3, 77, 1000, 12345, 40001, 65000)
SILENT_CLIENT = 12345
JUNK_CLIENT = 77
JUNK = b"not a secagg message"
# Ids long enough that finding one in the text would mean it was exported (a "3" is in "3.11").
LONG_IDS = (12345, 40001, 65000)

# What each message class is called in the metrics: the spec of the ``type`` label.
LABEL_OF = {
    "AdvertiseKeys": ("up", "advertise-keys"),
    "EncryptedShares": ("up", "encrypted-shares"),
    "Commitment": ("up", "commitment"),
    "Reveal": ("up", "reveal"),
    "CommitmentDigest": ("down", "commitment-digest"),
    "Contributions": ("down", "contributions"),
    "MaskedInput": ("up", "masked-input"),
    "ConsistencySignature": ("up", "consistency-signature"),
    "UnmaskResponse": ("up", "unmask-response"),
    "junk": ("up", "malformed"),
    "PeerKeys": ("down", "peer-keys"),
    "PeerShares": ("down", "peer-shares"),
    "SurvivorList": ("down", "survivor-list"),
    "UnmaskRequest": ("down", "unmask-request"),
}


# ------------------------------------------------------------------ a metered round


@dataclass
class Seen:
    """What the test itself observed while driving a round, to compare the scrape with."""

    bytes: Counter[str] = field(default_factory=Counter)  # by class name (or "junk")
    messages: Counter[str] = field(default_factory=Counter)
    responses: Counter[str] = field(default_factory=Counter)  # by stage
    stage_seconds: dict[str, float] = field(default_factory=dict)
    unmasking: float = 0.0
    reconstruction: float = 0.0
    aborted: bool = False


class _Ticks:
    """A clock that advances 0.125 s per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.125
        return self.now


def run_metered_round(
    harness: Harness,
    metrics: Metrics,
    *,
    silent: Mapping[Stage, Sequence[int]] = {},
    junk: Mapping[Stage, Sequence[int]] = {},
    after_stage: Callable[[Stage], None] = lambda stage: None,
) -> Seen:
    """Drive one round stage by stage, recording into ``metrics`` what the coordinator would.

    Durations come from a clock that ticks an eighth of a second per reading, never from wall
    time: each is then an exact count of readings, and a sum of them is exact in binary."""
    seen = Seen()
    clock = _Ticks()
    mask_seconds: list[float] = []

    # The server regenerates masks through the callable it is given: clocking it separates
    # unmasking from the rest of the unmask stage's close_stage(), which is the Shamir
    # reconstruction of the dropped clients' keys and survivors' seeds (and its share checks).
    def timed_apply_masks(total: NDArray[np.unsignedinteger], masks: Sequence[prg.Mask]) -> None:
        t0 = clock()
        prg.apply_masks(total, masks)
        mask_seconds.append(clock() - t0)

    server = harness.server = Server(harness.config, apply_masks=timed_apply_masks)
    metrics.round_started()
    outgoing: Mapping[int, Message] = server.start()
    recorded: set[int] = set()
    while not server.done:
        stage = server.stage
        started = clock()
        expected = server.waiting_for()
        for client_id, message in outgoing.items():
            if not isinstance(message, RoundConfig):  # the config travels inside a Task
                data = message.encode()
                metrics.message_bytes(
                    Direction.DOWN, protocol_message_type(data, Direction.DOWN), len(data)
                )
                seen.bytes[type(message).__name__] += len(data)
                seen.messages[type(message).__name__] += 1
            if client_id in silent.get(stage, ()):
                continue
            if client_id in junk.get(stage, ()):
                data, kind = JUNK, "junk"
            else:
                reply = harness.respond(client_id, message)
                data, kind = reply.encode(), type(reply).__name__
            metrics.message_bytes(
                Direction.UP, protocol_message_type(data, Direction.UP), len(data)
            )
            metrics.client_responded(stage, clock() - started)
            seen.bytes[kind] += len(data)
            seen.messages[kind] += 1
            seen.responses[stage.value] += 1
            server.receive(client_id, data)
        answered = len(expected - server.waiting_for() - server.drops.keys())
        closing = clock()
        try:
            outgoing = server.close_stage()
        except RoundAborted:
            seen.aborted = True
        closed = clock()
        seen.stage_seconds[stage.value] = closed - started
        metrics.stage_finished(stage, closed - started, len(expected), answered)
        for drop in server.drops.values():
            if drop.client_id not in recorded:
                recorded.add(drop.client_id)
                metrics.client_dropped(drop.stage, drop.reason)
        if stage is Stage.UNMASK and not seen.aborted:
            seen.unmasking = sum(mask_seconds)
            seen.reconstruction = (closed - closing) - seen.unmasking
            metrics.unmasking_seconds(seen.unmasking)
            metrics.reconstruction_seconds(seen.reconstruction)
        after_stage(stage)
        if seen.aborted:
            break
    metrics.round_finished(RoundOutcome.ABORTED if seen.aborted else RoundOutcome.COMPLETED)
    return seen


# ------------------------------------------------------------------ scraping


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(endpoint: MetricsEndpoint) -> str:
    with urllib.request.urlopen(endpoint.url, timeout=5) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "text/plain"
        text: str = response.read().decode()
        return text


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def metrics() -> CoordinatorMetrics:
    return CoordinatorMetrics()


@pytest.fixture
def endpoint(metrics: CoordinatorMetrics) -> Iterator[MetricsEndpoint]:
    with serve_metrics(metrics, "127.0.0.1", 0) as running:
        yield running


# ------------------------------------------------------------------ a scrape after real rounds


def test_a_scrape_after_a_completed_and_an_aborted_round_reports_exactly_what_happened(
    metrics: CoordinatorMetrics, endpoint: MetricsEndpoint
) -> None:
    assert endpoint.port > 0
    metrics.clients_connected(len(IDS))
    mid_round: list[Samples] = []

    def scrape_after_share(stage: Stage) -> None:
        if stage is Stage.SHARE:
            mid_round.append(parse(scrape(endpoint)))

    seen = run_metered_round(
        Harness(ids=IDS, agree=False),
        metrics,
        silent={Stage.SHARE: [SILENT_CLIENT]},
        junk={Stage.MASKED_INPUT: [JUNK_CLIENT]},
        after_stage=scrape_after_share,
    )
    assert not seen.aborted

    # Mid-round: one round started, none finished, only the stages reached so far.
    (during,) = mid_round
    assert value(during, "secagg_rounds_started_total") == 1
    assert value(during, "secagg_rounds_total", outcome="completed") == 0
    assert {dict(labels)["stage"] for labels in series(during, "secagg_stage_clients")} == {
        "commit",
        "reveal",
        "advertise",
        "share",
    }

    first = parse(scrape(endpoint))
    assert value(first, "secagg_rounds_total", outcome="completed") == 1
    assert value(first, "secagg_rounds_total", outcome="aborted") == 0
    assert value(first, "secagg_connected_clients") == 6
    stage_clients = {
        (dict(labels)["stage"], dict(labels)["status"]): v
        for labels, v in series(first, "secagg_stage_clients").items()
    }
    assert stage_clients == {
        ("commit", "expected"): 6,
        ("commit", "answered"): 6,
        ("reveal", "expected"): 6,
        ("reveal", "answered"): 6,
        ("advertise", "expected"): 6,
        ("advertise", "answered"): 6,
        ("share", "expected"): 6,
        ("share", "answered"): 5,  # 12345 was silent
        ("masked-input", "expected"): 5,
        ("masked-input", "answered"): 4,  # 77 sent junk
        ("unmask", "expected"): 4,
        ("unmask", "answered"): 4,
    }
    drops = {
        (dict(labels)["stage"], dict(labels)["reason"]): v
        for labels, v in series(first, "secagg_client_drops_total").items()
    }
    assert drops == {("share", "missed-share"): 1, ("masked-input", "malformed"): 1}

    # Bytes and message counts by direction and type: exactly the encoded messages sent.
    assert seen.messages == {
        "Commitment": 6,
        "CommitmentDigest": 6,
        "Reveal": 6,
        "Contributions": 6,
        "AdvertiseKeys": 6,
        "PeerKeys": 6,
        "EncryptedShares": 5,
        "PeerShares": 5,
        "MaskedInput": 4,
        "junk": 1,
        "UnmaskRequest": 4,
        "UnmaskResponse": 4,
    }
    for kind, size in seen.bytes.items():
        direction, label = LABEL_OF[kind]
        assert value(first, "secagg_message_bytes_total", direction=direction, type=label) == size
        assert value(first, "secagg_message_size_bytes_sum", direction=direction, type=label) == (
            size
        )
        assert (
            value(first, "secagg_message_size_bytes_count", direction=direction, type=label)
            == (seen.messages[kind])
        )
    assert len(series(first, "secagg_message_bytes_total")) == len(seen.bytes)

    # Durations: one observation per stage, summing to what the driver measured; response
    # times pooled over the clients that answered.
    for stage, seconds in seen.stage_seconds.items():
        assert value(first, "secagg_stage_duration_seconds_count", stage=stage) == 1
        assert value(first, "secagg_stage_duration_seconds_sum", stage=stage) == seconds
    for stage, count in seen.responses.items():
        assert value(first, "secagg_client_response_seconds_count", stage=stage) == count
    assert seen.unmasking > 0
    assert value(first, "secagg_unmasking_seconds_count") == 1
    assert value(first, "secagg_unmasking_seconds_sum") == seen.unmasking
    assert value(first, "secagg_shamir_reconstruction_seconds_count") == 1
    assert value(first, "secagg_shamir_reconstruction_seconds_sum") == seen.reconstruction

    # A second round: four clients never advertise, the round cannot reach the threshold.
    seen = run_metered_round(
        Harness(ids=IDS, agree=False, round_id=1, seed=2),
        metrics,
        silent={Stage.ADVERTISE: [3, 77, 1000, SILENT_CLIENT]},
    )
    assert seen.aborted
    second = parse(scrape(endpoint))
    assert value(second, "secagg_rounds_started_total") == 2
    assert value(second, "secagg_rounds_total", outcome="completed") == 1
    assert value(second, "secagg_rounds_total", outcome="aborted") == 1
    # The stage gauges now describe the aborted round only: it never reached share.
    assert series(second, "secagg_stage_clients") == {
        frozenset({("stage", "commit"), ("status", "expected")}): 6,
        frozenset({("stage", "commit"), ("status", "answered")}): 6,
        frozenset({("stage", "reveal"), ("status", "expected")}): 6,
        frozenset({("stage", "reveal"), ("status", "answered")}): 6,
        frozenset({("stage", "advertise"), ("status", "expected")}): 6,
        frozenset({("stage", "advertise"), ("status", "answered")}): 2,
    }
    drops = {
        (dict(labels)["stage"], dict(labels)["reason"]): v
        for labels, v in series(second, "secagg_client_drops_total").items()
    }
    assert drops == {
        ("share", "missed-share"): 1,
        ("masked-input", "malformed"): 1,
        ("advertise", "missed-advertise"): 4,
        ("advertise", "too-few-neighbours"): 2,  # the two that spoke had too few live peers
    }
    assert value(second, "secagg_stage_duration_seconds_count", stage="advertise") == 2
    assert value(second, "secagg_unmasking_seconds_count") == 1  # an aborted round unmasks nothing


def test_no_client_id_appears_anywhere_in_the_scrape(
    metrics: CoordinatorMetrics, endpoint: MetricsEndpoint
) -> None:
    run_metered_round(
        Harness(ids=IDS, agree=False),
        metrics,
        silent={Stage.SHARE: [SILENT_CLIENT]},
        junk={Stage.MASKED_INPUT: [JUNK_CLIENT]},
    )
    text = scrape(endpoint)
    for line in text.splitlines():
        # Comments whole; samples up to their value (a measured float such as a process
        # start time may contain any digits, so values are checked as numbers below).
        shown = line if line.startswith("#") else line.rsplit(" ", 1)[0]
        for client_id in LONG_IDS:
            assert str(client_id) not in shown, line
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert "client_id" not in sample.labels and "client" not in sample.labels
            if sample.name.startswith("secagg_"):
                assert sample.value not in {float(c) for c in LONG_IDS}, sample


def test_every_metric_follows_the_prometheus_naming_conventions(
    metrics: CoordinatorMetrics,
) -> None:
    run_metered_round(Harness(ids=IDS, agree=False), metrics, silent={Stage.SHARE: [SILENT_CLIENT]})
    metrics.clients_connected(6)
    families = {
        f.name: f
        for f in text_string_to_metric_families(metrics.exposition().decode())
        if f.name.startswith("secagg_")
    }
    allowed_labels = {"outcome", "stage", "status", "reason", "direction", "type", "le"}
    expected_types = {
        "secagg_build_info": "gauge",
        "secagg_rounds_started": "counter",
        "secagg_rounds": "counter",
        "secagg_stage_duration_seconds": "histogram",
        "secagg_stage_clients": "gauge",
        "secagg_client_response_seconds": "histogram",
        "secagg_client_drops": "counter",
        "secagg_message_bytes": "counter",
        "secagg_message_size_bytes": "histogram",
        "secagg_unmasking_seconds": "histogram",
        "secagg_shamir_reconstruction_seconds": "histogram",
        "secagg_connected_clients": "gauge",
    }
    for name, kind in expected_types.items():
        assert families[name].type == kind, name
    for name, family in families.items():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
        if name != "secagg_build_info":
            for sample in family.samples:
                assert set(sample.labels) <= allowed_labels, sample


def test_build_info_carries_the_package_version(
    metrics: CoordinatorMetrics, endpoint: MetricsEndpoint
) -> None:
    (info,) = series(parse(scrape(endpoint)), "secagg_build_info").items()
    labels, one = info
    assert dict(labels)["version"] == __version__
    assert dict(labels)["python"] == ".".join(map(str, sys.version_info[:3]))
    assert one == 1


def test_stage_durations_are_bucketed_from_a_millisecond_to_ten_minutes(
    metrics: CoordinatorMetrics,
) -> None:
    metrics.stage_finished(Stage.ADVERTISE, 0.0004, 3, 3)
    metrics.stage_finished(Stage.ADVERTISE, 599.0, 3, 3)
    metrics.stage_finished(Stage.ADVERTISE, 900.0, 3, 3)
    buckets = {
        dict(labels)["le"]: v
        for labels, v in series(
            parse(metrics.exposition().decode()), "secagg_stage_duration_seconds_bucket"
        ).items()
    }
    assert DURATION_BUCKETS[0] == 0.001 and DURATION_BUCKETS[-1] == 600.0
    assert buckets["0.001"] == 1  # 0.4 ms
    assert buckets["300.0"] == 1
    assert buckets["600.0"] == 2  # 599 s
    assert buckets["+Inf"] == 3  # 15 min: beyond any sensible deadline, still counted


@pytest.mark.skipif(sys.platform != "linux", reason="the process collector reads /proc")
def test_the_process_collector_reports_this_process(metrics: CoordinatorMetrics) -> None:
    samples = parse(metrics.exposition().decode())
    assert value(samples, "process_resident_memory_bytes") > 1 << 20


# ------------------------------------------------------------------ closed label sets


REFUSED: list[tuple[str, Callable[[Metrics], None]]] = [
    ("a client id as stage", lambda m: m.client_dropped("12345", DropReason.MISSED_SHARE)),
    ("a client id as reason", lambda m: m.client_dropped(Stage.SHARE, "12345")),
    ("an int as stage", lambda m: m.client_dropped(12345, "missed-share")),  # type: ignore[arg-type]
    ("a final state as stage", lambda m: m.client_dropped(Stage.COMPLETED, "missed-share")),
    ("an unknown stage", lambda m: m.stage_finished("completed", 0.1, 3, 3)),
    ("a client id as type", lambda m: m.message_bytes("up", "client-12345", 10)),
    ("a sideways direction", lambda m: m.message_bytes("sideways", "hello", 10)),
    ("a down type sent up", lambda m: m.message_bytes(Direction.UP, MessageType.TASK, 10)),
    ("an up type sent down", lambda m: m.message_bytes("down", "masked-input", 10)),
    ("a negative size", lambda m: m.message_bytes("up", "hello", -1)),
    ("a float size", lambda m: m.message_bytes("up", "hello", 1.5)),  # type: ignore[arg-type]
    ("running as an outcome", lambda m: m.round_finished(RoundOutcome.RUNNING)),
    ("an unknown outcome", lambda m: m.round_finished("crashed")),
    ("more answers than expected", lambda m: m.stage_finished("share", 0.1, 3, 4)),
    ("a bool as a count", lambda m: m.stage_finished("share", 0.1, True, 0)),
    ("negative seconds", lambda m: m.unmasking_seconds(-0.5)),
    ("infinite seconds", lambda m: m.reconstruction_seconds(float("inf"))),
    ("nan seconds", lambda m: m.client_responded("share", float("nan"))),
    ("negative connected clients", lambda m: m.clients_connected(-1)),
]


@pytest.mark.parametrize(("what", "call"), REFUSED, ids=[what for what, _ in REFUSED])
def test_a_label_or_value_outside_its_closed_set_is_refused_and_records_nothing(
    what: str, call: Callable[[Metrics], None], metrics: CoordinatorMetrics
) -> None:
    before = parse(metrics.exposition().decode())
    with pytest.raises(UsageError):
        call(metrics)
    after = parse(metrics.exposition().decode())
    assert {k: v for k, v in after.items() if k[0].startswith("secagg_")} == {
        k: v for k, v in before.items() if k[0].startswith("secagg_")
    }
    # The null recorder is held to the same sets, so a coordinator tested without the extra
    # still cannot pass a client id as a label.
    with pytest.raises(UsageError):
        call(NullMetrics())


def test_the_refusal_names_the_allowed_values() -> None:
    with pytest.raises(UsageError) as info:
        CoordinatorMetrics().client_dropped("client-12345", "missed-share")
    assert str(info.value) == (
        "a metrics stage must be one of upload, decrypt, commit, reveal, advertise, share, "
        "masked-input, consistency, unmask; "
        "got 'client-12345'"
    )
    with pytest.raises(UsageError) as info:
        NullMetrics().message_bytes("down", "masked-input", 1)
    assert str(info.value) == "masked-input messages travel up, not down"


def test_enum_members_and_their_string_values_record_the_same_series(
    metrics: CoordinatorMetrics,
) -> None:
    metrics.client_dropped(Stage.UNMASK, DropReason.DISCONNECTED)
    metrics.client_dropped("unmask", "disconnected")
    metrics.message_bytes(Direction.DOWN, MessageType.ROUND_END, 7)
    metrics.message_bytes("down", "round-end", 5)
    samples = parse(metrics.exposition().decode())
    assert value(samples, "secagg_client_drops_total", stage="unmask", reason="disconnected") == 2
    assert value(samples, "secagg_message_bytes_total", direction="down", type="round-end") == 12


def test_null_metrics_accept_a_whole_round_and_export_nothing() -> None:
    null = NullMetrics()
    seen = run_metered_round(
        Harness(ids=IDS, agree=False), null, silent={Stage.SHARE: [SILENT_CLIENT]}
    )
    assert not seen.aborted
    assert not hasattr(null, "registry")
    with pytest.raises(UsageError):
        serve_metrics(null, "127.0.0.1", 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ message types


def test_every_frame_on_the_stream_has_a_type_and_the_direction_it_travels() -> None:
    h = Harness(ids=IDS)
    outgoing = h.advertise()
    advertise = Harness(ids=IDS, seed=2).adverts[3].encode()
    peer_keys = outgoing[3].encode()
    assert isinstance(outgoing[3], PeerKeys)
    cases: list[tuple[pb.ClientFrame | pb.ServerFrame, MessageType]] = [
        (pb.ClientFrame(hello=pb.Hello(client_id=3)), MessageType.HELLO),
        (pb.ClientFrame(protocol=advertise), MessageType.ADVERTISE_KEYS),
        (pb.ClientFrame(abort=pb.ClientAbort(round_id=1, reason="x")), MessageType.CLIENT_ABORT),
        (pb.ClientFrame(), MessageType.MALFORMED),  # an empty frame
        (pb.ClientFrame(protocol=JUNK), MessageType.MALFORMED),
        (pb.ClientFrame(protocol=peer_keys), MessageType.MALFORMED),  # a server message, sent up
        (pb.ClientFrame(protocol=advertise[:3]), MessageType.MALFORMED),  # a truncated header
        (pb.ServerFrame(challenge=pb.Challenge(nonce=b"n")), MessageType.CHALLENGE),
        (pb.ServerFrame(welcome=pb.Welcome(client_id=3)), MessageType.WELCOME),
        (pb.ServerFrame(task=pb.Task(round_id=1)), MessageType.TASK),
        (pb.ServerFrame(protocol=peer_keys), MessageType.PEER_KEYS),
        (pb.ServerFrame(round_end=pb.RoundEnd(round_id=1)), MessageType.ROUND_END),
        (pb.ServerFrame(reject=pb.Reject(reason="x")), MessageType.REJECT),
    ]
    for frame, expected in cases:
        assert frame_message_type(frame) is expected, frame
        up = isinstance(frame, pb.ClientFrame)
        assert expected.direction is (Direction.UP if up else Direction.DOWN)
    # Every type is reachable from some frame, in one direction only.
    assert {kind.direction for kind in MessageType} == {Direction.UP, Direction.DOWN}


def test_the_coordinator_sending_something_that_is_not_a_server_message_is_our_bug() -> None:
    config_bytes = Harness(ids=IDS).config.encode()
    assert isinstance(RoundConfig.decode(config_bytes), RoundConfig)
    for frame in (
        pb.ServerFrame(),
        pb.ServerFrame(protocol=JUNK),
        pb.ServerFrame(protocol=config_bytes),  # travels inside a Task, never alone
    ):
        with pytest.raises(UsageError):
            frame_message_type(frame)
    advertise = Harness(ids=IDS).adverts[3]
    assert isinstance(advertise, AdvertiseKeys)
    with pytest.raises(UsageError):
        protocol_message_type(advertise.encode(), Direction.DOWN)


def test_a_ckks_rounds_messages_have_their_own_types_each_in_its_direction() -> None:
    from secagg.schemes.ckks import CkksResult, CkksSumRequest, CkksUpload

    config_id = bytes(32)
    upload = CkksUpload(config_id, 3, b"ciphertexts").encode()
    result = CkksResult(config_id, 3, 7, bytes(8)).encode()
    request = CkksSumRequest(config_id, 3, (1, 3), b"ciphertexts").encode()
    assert frame_message_type(pb.ClientFrame(protocol=upload)) is MessageType.CKKS_UPLOAD
    assert frame_message_type(pb.ClientFrame(protocol=result)) is MessageType.CKKS_RESULT
    assert frame_message_type(pb.ServerFrame(protocol=request)) is MessageType.CKKS_SUM_REQUEST
    # The sum sent back up is no client's message; an upload sent down is our bug.
    assert frame_message_type(pb.ClientFrame(protocol=request)) is MessageType.MALFORMED
    with pytest.raises(UsageError):
        frame_message_type(pb.ServerFrame(protocol=upload))


# ------------------------------------------------------------------ isolation


def test_two_coordinators_metrics_do_not_share_values() -> None:
    first, second = CoordinatorMetrics(), CoordinatorMetrics()
    first.round_started()
    first.round_finished(RoundOutcome.COMPLETED)
    first.client_dropped(Stage.SHARE, DropReason.MISSED_SHARE)
    second.round_started()
    second.round_finished("aborted")
    with serve_metrics(first, "127.0.0.1", 0) as a, serve_metrics(second, "127.0.0.1", 0) as b:
        assert a.port != b.port
        one, two = parse(scrape(a)), parse(scrape(b))
    assert value(one, "secagg_rounds_total", outcome="completed") == 1
    assert value(one, "secagg_rounds_total", outcome="aborted") == 0
    assert value(two, "secagg_rounds_total", outcome="completed") == 0
    assert value(two, "secagg_rounds_total", outcome="aborted") == 1
    assert len(series(one, "secagg_client_drops_total")) == 1
    assert series(two, "secagg_client_drops_total") == {}


def test_nothing_reaches_the_process_wide_default_registry() -> None:
    from prometheus_client import REGISTRY, generate_latest

    CoordinatorMetrics().round_started()
    assert b"secagg_" not in generate_latest(REGISTRY)


# ------------------------------------------------------------------ the endpoint


def test_an_occupied_port_is_a_configuration_error_in_one_line(
    metrics: CoordinatorMetrics,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as info:
            serve_metrics(metrics, "127.0.0.1", port)
    message = str(info.value)
    assert message == (
        f"cannot listen for metrics on 127.0.0.1:{port}: "
        "address already in use (choose another metrics port)"
    )
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("127.0.0.1", 70000, "the metrics port must be 0..65535; got 70000"),
        ("127.0.0.1", -1, "the metrics port must be 0..65535; got -1"),
        (
            "no-such-host.invalid",
            0,
            "cannot listen for metrics on no-such-host.invalid:0: unknown host "
            "(check the metrics host)",
        ),
    ],
)
def test_a_bad_metrics_address_is_a_configuration_error_in_one_line(
    metrics: CoordinatorMetrics, host: str, port: int, message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        serve_metrics(metrics, host, port)
    assert str(info.value) == message


def test_closing_the_endpoint_stops_serving_and_releases_its_port(
    metrics: CoordinatorMetrics,
) -> None:
    running = serve_metrics(metrics, "127.0.0.1", 0)
    port, url = running.port, running.url
    assert url == f"http://127.0.0.1:{port}/metrics"
    assert "secagg_rounds_total" in scrape(running)
    running.close()
    running.close()  # idempotent
    assert "closed" in repr(running)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    with serve_metrics(metrics, "127.0.0.1", port) as again:
        assert again.port == port
        assert "secagg_rounds_total" in scrape(again)


# ------------------------------------------------------------------ without the extra


def test_without_the_extra_the_module_imports_and_only_the_exporter_refuses() -> None:
    program = "\n".join(
        [
            "import sys",
            "sys.modules['prometheus_client'] = None  # as if not installed",
            "from secagg.errors import ConfigurationError",
            "from secagg.service.metrics import CoordinatorMetrics, NullMetrics",
            "NullMetrics().client_dropped('share', 'missed-share')",
            "try:",
            "    CoordinatorMetrics()",
            "except ConfigurationError as exc:",
            "    print(exc)",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == NEEDS_EXTRA
    assert NEEDS_EXTRA == "metrics need the [metrics] extra: pip install 'secagg[metrics]'"


# ------------------------------------------------------------------ derived message types


def test_the_protocol_types_by_tag_and_direction_are_derived_as_they_were_listed() -> None:
    """The codec's table and each message's declared direction give what was listed by hand:
    every message that travels the stream under its class's name, the configurations (inside
    a Task) and the plaintext scheme (no frame) under none."""
    from secagg.schemes.ckks import CkksResult, CkksSumRequest, CkksUpload
    from secagg.schemes.masking import messages as pm
    from secagg.schemes.masking.session import messages as sm
    from secagg.service import metrics

    assert metrics._PROTOCOL_TYPES == {
        Direction.UP: {
            pm.Commitment.TAG: MessageType.COMMITMENT,
            pm.Reveal.TAG: MessageType.REVEAL,
            pm.AdvertiseKeys.TAG: MessageType.ADVERTISE_KEYS,
            pm.EncryptedShares.TAG: MessageType.ENCRYPTED_SHARES,
            pm.MaskedInput.TAG: MessageType.MASKED_INPUT,
            pm.ConsistencySignature.TAG: MessageType.CONSISTENCY_SIGNATURE,
            pm.UnmaskResponse.TAG: MessageType.UNMASK_RESPONSE,
            CkksUpload.TAG: MessageType.CKKS_UPLOAD,
            CkksResult.TAG: MessageType.CKKS_RESULT,
            sm.SetupShares.TAG: MessageType.SETUP_SHARES,
            sm.RoundMessage.TAG: MessageType.ROUND_MESSAGE,
            sm.SessionSignature.TAG: MessageType.SESSION_SIGNATURE,
            sm.SessionUnmaskResponse.TAG: MessageType.SESSION_UNMASK_RESPONSE,
        },
        Direction.DOWN: {
            pm.CommitRequest.TAG: MessageType.COMMIT_REQUEST,
            pm.CommitmentDigest.TAG: MessageType.COMMITMENT_DIGEST,
            pm.Contributions.TAG: MessageType.CONTRIBUTIONS,
            pm.PeerKeys.TAG: MessageType.PEER_KEYS,
            pm.PeerShares.TAG: MessageType.PEER_SHARES,
            pm.SurvivorList.TAG: MessageType.SURVIVOR_LIST,
            pm.UnmaskRequest.TAG: MessageType.UNMASK_REQUEST,
            CkksSumRequest.TAG: MessageType.CKKS_SUM_REQUEST,
            sm.PeerSetupShares.TAG: MessageType.PEER_SETUP_SHARES,
            sm.RoundTask.TAG: MessageType.ROUND_TASK,
            sm.SessionSurvivorList.TAG: MessageType.SESSION_SURVIVOR_LIST,
            sm.SessionUnmaskRequest.TAG: MessageType.SESSION_UNMASK_REQUEST,
        },
    }


def test_which_types_travel_down_is_derived_as_it_was_listed() -> None:
    down = {
        MessageType.CHALLENGE,
        MessageType.WELCOME,
        MessageType.TASK,
        MessageType.COMMIT_REQUEST,
        MessageType.COMMITMENT_DIGEST,
        MessageType.CONTRIBUTIONS,
        MessageType.PEER_KEYS,
        MessageType.PEER_SHARES,
        MessageType.SURVIVOR_LIST,
        MessageType.UNMASK_REQUEST,
        MessageType.CKKS_SUM_REQUEST,
        MessageType.PEER_SETUP_SHARES,
        MessageType.ROUND_TASK,
        MessageType.SESSION_SURVIVOR_LIST,
        MessageType.SESSION_UNMASK_REQUEST,
        MessageType.ROUND_END,
        MessageType.REJECT,
    }
    for kind in MessageType:
        assert kind.direction is (Direction.DOWN if kind in down else Direction.UP), kind


def test_a_protocol_type_travels_the_way_its_message_declares() -> None:
    from secagg.protocol import codec

    for cls in codec.client_messages() + codec.server_messages():
        data = codec.MAGIC + bytes([codec.VERSION, cls.TAG])
        try:
            kind = protocol_message_type(data, cls.DIRECTION)
        except UsageError:  # a configuration: only ever inside a Task
            assert cls.DIRECTION is Direction.DOWN and cls.__name__.endswith("Config")
            continue
        if kind is not MessageType.MALFORMED:
            assert kind.direction is cls.DIRECTION
