"""The Flower tests run where flwr is installed (make's .venv-flower-ci); elsewhere every
module skips itself with ``pytest.importorskip("flwr")``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# For the simulation engine, set before any test module imports flwr (and so ray): no
# telemetry, and Ray's local cluster on loopback rather than the network interface's address.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(autouse=True)
def serverapp_identity() -> Iterator[None]:
    """What a ServerApp's runtime sets before the app builds messages: the run and task ids
    and the SuperLink's node id (Flower stamps them on every message the app creates)."""
    try:
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError:
        yield
        return
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
