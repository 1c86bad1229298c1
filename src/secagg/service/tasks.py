"""What the clients of a deployment train: the tasks ``secagg join`` and ``secagg serve`` know.

- ``random``: synthetic updates, no model. Client i's update at training step s is
  reproducible from (seed, i, s), so a test or a load benchmark can compute the exact mean
  the coordinator should reveal. Weights are 1..3.
- ``digits``: a small network on scikit-learn's handwritten digits, each client training on
  its own non-IID share (``secagg.fl.digits``; needs the ``[fl]`` extra).
- ``digits-torch``: the same network, split and training written in PyTorch
  (``secagg.fl.torch.digits_torch_task``; needs the ``[torch]`` extra). Its parameters flatten
  to the same vector as ``digits``, so the coordinator cannot tell them apart.

A deployment names its task in ``deployment.toml`` (``[task]``), so that ``secagg certs`` can
size the deployment for it (``dim``, ``max_weight``, ``clip``, and under distributed DP the
L2 clip: ``default_l2_clip``), ``secagg serve`` starts from the task's initial model, and
``secagg join`` trains the right thing without being told. Under distributed DP the mean is
unweighted: ``update_function(..., unweighted=True)`` gives every update the weight 1.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from secagg.errors import ConfigurationError
from secagg.hazmat.randomness import DeterministicRandomness
from secagg.knobs import knob
from secagg.updates import UpdateFn

__all__ = [
    "RANDOM_CLIP",
    "RANDOM_MAX_WEIGHT",
    "Task",
    "TaskRequirements",
    "TaskSpec",
    "check_fits",
    "default_l2_clip",
    "initial_model",
    "random_task",
    "random_update",
    "random_weight",
    "task_requirements",
    "update_function",
]

RANDOM_MAX_WEIGHT = 3  # random_weight gives 1, 2 or 3
RANDOM_CLIP = 1.0  # random updates lie in (-0.5, 0.5)
_NEEDS_FL = "the digits task needs the [fl] extra: pip install 'secagg[fl]'"


class Task(StrEnum):
    """What a client contributes."""

    RANDOM = "random"
    DIGITS = "digits"
    DIGITS_TORCH = "digits-torch"

    @property
    def digits(self) -> bool:
        """Trains the digits model (numpy or PyTorch): one data split, one vector layout."""
        return self in (Task.DIGITS, Task.DIGITS_TORCH)


@dataclass(frozen=True)
class TaskSpec:
    """A deployment's task: which one, over how many clients' shares, from which seed."""

    task: Task = knob(
        section="task",
        key="name",
        flag="--task",
        help="What `secagg join` trains by default: random or digits.",
        default=Task.RANDOM,
    )
    clients: int = knob(
        section="task",
        help="digits: the data is split into this many shares (default: round.max_clients).",
        default=10,
    )
    seed: int = knob(
        section="task", help="The seed of the data split and the initial model.", default=0
    )

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "task", Task(self.task))
        except ValueError:
            choices = ", ".join(t.value for t in Task)
            raise ConfigurationError(f"task must be one of {choices}; got {self.task!r}") from None
        if isinstance(self.clients, bool) or not isinstance(self.clients, int):
            raise ConfigurationError(f"task clients must be an integer, got {self.clients!r}")
        if self.clients < 3:
            raise ConfigurationError(f"task clients must be at least 3, got {self.clients}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigurationError(f"task seed must be a non-negative integer, got {self.seed!r}")


@dataclass(frozen=True)
class TaskRequirements:
    """What a deployment must allow for a task (``dim`` None: any dimension will do)."""

    dim: int | None
    max_weight: int
    clip: float


def task_requirements(spec: TaskSpec) -> TaskRequirements:
    if spec.task.digits:
        try:
            from secagg.fl.digits import digits_requirements
        except ImportError:
            raise ConfigurationError(_NEEDS_FL) from None
        needs = digits_requirements(spec.clients, spec.seed)
        return TaskRequirements(needs.dim, needs.max_weight, needs.clip)
    return TaskRequirements(None, RANDOM_MAX_WEIGHT, RANDOM_CLIP)


def check_fits(spec: TaskSpec, dim: int, client_id: int | None = None) -> None:
    """Refuse a task the deployment cannot carry (its model has another size), or a client
    that has no share of the task's data."""
    needs = task_requirements(spec)
    if needs.dim is not None and needs.dim != dim:
        raise ConfigurationError(
            f"the {spec.task} task needs round.dim = {needs.dim}; the deployment says {dim} "
            f"(create it with: secagg certs DIR --task {spec.task})"
        )
    if spec.task.digits and client_id is not None and client_id >= spec.clients:
        raise ConfigurationError(
            f"client {client_id} has no share of the digits data split {spec.clients} ways "
            "(task clients)"
        )


