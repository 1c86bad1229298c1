"""Operator metrics of the coordinator, exported for Prometheus.

What an operator needs to see, after Google's ``SecAggServerMetricsListener``: rounds started
and how they ended, how long each stage took and how many clients it expected and heard from,
who dropped where and why (as counts), bytes by direction and message type, and the time spent
unmasking (regenerating masks) and reconstructing Shamir secrets. Names follow the Prometheus
conventions: base units, ``_seconds`` and ``_bytes``, ``_total`` on counters.

=========================================  =========  =============================
metric                                     type       labels
=========================================  =========  =============================
``secagg_build_info``                      info       ``version``, ``python``
``secagg_rounds_started_total``            counter
``secagg_rounds_total``                    counter    ``outcome``
``secagg_stage_duration_seconds``          histogram  ``stage``
``secagg_stage_clients``                   gauge      ``stage``, ``status``
``secagg_client_response_seconds``         histogram  ``stage``
``secagg_client_drops_total``              counter    ``stage``, ``reason``
``secagg_message_bytes_total``             counter    ``direction``, ``type``
``secagg_message_size_bytes``              histogram  ``direction``, ``type``
``secagg_unmasking_seconds``               histogram
``secagg_shamir_reconstruction_seconds``   histogram
``secagg_connected_clients``               gauge
``process_*``                              (prometheus_client's process collector)
=========================================  =========  =============================

Rounds in progress are ``secagg_rounds_started_total - sum(secagg_rounds_total)``;
``secagg_stage_clients`` describes the current (or last) round only.

**No per-client label, by construction.** Every label value comes from a closed set -- the
``Stage``, ``DropReason``, ``RoundOutcome``, ``Direction`` and ``MessageType`` enums -- and
anything else is refused with a ``UsageError``, so a client id cannot become a label and the
number of series is bounded whatever the cohort. The recording methods take counts and
durations, never a client id.

``prometheus_client`` is an optional dependency (the ``[metrics]`` extra): this module
imports without it, ``NullMetrics`` works without it, and only ``CoordinatorMetrics`` needs
it (else a ``ConfigurationError`` says how to install it). ``NullMetrics`` refuses exactly what
``CoordinatorMetrics`` refuses, so a coordinator tested without the extra is held to the same
label sets.
"""

from __future__ import annotations

import errno
import math
import platform
import re
import socket
import threading
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from secagg import __version__
from secagg.errors import ConfigurationError, DropReason, UsageError
from secagg.protocol import codec
from secagg.protocol.codec import Direction
from secagg.protocol.runner import RoundOutcome
from secagg.protocol.stages import Stage
from secagg.service.v1 import coordinator_pb2 as pb

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

__all__ = [
    "DURATION_BUCKETS",
    "MESSAGE_SIZE_BUCKETS",
    "NEEDS_EXTRA",
    "ROUND_STAGES",
    "ClientStatus",
    "CoordinatorMetrics",
    "Direction",
    "MessageType",
    "Metrics",
    "MetricsEndpoint",
    "NullMetrics",
    "frame_message_type",
    "protocol_message_type",
    "serve_metrics",
]

NEEDS_EXTRA = "metrics need the [metrics] extra: pip install 'secagg[metrics]'"

# The stages a round passes through (COMPLETED and ABORTED are where it ends, not stages).
ROUND_STAGES = tuple(s for s in Stage if s not in (Stage.COMPLETED, Stage.ABORTED))

# 1 ms .. 10 min, about three buckets per decade: a loopback advertise stage takes
# milliseconds, a stage that waits out its deadline takes stage_timeout (30 s by default, and
# operators raise it for slow devices), unmasking 10,000 clients takes minutes.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

# 64 B .. 1 GiB in powers of four: a hello is ~100 bytes, a task carries the float32 model
# (4 bytes per parameter), a masked input the bit-packed vector.
MESSAGE_SIZE_BUCKETS = tuple(float(4**k) for k in range(3, 16))


