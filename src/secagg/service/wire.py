"""What both ends of the gRPC channel must agree on: message size caps and the task digest."""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from secagg.errors import DecodeError
from secagg.hazmat.keys import encode_fields
from secagg.hazmat.ring import Ring
from secagg.protocol.messages import CIPHERTEXT_BYTES, KEY_BYTES

__all__ = ["channel_options", "decode_model", "encode_model", "message_size_limit", "task_digest"]

# Headroom for protobuf framing and the fixed-size parts of every message.
_SLACK = 64 * 1024


def message_size_limit(dim: int, max_clients: int, ring_bits: int) -> int:
    """The largest message either side may legitimately send, plus headroom.

    Set identically on both ends, so that gRPC refuses anything larger from its length
    prefix, before the message is allocated.
    """
    ids = 4 * max_clients
    masked_input = Ring(ring_bits).packed_size(dim + 1) + ids
    task = 4 * dim + ids  # the model and the config's cohort
    peer_messages = max_clients * (4 + max(2 * KEY_BYTES, CIPHERTEXT_BYTES))
    return max(masked_input, task, peer_messages) + _SLACK


def channel_options(limit: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Notice a dead peer within seconds rather than at the TCP timeout.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
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