def initial_model(spec: TaskSpec, dim: int) -> NDArray[np.float32]:
    """The model the coordinator's first round sends."""
    check_fits(spec, dim)
    if spec.task.digits:
        from secagg.fl.digits import digits_initial_model

        return digits_initial_model(spec.clients, spec.seed)
    return np.zeros(dim, dtype=np.float32)


def default_l2_clip(spec: TaskSpec, dim: int) -> float:
    """The L2 clip distributed DP uses for the task when the operator names none: the
    typical norm of its updates. ``random``: sqrt(dim / 12), the root mean square norm of an
    update uniform in (-0.5, 0.5)^dim (from the task's definition, not from any data);
    ``digits``: the median norm of the clients' first-round updates
    (``secagg.fl.digits.digits_median_update_norm``)."""
    check_fits(spec, dim)
    if spec.task.digits:
        try:
            from secagg.fl.digits import digits_median_update_norm
        except ImportError:
            raise ConfigurationError(_NEEDS_FL) from None
        return digits_median_update_norm(spec.clients, spec.seed)
    return math.sqrt(dim / 12.0)


def update_function(
    spec: TaskSpec,
    client_id: int,
    dim: int,
    *,
    train_seconds: float = 0.0,
    unweighted: bool = False,
) -> UpdateFn:
    """Client ``client_id``'s update callback for the task; ``unweighted`` (distributed DP,
    whose mean counts every client once) gives every update the weight 1."""
    check_fits(spec, dim, client_id)
    update: UpdateFn
    if spec.task is Task.DIGITS:
        from secagg.fl.digits import digits_task

        update = digits_task(client_id, spec.clients, spec.seed)
    elif spec.task is Task.DIGITS_TORCH:
        from secagg.fl.torch import digits_torch_task

        update = digits_torch_task(client_id, spec.clients, spec.seed)
    else:
        update = random_task(client_id, dim, spec.seed, train_seconds=train_seconds)
    return _weighing_one(update) if unweighted else update


def _weighing_one(update: UpdateFn) -> UpdateFn:
    def unweighted(model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
        values, _weight = update(model, step)
        return values, 1

    return unweighted


def random_update(client_id: int, dim: int, step: int, seed: int) -> NDArray[np.float32]:
    """Uniform in (-0.5, 0.5): well inside the default clip range."""
    key = hashlib.sha256(f"secagg/task/random/{seed}/{client_id}/{step}".encode()).digest()
    words = DeterministicRandomness(key).words(dim)
    return (words.astype(np.float64) / 2**32 - 0.5).astype(np.float32)


def random_weight(client_id: int) -> int:
    return 1 + client_id % RANDOM_MAX_WEIGHT


def random_task(client_id: int, dim: int, seed: int, *, train_seconds: float = 0.0) -> UpdateFn:
    """Synthetic updates; ``train_seconds`` makes each one take that long, as local training
    would (the callback runs in a worker thread, so the client stays responsive)."""

    def update(model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
        del model  # the synthetic update does not depend on the model
        if train_seconds > 0:
            time.sleep(train_seconds)
        return random_update(client_id, dim, step, seed), random_weight(client_id)

    return update