class ClientStatus(StrEnum):
    """The ``status`` label of ``secagg_stage_clients``."""

    EXPECTED = "expected"  # clients the stage waited for
    ANSWERED = "answered"  # of those, how many sent their message before the stage closed


class MessageType(StrEnum):
    """Every kind of frame on the coordinator's stream: the closed ``type`` label set.

    Protocol messages are named after their class, of any scheme (``AdvertiseKeys``:
    ``advertise-keys``): their tag and direction come from the codec (``_PROTOCOL_TYPES``),
    so a new message that travels the stream is one member here. The others are named after
    the gRPC frame that carries them. ``malformed`` counts what a client sent that is not one
    of its messages (junk bytes, an empty frame, a server message sent back up).
    """

    # client -> coordinator
    HELLO = "hello"
    COMMITMENT = "commitment"
    REVEAL = "reveal"
    ADVERTISE_KEYS = "advertise-keys"
    ENCRYPTED_SHARES = "encrypted-shares"
    MASKED_INPUT = "masked-input"
    CONSISTENCY_SIGNATURE = "consistency-signature"
    UNMASK_RESPONSE = "unmask-response"
    CKKS_UPLOAD = "ckks-upload"
    CKKS_RESULT = "ckks-result"
    SETUP_SHARES = "setup-shares"  # sessions that span rounds
    ROUND_MESSAGE = "round-message"
    SESSION_SIGNATURE = "session-signature"
    SESSION_UNMASK_RESPONSE = "session-unmask-response"
    CLIENT_ABORT = "client-abort"
    MALFORMED = "malformed"
    # coordinator -> client
    CHALLENGE = "challenge"
    WELCOME = "welcome"
    TASK = "task"
    COMMIT_REQUEST = "commit-request"
    COMMITMENT_DIGEST = "commitment-digest"
    CONTRIBUTIONS = "contributions"
    PEER_KEYS = "peer-keys"
    PEER_SHARES = "peer-shares"
    SURVIVOR_LIST = "survivor-list"
    UNMASK_REQUEST = "unmask-request"
    CKKS_SUM_REQUEST = "ckks-sum-request"
    PEER_SETUP_SHARES = "peer-setup-shares"  # sessions that span rounds
    ROUND_TASK = "round-task"
    SESSION_SURVIVOR_LIST = "session-survivor-list"
    SESSION_UNMASK_REQUEST = "session-unmask-request"
    ROUND_END = "round-end"
    REJECT = "reject"

    @property
    def direction(self) -> Direction:
        return Direction.DOWN if self in _DOWN else Direction.UP


_CLIENT_FRAMES = {
    "hello": MessageType.HELLO,
    "abort": MessageType.CLIENT_ABORT,
}
_SERVER_FRAMES = {
    "challenge": MessageType.CHALLENGE,
    "welcome": MessageType.WELCOME,
    "task": MessageType.TASK,
    "round_end": MessageType.ROUND_END,
    "reject": MessageType.REJECT,
}


def _protocol_types(direction: Direction) -> dict[int, MessageType]:
    """The protocol messages that travel ``direction`` by their wire tag, each under the type
    named after its class (``AdvertiseKeys``: ``advertise-keys``), as the codec's table and
    the messages' own declarations say. A message with no type of its name is not one of the
    stream's: a ``RoundConfig`` (or a CKKS configuration) never travels alone, it is inside
    a Task, and the plaintext scheme has no frame."""
    types: dict[int, MessageType] = {}
    for cls in codec.travelling(direction):
        label = re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()
        if label in _TYPE_NAMES:
            types[cls.TAG] = MessageType(label)
    return types


_TYPE_NAMES = frozenset(kind.value for kind in MessageType)
_PROTOCOL_TYPES: Mapping[Direction, Mapping[int, MessageType]] = {
    direction: _protocol_types(direction) for direction in Direction
}
# What travels down: the coordinator's own frames and the protocol's server messages.
_DOWN = frozenset(_SERVER_FRAMES.values()) | frozenset(_PROTOCOL_TYPES[Direction.DOWN].values())
_HEADER = len(codec.MAGIC) + 2  # MAGIC || VERSION || tag


