"""What both ends of the gRPC channel must agree on: message size caps, keepalive, the task digest.

Keepalive is a contract between the two ends. A client pings every ``CLIENT_PING_SECONDS``
on its otherwise silent stream (a client may train for minutes before it says anything), and
the coordinator must permit that: by default a gRPC server allows a ping without data only
every five minutes, counts each earlier one as a strike and, after two, cuts the connection
with GOAWAY ``too_many_pings``. The coordinator therefore accepts a ping every
``MIN_CLIENT_PING_SECONDS`` (half the client's interval, for timer jitter). In the other
direction the coordinator pings every client every ``SERVER_PING_SECONDS`` and gives it
``SERVER_PING_TIMEOUT_SECONDS`` to answer: a client that is frozen (stopped, swapped out, cut
off) is dropped as disconnected within seconds, not at the TCP timeout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError, DecodeError
from secagg.hazmat.kdf import encode_fields
from secagg.schemes.base import SchemeSettings
from secagg.schemes.masking.messages import KEY_BYTES, SIGNATURE_BYTES
from secagg.schemes.masking.session.messages import ROUND_CIPHERTEXT_BYTES

__all__ = [
    "CLIENT_PING_SECONDS",
    "MAX_MESSAGE_BYTES",
    "MIN_CLIENT_PING_SECONDS",
    "SERVER_PING_SECONDS",
    "SERVER_PING_TIMEOUT_SECONDS",
    "ModelTask",
    "channel_options",
    "decode_model",
    "encode_model",
    "message_size_limit",
    "server_options",
    "task_digest",
]

# Headroom for protobuf framing and the fixed-size parts of every message.
_SLACK = 64 * 1024

MAX_MESSAGE_BYTES = 2**31 - 1
"""The largest message gRPC can be told to accept: its channel arguments are C ints (and a
protobuf message is limited to 2 GiB anyway)."""

CLIENT_PING_SECONDS = 10.0
MIN_CLIENT_PING_SECONDS = CLIENT_PING_SECONDS / 2
SERVER_PING_SECONDS = 2.0
SERVER_PING_TIMEOUT_SECONDS = 3.0


# What a session's messages add per cohort member to the scheme's largest one-shot message
# (docs/SESSIONS.md 1.2): a round message carries the masked input and one sealed share per live
# neighbour; an unmask request one forwarded share per survivor, with its next-round keys and
# signature, and the certificate's signatures. Counted generously: ids, counts and lengths too.
_SESSION_BYTES_PER_MEMBER = (
    4 + ROUND_CIPHERTEXT_BYTES + 2 * KEY_BYTES + 4 + SIGNATURE_BYTES  # a forwarded share
    + 4 + SIGNATURE_BYTES  # a certificate's signature
    + 2 * 4  # the survivor and dropped lists
)  # fmt: skip
_SESSION_FIXED_BYTES = 1024


def message_size_limit(settings: SchemeSettings, *, sessions: bool = False) -> int:
    """The largest message either side may legitimately send, plus headroom: the scheme's
    largest, or the task (the model as float32, with the round's opening message), and with
    ``sessions`` (masking's sessions that span rounds) a session's largest.

    Set identically on both ends, so that gRPC refuses anything larger from its length
    prefix, before the message is allocated. A deployment whose messages could not fit gRPC's
    limit is refused (``ConfigurationError`` naming ``dim``).
    """
    task = 4 * settings.dim + settings.opening_message_bytes()
    largest = settings.largest_message_bytes()
    if sessions:
        largest += settings.max_clients * _SESSION_BYTES_PER_MEMBER + _SESSION_FIXED_BYTES
    limit = max(largest, task) + _SLACK
    if limit > MAX_MESSAGE_BYTES:
        raise ConfigurationError(
            f"dim = {settings.dim} needs gRPC messages of {limit:,} bytes under "
            f"{settings.kind.value} ({limit / settings.dim:.0f} bytes per value); gRPC carries "
            f"at most {MAX_MESSAGE_BYTES:,}: lower round.dim"
        )
    return limit


def _checked_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_MESSAGE_BYTES:
        raise ConfigurationError(
            f"the message size limit must be in [1, {MAX_MESSAGE_BYTES}], got {limit!r}"
        )
    return limit


def channel_options(limit: int) -> list[tuple[str, int]]:
    """The client's channel: the size cap, and a keepalive ping every CLIENT_PING_SECONDS so
    that a dead coordinator is noticed within seconds rather than at the TCP timeout."""
    limit = _checked_limit(limit)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", int(CLIENT_PING_SECONDS * 1000)),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options(limit: int) -> list[tuple[str, int]]:
    """The coordinator's server: the size cap, the clients' keepalive permitted, its own
    keepalive to find frozen clients, and a port of its own (see the module docstring)."""
    limit = _checked_limit(limit)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Never share the port: with SO_REUSEPORT a second coordinator started by mistake
        # would bind the same port and the kernel would split the clients between the two.
        ("grpc.so_reuseport", 0),
        # Permit the clients' pings on streams that carry no data (a client training).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(MIN_CLIENT_PING_SECONDS * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        # Ping every client, data or not, and drop a connection whose ping goes unanswered.
        ("grpc.keepalive_time_ms", int(SERVER_PING_SECONDS * 1000)),
        ("grpc.keepalive_timeout_ms", int(SERVER_PING_TIMEOUT_SECONDS * 1000)),
        # Recent gRPC cores time an unanswered ping out on this, not on the keepalive
        # timeout alone (its default is a minute).
        ("grpc.http2.ping_timeout_ms", int(SERVER_PING_TIMEOUT_SECONDS * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def encode_model(params: NDArray[np.floating]) -> bytes:
    return np.ascontiguousarray(params, dtype="<f4").tobytes()


def decode_model(data: bytes, dim: int | None = None) -> NDArray[np.float32]:
    if len(data) % 4 or (dim is not None and len(data) != 4 * dim):
        raise DecodeError(f"a model of {len(data)} bytes is not {dim} float32 values")
    model = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(model)):
        raise DecodeError("the model contains NaN or infinity")
    return model


def task_digest(model: bytes, step: int) -> bytes:
    """The hash bound into a round's session id: a client trains only the model (and training
    step) it was sent."""
    return hashlib.sha256(encode_fields("secagg/v1/task", step, model)).digest()


@dataclass(frozen=True)
class ModelTask:
    """A gRPC ``Task``'s model and step, as a client session reads them
    (``secagg.client_session.TaskCodec``): the session is bound to the digest of both, one
    update per (model, step), and the model decoded to the deployment's dimension. A
    coordinator that sends the same model under a new step gets a new update from a trainer
    that draws its batches by step; only DP bounds what a deterministic trainer's repeats
    reveal (docs/CLIENT_SESSION.md, R5)."""

    model_bytes: bytes = field(repr=False)
    step: int

    def binding(self) -> bytes:
        return task_digest(self.model_bytes, self.step)

    def fingerprint(self) -> bytes:
        return task_digest(self.model_bytes, self.step)

    def model(self, dim: int) -> NDArray[np.float32]:
        return decode_model(self.model_bytes, dim)