def protocol_message_type(data: bytes, direction: Direction) -> MessageType:
    """The type of canonical protocol bytes, read from their header (nothing is decoded).

    Bytes a client sent that are not a client message are ``malformed``; bytes we are about
    to send that are not a server message are our bug (``UsageError``).
    """
    direction = _direction(direction)
    known = len(data) >= _HEADER and data[: len(codec.MAGIC)] == codec.MAGIC
    known = known and data[len(codec.MAGIC)] == codec.VERSION
    kind = _PROTOCOL_TYPES[direction].get(data[_HEADER - 1]) if known else None
    if kind is not None:
        return kind
    if direction is Direction.UP:
        return MessageType.MALFORMED
    raise UsageError("the coordinator is sending bytes that are not a server protocol message")


def frame_message_type(frame: pb.ClientFrame | pb.ServerFrame) -> MessageType:
    """The type of a frame on the coordinator's stream; its ``.direction`` follows from it."""
    body = frame.WhichOneof("body")
    if isinstance(frame, pb.ClientFrame):
        if body == "protocol":
            return protocol_message_type(frame.protocol, Direction.UP)
        return _CLIENT_FRAMES.get(body or "", MessageType.MALFORMED)
    if body == "protocol":
        return protocol_message_type(frame.protocol, Direction.DOWN)
    if body == "session_task":  # what opens a session's round, with the round's model
        return protocol_message_type(frame.session_task.round_task, Direction.DOWN)
    kind = _SERVER_FRAMES.get(body or "")
    if kind is None:
        raise UsageError(f"the coordinator is sending a server frame with body {body!r}")
    return kind


# ------------------------------------------------------------------ label and value checks
# Each check returns the enum member, so a label is always an enum's value and never the
# caller's string, and refuses anything outside the closed set.


def _closed(enum: type[StrEnum], value: object, what: str) -> StrEnum:
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    allowed = ", ".join(m.value for m in enum)
    raise UsageError(f"{what} must be one of {allowed}; got {_shown(value)}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_STAGE_NAMES = frozenset(s.value for s in ROUND_STAGES)


def _stage(value: Stage | str) -> Stage:
    if isinstance(value, str) and value in _STAGE_NAMES:
        return Stage(value)
    allowed = ", ".join(s.value for s in ROUND_STAGES)
    raise UsageError(f"a metrics stage must be one of {allowed}; got {_shown(value)}")


def _reason(value: DropReason | str) -> DropReason:
    return DropReason(_closed(DropReason, value, "a drop reason"))


def _outcome(value: RoundOutcome | str) -> RoundOutcome:
    outcome = RoundOutcome(_closed(RoundOutcome, value, "a round outcome"))
    if outcome is RoundOutcome.RUNNING:
        raise UsageError("a finished round's outcome is completed or aborted, not running")
    return outcome


def _direction(value: Direction | str) -> Direction:
    return Direction(_closed(Direction, value, "a message direction"))


def _message(direction: Direction | str, message_type: MessageType | str) -> MessageType:
    way = _direction(direction)
    kind = MessageType(_closed(MessageType, message_type, "a message type"))
    if kind.direction is not way:
        raise UsageError(f"{kind.value} messages travel {kind.direction.value}, not {way.value}")
    return kind


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{what} must be a non-negative int; got {_shown(value)}")
    return value


def _seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{what} must be a number of seconds; got {_shown(value)}")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{what} must be finite and >= 0; got {value!r}")
    return float(value)


def _stage_clients(expected: int, answered: int) -> tuple[int, int]:
    _count(expected, "clients_expected")
    _count(answered, "clients_answered")
    if answered > expected:
        raise UsageError(f"{answered} clients answered a stage that expected {expected}")
    return expected, answered


# ------------------------------------------------------------------ the recorders


class Metrics(Protocol):
    """What the coordinator records; ``CoordinatorMetrics`` exports it, ``NullMetrics`` not."""

    def round_started(self) -> None: ...
    def round_finished(self, outcome: RoundOutcome | str) -> None: ...
    def stage_finished(
        self, stage: Stage | str, seconds: float, clients_expected: int, clients_answered: int
    ) -> None: ...
    def client_responded(self, stage: Stage | str, seconds: float) -> None: ...
    def client_dropped(self, stage: Stage | str, reason: DropReason | str) -> None: ...
    def message_bytes(
        self, direction: Direction | str, message_type: MessageType | str, size: int
    ) -> None: ...
    def unmasking_seconds(self, seconds: float) -> None: ...
    def reconstruction_seconds(self, seconds: float) -> None: ...
    def clients_connected(self, count: int) -> None: ...


class NullMetrics:
    """Records nothing, but refuses what ``CoordinatorMetrics`` refuses."""

    def round_started(self) -> None:
        pass

    def round_finished(self, outcome: RoundOutcome | str) -> None:
        _outcome(outcome)

    def stage_finished(
        self, stage: Stage | str, seconds: float, clients_expected: int, clients_answered: int
    ) -> None:
        _stage(stage)
        _seconds(seconds, "a stage duration")
        _stage_clients(clients_expected, clients_answered)

    def client_responded(self, stage: Stage | str, seconds: float) -> None:
        _stage(stage)
        _seconds(seconds, "a client response time")

    def client_dropped(self, stage: Stage | str, reason: DropReason | str) -> None:
        _stage(stage)
        _reason(reason)

    def message_bytes(
        self, direction: Direction | str, message_type: MessageType | str, size: int
    ) -> None:
        _message(direction, message_type)
        _count(size, "a message size")

    def unmasking_seconds(self, seconds: float) -> None:
        _seconds(seconds, "the unmasking time")

    def reconstruction_seconds(self, seconds: float) -> None:
        _seconds(seconds, "the reconstruction time")

    def clients_connected(self, count: int) -> None:
        _count(count, "the number of connected clients")


class CoordinatorMetrics:
    """The coordinator's metrics, in a registry of their own.

    Never the process-wide default registry: two coordinators in one process (or many
    tests) keep separate values, and nothing else a user registered leaks into our endpoint.
    Recording is thread-safe (the coordinator's event loop records, the HTTP thread reads).
    """

    def __init__(self) -> None:
        try:
            from prometheus_client import (
                CollectorRegistry,
                Counter,
                Gauge,
                Histogram,
                Info,
                ProcessCollector,
            )
        except ImportError:
            raise ConfigurationError(NEEDS_EXTRA) from None
        self.registry: CollectorRegistry = CollectorRegistry()
        r = self.registry
        # Resident memory and CPU of the coordinator (Linux /proc; nothing elsewhere).
        ProcessCollector(registry=r)
        Info("secagg_build", "The secagg release this coordinator runs.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self._started = Counter(
            "secagg_rounds_started", "Secure-aggregation rounds started.", registry=r
        )
        self._rounds = Counter(
            "secagg_rounds", "Rounds finished, by outcome.", ["outcome"], registry=r
        )
        for outcome in (RoundOutcome.COMPLETED, RoundOutcome.ABORTED):
            self._rounds.labels(outcome.value)  # both series exist from the start, at 0
        self._stage_duration = Histogram(
            "secagg_stage_duration_seconds",
            "Time from a stage's start to its close, by stage.",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._stage_clients = Gauge(
            "secagg_stage_clients",
            "Clients each stage of the current (or last) round expected and heard from.",
            ["stage", "status"],
            registry=r,
        )
        self._response = Histogram(
            "secagg_client_response_seconds",
            "Time from a stage's start to a client's message, by stage (all clients pooled).",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._drops = Counter(
            "secagg_client_drops",
            "Clients the coordinator stopped waiting for, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self._bytes = Counter(
            "secagg_message_bytes",
            "Bytes of frames on the clients' streams, by direction and message type.",
            ["direction", "type"],
            registry=r,
        )
        self._sizes = Histogram(
            "secagg_message_size_bytes",
            "Sizes of single frames, by direction and message type.",
            ["direction", "type"],
            buckets=MESSAGE_SIZE_BUCKETS,
            registry=r,
        )
        self._unmasking = Histogram(
            "secagg_unmasking_seconds",
            "Time a round spent regenerating and removing masks.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._reconstruction = Histogram(
            "secagg_shamir_reconstruction_seconds",
            "Time a round spent reconstructing Shamir-shared secrets of the clients.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._connected = Gauge(
            "secagg_connected_clients", "Authenticated client streams open now.", registry=r
        )

    def round_started(self) -> None:
        self._started.inc()
        # The stage gauges describe one round: a stage the new round has not reached must
        # not show the previous round's counts.
        self._stage_clients.clear()

    def round_finished(self, outcome: RoundOutcome | str) -> None:
        self._rounds.labels(_outcome(outcome).value).inc()

    def stage_finished(
        self, stage: Stage | str, seconds: float, clients_expected: int, clients_answered: int
    ) -> None:
        name = _stage(stage).value
        duration = _seconds(seconds, "a stage duration")
        expected, answered = _stage_clients(clients_expected, clients_answered)
        self._stage_duration.labels(name).observe(duration)
        self._stage_clients.labels(name, ClientStatus.EXPECTED.value).set(expected)
        self._stage_clients.labels(name, ClientStatus.ANSWERED.value).set(answered)

    def client_responded(self, stage: Stage | str, seconds: float) -> None:
        # Every argument is checked before a labelled child exists: a refused call must not
        # leave an empty series behind.
        name = _stage(stage).value
        duration = _seconds(seconds, "a client response time")
        self._response.labels(name).observe(duration)

    def client_dropped(self, stage: Stage | str, reason: DropReason | str) -> None:
        self._drops.labels(_stage(stage).value, _reason(reason).value).inc()

    def message_bytes(
        self, direction: Direction | str, message_type: MessageType | str, size: int
    ) -> None:
        kind = _message(direction, message_type)
        size = _count(size, "a message size")
        self._bytes.labels(kind.direction.value, kind.value).inc(size)
        self._sizes.labels(kind.direction.value, kind.value).observe(size)

    def unmasking_seconds(self, seconds: float) -> None:
        self._unmasking.observe(_seconds(seconds, "the unmasking time"))

    def reconstruction_seconds(self, seconds: float) -> None:
        self._reconstruction.observe(_seconds(seconds, "the reconstruction time"))

    def clients_connected(self, count: int) -> None:
        self._connected.set(_count(count, "the number of connected clients"))

    def exposition(self) -> bytes:
        """The text exposition, exactly what a scrape of the endpoint returns."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ------------------------------------------------------------------ the HTTP endpoint


class MetricsEndpoint:
    """A running metrics endpoint: ``url`` to scrape, ``close()`` (or ``with``) to stop."""

    def __init__(self, host: str, server: WSGIServer, thread: threading.Thread) -> None:
        self.host = host
        self.port: int = server.server_port
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://{_address(self.host, self.port)}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()  # returns once serve_forever has left its loop
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"MetricsEndpoint({self.url}, {state})"


_BIND_ERRORS = {
    errno.EADDRINUSE: "address already in use (choose another metrics port)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "address not available on this machine (check the metrics host)",
}


def serve_metrics(metrics: CoordinatorMetrics, host: str, port: int) -> MetricsEndpoint:
    """Serve ``metrics`` over HTTP from a background thread; ``port`` 0 takes any free port.

    An address that cannot be bound is a ``ConfigurationError`` with one line that says why.
    """
    if not isinstance(metrics, CoordinatorMetrics):
        raise UsageError(f"serve_metrics needs CoordinatorMetrics, not {type(metrics).__name__}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"the metrics port must be 0..65535; got {_shown(port)}")
    from prometheus_client import start_http_server

    where = _address(host, port)
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except socket.gaierror:
        raise ConfigurationError(
            f"cannot listen for metrics on {where}: unknown host (check the metrics host)"
        ) from None
    except OSError as exc:
        reason = _BIND_ERRORS.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
        raise ConfigurationError(f"cannot listen for metrics on {where}: {reason}") from None
    return MetricsEndpoint(host, server, thread)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
