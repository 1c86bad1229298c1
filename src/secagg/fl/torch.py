"""PyTorch adapters: a model's floating-point state as the one flat vector secure aggregation sums.

Secure aggregation works on flat float32 vectors; a PyTorch model is a ``state_dict`` of named
tensors. ``FlatSpec`` fixes the correspondence once: the ordered names, shapes and dtypes of
the *floating-point* entries, which are what FedAvg averages (parameters and float buffers
alike, e.g. BatchNorm's running mean and variance). Entries of any other dtype (BatchNorm's
int64 ``num_batches_tracked``, say) are kept out of the vector: they are never sent, and
``load_flat`` leaves them as they are on each client.

- ``flatten`` / ``unflatten``: state <-> vector, refusing a vector of the wrong length, a
  state that does not match the spec and non-finite values.
- ``load_flat``: write a vector into a module in place (parameters keep their identity, so an
  optimizer holding them stays valid).
- ``parameter_delta``: ``after - before`` as a vector: a client's FedAvg update.
- ``torch_update_fn``: the ``UpdateFn`` callback ``SecAggClient`` takes, built from a module
  and a training function.
- ``DigitsNet`` and ``digits_torch_task``: the digits demo's model and client task in
  PyTorch. ``DigitsNet`` holds ``ModelSpec``'s parameters in ``ModelSpec``'s flat layout, so
  its vector means the same as the numpy model's: a coordinator that initialises and
  evaluates with ``ModelSpec`` serves numpy and PyTorch clients alike.

Everything runs on the tensors' own devices; vectors are always float32 numpy arrays on the
host. This module imports without torch installed (``import secagg.fl`` never imports it);
using any adapter then raises ``MissingExtra`` saying which extra to install. The
module is named after the framework it adapts (as ``safetensors.torch`` is); inside it,
``import torch`` is an absolute import and finds PyTorch, not this file. Import names from it
(``from secagg.fl.torch import flatten``) rather than the module itself, whose name would
hide PyTorch's in your namespace.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
from numpy.typing import NDArray

from secagg.checks import is_any_int
from secagg.errors import ConfigurationError, MissingExtra
from secagg.fl.data import Dataset, FederatedSplit, load_digits_split
from secagg.fl.digits import DEMO_TRAINING, demo_model
from secagg.fl.fedavg import TrainingConfig
from secagg.fl.model import ModelSpec

_TORCH_MISSING: ImportError | None
try:
    import torch
    from torch import nn
except ImportError as exc:  # an optional extra: the adapters say so when first used
    _TORCH_MISSING = exc
else:
    _TORCH_MISSING = None

if TYPE_CHECKING:
    from secagg.updates import UpdateFn

__all__ = [
    "MAX_WEIGHT",
    "DigitsNet",
    "FlatEntry",
    "FlatSpec",
    "FloatDType",
    "TrainStep",
    "digits_torch_task",
    "flatten",
    "load_flat",
    "parameter_delta",
    "sgd_train_step",
    "torch_update_fn",
    "unflatten",
]

# Params.max_weight's own bound: no deployment accepts a larger weight.
MAX_WEIGHT = 2**31 - 1

# A module, or a mapping of names to tensors such as ``module.state_dict()``.
StateSource: TypeAlias = "nn.Module | Mapping[str, torch.Tensor]"
# (the local module, holding the global model; the training round) -> number of examples used
TrainStep: TypeAlias = "Callable[[nn.Module, int], int]"


def _require_torch() -> None:
    if _TORCH_MISSING is not None:
        raise MissingExtra("torch", "the PyTorch adapters", "torch") from _TORCH_MISSING


if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name imported

    def __getattr__(name: str) -> object:
        # Only reached for names this module did not define: DigitsNet when torch is missing.
        if name == "DigitsNet":
            _require_torch()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class FloatDType(StrEnum):
    """The floating-point dtypes a ``FlatSpec`` entry may have.

    Each travels as float32. float16 and bfloat16 values are float32 values, so they
    round-trip exactly; a float64 entry is rounded to the nearest float32 (24 significant
    bits, a relative error of at most 2**-24, about 6e-8) and one beyond float32's range
    (about 3.4e38) becomes infinite and is refused. Writing a vector back into a float16
    entry rounds to float16; a value beyond float16's range (65,504) is refused.
    """

    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def torch_dtype(self) -> torch.dtype:
        _require_torch()
        dtype = getattr(torch, self.value)
        assert isinstance(dtype, torch.dtype)
        return dtype

    @classmethod
    def of(cls, dtype: torch.dtype) -> FloatDType:
        name = str(dtype).removeprefix("torch.")
        try:
            return cls(name)
        except ValueError:
            raise ConfigurationError(
                f"{name} tensors cannot be aggregated: use one of "
                f"{', '.join(d.value for d in cls)} for floating-point state"
            ) from None


@dataclass(frozen=True)
class FlatEntry:
    """One floating-point ``state_dict`` entry: its name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: FloatDType
    size: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"an entry name must be a non-empty str, got {self.name!r}")
        shape = self.shape
        if not isinstance(shape, tuple) or not all(is_any_int(d) and d >= 0 for d in shape):
            raise ConfigurationError(
                f"entry {self.name!r}: shape must be a tuple of non-negative ints, got {shape!r}"
            )
        try:
            dtype = FloatDType(self.dtype)
        except ValueError:
            raise ConfigurationError(
                f"entry {self.name!r}: dtype must be one of "
                f"{', '.join(d.value for d in FloatDType)}, got {self.dtype!r}"
            ) from None
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "size", int(np.prod(shape, dtype=np.int64)))


@dataclass(frozen=True)
class FlatSpec:
    """The layout of a model's flat vector: its floating-point entries, in order.

    The vector is the concatenation of the entries, each flattened row-major, as float32.
    Only floating-point entries are in it: parameters and float buffers (BatchNorm's running
    statistics are averaged like weights, as FedAvg does). Integer and boolean buffers
    (BatchNorm's ``num_batches_tracked``) are left out: they are not sent, and each client's
    own copy is left untouched. Complex entries are refused rather than silently left out.
    Tied parameters appear under each of their names, as in ``state_dict()``; every client
    sends equal values under each, so their means stay equal.

    ``FlatSpec.of(module_or_state_dict)`` reads the layout off a model; a spec holds no
    tensors, so it can be built, compared and pickled without torch.
    """

    entries: tuple[FlatEntry, ...]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        entries = self.entries
        if not isinstance(entries, tuple) or not all(isinstance(e, FlatEntry) for e in entries):
            raise ConfigurationError("entries must be a tuple of FlatEntry")
        if not entries:
            raise ConfigurationError(
                "the model has no floating-point state: there is nothing to aggregate"
            )
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ConfigurationError("entry names must be unique")
        object.__setattr__(self, "size", sum(e.size for e in entries))

    @classmethod
    def of(cls, source: StateSource) -> FlatSpec:
        """The spec of a module's ``state_dict()``, or of a mapping of names to tensors."""
        _require_torch()
        entries: list[FlatEntry] = []
        for name, tensor in _state_of(source).items():
            if tensor.is_complex():
                raise ConfigurationError(
                    f"entry {name!r} is {tensor.dtype}: complex state cannot be aggregated"
                )
            if tensor.is_floating_point():
                entries.append(FlatEntry(name, tuple(tensor.shape), FloatDType.of(tensor.dtype)))
        return cls(tuple(entries))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def _slices(self) -> list[tuple[FlatEntry, slice]]:
        out: list[tuple[FlatEntry, slice]] = []
        offset = 0
        for entry in self.entries:
            out.append((entry, slice(offset, offset + entry.size)))
            offset += entry.size
        return out


def flatten(state: StateSource, spec: FlatSpec) -> NDArray[np.float32]:
    """The floating-point entries of ``state`` as one float32 vector in ``spec``'s layout.

    ``state`` must hold exactly ``spec``'s floating-point entries (by name, shape and dtype;
    the mapping's order does not matter) and may hold other, non-float ones, which are
    ignored. Non-finite values are refused.
    """
    _require_torch()
    tensors = _matching(state, spec, what="state")
    vector = np.empty(spec.size, dtype=np.float32)
    for entry, where in spec._slices():
        host = tensors[entry.name].detach().to(device="cpu", dtype=torch.float32)
        vector[where] = host.reshape(-1).numpy()
    _check_finite(vector, spec, what="state")
    return vector


def unflatten(
    vector: NDArray[np.floating], spec: FlatSpec, like: StateSource | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of ``spec``'s names, shapes and dtypes, read out of ``vector``.

    The vector must be 1-D, floating point (it is read as float32, the type that travels),
    ``spec.size`` long and finite. Without ``like`` the result holds the floating-point
    entries only, on the CPU. With ``like`` (a module or state dict matching ``spec``) each
    tensor goes to the device of ``like``'s entry of the same name, and the result also holds
    copies of ``like``'s other (non-float) entries: a complete state dict for
    ``load_state_dict``.
    """
    _require_torch()
    values = _check_vector(vector, spec)
    reference = None if like is None else _state_of(like)
    if reference is not None:
        _matching(reference, spec, what="like")
    flat = torch.from_numpy(values)
    result: dict[str, torch.Tensor] = {}
    for entry, where in spec._slices():
        device = torch.device("cpu") if reference is None else reference[entry.name].device
        tensor = flat[where].reshape(entry.shape).to(device=device, dtype=entry.dtype.torch_dtype)
        if entry.dtype is FloatDType.FLOAT16 and not bool(torch.isfinite(tensor).all()):
            raise ConfigurationError(
                f"entry {entry.name!r} is float16 and the vector holds a value beyond its "
                "range (65504)"
            )
        result[entry.name] = tensor
    if reference is None:
        return result
    # In ``like``'s order, with its non-float entries copied so the result shares no memory.
    return {
        name: result[name] if name in result else tensor.detach().clone()
        for name, tensor in reference.items()
    }


def load_flat(module: nn.Module, vector: NDArray[np.floating], spec: FlatSpec) -> None:
    """Write ``vector`` into ``module``'s floating-point state, in place.

    Parameters and float buffers take the vector's values (rounded to their own dtype, on
    their own device); non-float buffers are untouched. Everything is checked before the
    first write, so a refused vector leaves the module as it was. Parameters keep their
    identity: an optimizer built on them stays valid.
    """
    _require_torch()
    if not isinstance(module, nn.Module):
        raise ConfigurationError(f"load_flat needs a torch.nn.Module, got {type(module).__name__}")
    current = module.state_dict()
    floats = unflatten(vector, spec, like=current)
    floats = {name: floats[name] for name in spec.names}
    # load_state_dict copies into the existing tensors under no_grad and honours the
    # module's own load hooks; strict=False because the non-float entries are left out.
    outcome = module.load_state_dict(floats, strict=False)
    assert not outcome.unexpected_keys, outcome.unexpected_keys  # unflatten checked the names


def parameter_delta(before: StateSource, after: StateSource, spec: FlatSpec) -> NDArray[np.float32]:
    """``after - before`` over ``spec``'s entries, as a float32 vector: a FedAvg update.

    Each difference is taken in float64 and then rounded, so every value is the float32
    nearest the true difference of the two states (not the difference of two roundings).
    ``before`` must be a copy (``{k: v.clone() for k, v in module.state_dict().items()}``):
    ``module.state_dict()`` shares memory with the module, so it changes as the module
    trains. Non-finite differences are refused.
    """
    _require_torch()
    start = _matching(before, spec, what="before")
    end = _matching(after, spec, what="after")
    delta = np.empty(spec.size, dtype=np.float32)
    for entry, where in spec._slices():
        a = start[entry.name].detach().to(device="cpu", dtype=torch.float64)
        b = end[entry.name].detach().to(device="cpu", dtype=torch.float64)
        delta[where] = (b - a).reshape(-1).numpy()
    _check_finite(delta, spec, what="update")
    return delta


def torch_update_fn(
    model: nn.Module | Callable[[], nn.Module],
    train_step: TrainStep,
    *,
    spec: FlatSpec | None = None,
    weight_fn: Callable[[int], int] | None = None,
    max_weight: int = MAX_WEIGHT,
) -> UpdateFn:
    """The ``UpdateFn`` a ``SecAggClient`` calls, from a module and a training function.

    ``model`` is the client's local module, or a zero-argument factory called once, now, to
    build it. Each call ``update(global_vector, step)``:

    1. writes the global model into the module with ``load_flat`` (non-float buffers keep
       their local values across rounds);
    2. runs ``train_step(module, step)``, which trains the module in place, sets its
       train/eval mode itself, and returns the number of examples it trained on: an int >= 0;
    3. returns ``(parameter_delta(loaded, trained), weight)``: the float32 update relative to
       the model as loaded (after rounding to the module's own dtypes) and the FedAvg weight,
       ``weight_fn(examples)`` (default: the examples themselves; ``lambda n: 1`` gives a
       plain mean).

    The weight must be an int in ``[0, max_weight]``; set ``max_weight`` to the deployment's
    ``Params.max_weight`` so an oversize weight is refused here, by name, rather than by the
    protocol client. A zero weight contributes nothing to the aggregate. ``spec`` defaults to
    ``FlatSpec.of(module)`` and, if given, must equal it. The adapter itself adds no
    randomness and runs on whatever device the module is on: the result is as deterministic
    as ``train_step`` is (``sgd_train_step`` is, given its seed).
    """
    _require_torch()
    module = model if isinstance(model, nn.Module) else _build(model)
    actual = FlatSpec.of(module)
    if spec is None:
        spec = actual
    elif spec != actual:
        raise ConfigurationError("spec does not describe the module: use FlatSpec.of(module)")
    if not is_any_int(max_weight) or not 1 <= max_weight <= MAX_WEIGHT:
        raise ConfigurationError(
            f"max_weight must be an int in [1, {MAX_WEIGHT}], got {max_weight!r}"
        )
    layout = spec

    def update(global_model: NDArray[np.float32], step: int) -> tuple[NDArray[np.floating], int]:
        if not is_any_int(step) or step < 0:
            raise ConfigurationError(f"step must be a non-negative int, got {step!r}")
        load_flat(module, global_model, layout)
        loaded = {
            name: t.detach().clone() for name, t in _matching(module, layout, "module").items()
        }
        examples = train_step(module, int(step))
        if not is_any_int(examples) or examples < 0:
            raise ConfigurationError(
                f"train_step must return its number of examples (an int >= 0), got {examples!r}"
            )
        weight = int(examples) if weight_fn is None else weight_fn(int(examples))
        if not is_any_int(weight) or not 0 <= weight <= max_weight:
            raise ConfigurationError(
                f"the weight must be an int in [0, {max_weight}], got {weight!r}: raise "
                "max_weight (and the deployment's Params.max_weight) or cap it in weight_fn"
            )
        return parameter_delta(loaded, module, layout), int(weight)

    return update


def sgd_train_step(data: Dataset, config: TrainingConfig, *, client_index: int) -> TrainStep:
    """Plain minibatch SGD on ``data`` with cross-entropy: ``local_update``'s loop in torch.

    Round ``step`` visits the examples in the order ``local_update`` uses for the same
    ``(config.seed, step, client_index)`` (a numpy generator seeded by that triple, nothing
    secret), for ``config.local_epochs`` epochs of ``config.batch_size``: plain SGD (no
    momentum, no weight decay, so nothing carries over from round to round) on the
    parameters that require gradients. It returns ``len(data)``; a client without data trains
    nothing and returns 0. The module must map ``data.x`` (float32) to logits; it is put in
    training mode.
    """
    _require_torch()
    if not is_any_int(client_index) or client_index < 0:
        raise ConfigurationError(f"client_index must be a non-negative int, got {client_index!r}")
    x = torch.from_numpy(np.array(data.x))  # a writable copy: Dataset's arrays are read-only
    y = torch.from_numpy(np.array(data.y))
    n = len(data)

    def train(module: nn.Module, step: int) -> int:
        if n == 0:
            return 0
        rng = np.random.default_rng([config.seed, step, client_index])
        first = next(module.parameters(), None)
        if first is None:
            raise ConfigurationError("the module has no parameters to train")
        device = first.device
        inputs, labels = x.to(device), y.to(device)
        params = [p for p in module.parameters() if p.requires_grad]
        module.train()
        for _ in range(config.local_epochs):
            order = torch.from_numpy(rng.permutation(n)).to(device)
            for begin in range(0, n, config.batch_size):
                batch = order[begin : begin + config.batch_size]
                loss = nn.functional.cross_entropy(module(inputs[batch]), labels[batch])
                grads = torch.autograd.grad(loss, params)
                # Plain SGD written out: torch.optim would add nothing here, and its first use
                # imports torch._dynamo, 1-2 s of every client process's start-up.
                with torch.no_grad():
                    for param, grad in zip(params, grads, strict=True):
                        param.sub_(grad, alpha=config.learning_rate)
        return n

    return train


if _TORCH_MISSING is None:

    class DigitsNet(nn.Module):
        """``ModelSpec``'s classifier in PyTorch, parameter for parameter.

        A one-hidden-layer ReLU MLP (or softmax regression when ``hidden == 0``) whose
        parameters are ``w1`` (features x hidden), ``b1``, ``w2`` (hidden x classes), ``b2``
        (or ``w``, ``b``): ``ModelSpec``'s layers, in its order and orientation (inputs times
        weights, unlike ``nn.Linear``'s transposed weight). Its flat vector is therefore
        exactly ``ModelSpec``'s, and ``DigitsNet(architecture, seed=s)`` starts from
        ``architecture.init(s)``. Parameters are float32; so is the arithmetic (the numpy
        model computes in float64), so outputs agree to float32 rounding.
        """

        def __init__(self, architecture: ModelSpec, *, seed: int = 0) -> None:
            super().__init__()
            if not isinstance(architecture, ModelSpec):
                raise ConfigurationError(
                    f"DigitsNet needs a ModelSpec, got {type(architecture).__name__}"
                )
            self.architecture = architecture
            a = architecture
            shapes: list[tuple[str, tuple[int, ...]]] = (
                [("w", (a.features, a.classes)), ("b", (a.classes,))]
                if a.hidden == 0
                else [
                    ("w1", (a.features, a.hidden)),
                    ("b1", (a.hidden,)),
                    ("w2", (a.hidden, a.classes)),
                    ("b2", (a.classes,)),
                ]
            )
            for name, shape in shapes:
                self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
            load_flat(self, architecture.init(seed), FlatSpec.of(self))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.architecture.hidden == 0:
                return x @ self.get_parameter("w") + self.get_parameter("b")
            hidden = torch.relu(x @ self.get_parameter("w1") + self.get_parameter("b1"))
            return hidden @ self.get_parameter("w2") + self.get_parameter("b2")


@functools.cache
def _split(clients: int, seed: int) -> FederatedSplit:
    return load_digits_split(clients, seed=seed)


def digits_torch_task(client_id: int, clients: int, seed: int) -> UpdateFn:
    """``secagg.fl.digits.digits_task`` in PyTorch: same split, model layout and training.

    Client ``client_id`` of ``clients`` trains a ``DigitsNet`` on its share of the non-IID
    digits split ``load_digits_split(clients, seed=seed)`` with the demo's ``TrainingConfig``
    (seeded by ``seed``), visiting its examples in the same order as the numpy task. Its
    vector layout is ``ModelSpec``'s, so the global model is ``demo_model(split).init(seed)``
    as for the numpy task, and the updates agree with the numpy task's to float32 rounding.
    The weight is the client's number of examples.
    """
    _require_torch()
    for name, value in (("clients", clients), ("seed", seed)):
        if not is_any_int(value) or value < 0:
            raise ConfigurationError(f"{name} must be a non-negative int, got {value!r}")
    if not is_any_int(client_id) or not 0 <= client_id < clients:
        raise ConfigurationError(f"client_id must be an int in [0, {clients}), got {client_id!r}")
    split = _split(int(clients), int(seed))
    config = TrainingConfig(
        local_epochs=DEMO_TRAINING.local_epochs,
        batch_size=DEMO_TRAINING.batch_size,
        learning_rate=DEMO_TRAINING.learning_rate,
        seed=int(seed),
    )
    data = split.clients[client_id]
    train = sgd_train_step(data, config, client_index=int(client_id))

    def train_on_one_thread(module: nn.Module, step: int) -> int:
        # 64 x 64 matrices and batches of 16: intra-op threads only add synchronisation, and
        # on a busy machine (the demo runs ten clients on two cores) their spin-waits turned
        # rounds of 5 ms into rounds of up to 2 s (measured). Scoped to this call, and
        # per-thread under OpenMP, so it leaves the rest of the process alone.
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return train(module, step)
        finally:
            torch.set_num_threads(previous)

    # The initial values do not matter: every round starts by loading the global model.
    return torch_update_fn(DigitsNet(demo_model(split), seed=int(seed)), train_on_one_thread)


# --- internals ---


def _build(factory: Callable[[], nn.Module]) -> nn.Module:
    if not callable(factory):
        raise ConfigurationError(
            f"model must be a torch.nn.Module or a function returning one, got "
            f"{type(factory).__name__}"
        )
    module = factory()
    if not isinstance(module, nn.Module):
        raise ConfigurationError(
            f"the model factory returned a {type(module).__name__}, not a torch.nn.Module"
        )
    return module


def _state_of(source: StateSource) -> Mapping[str, torch.Tensor]:
    """The named tensors of a module's ``state_dict()`` or of a mapping, checked."""
    state = source.state_dict() if isinstance(source, nn.Module) else source
    if not isinstance(state, Mapping):
        raise ConfigurationError(
            f"expected a torch.nn.Module or a mapping of names to tensors, got "
            f"{type(source).__name__}"
        )
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ConfigurationError(
                f"state entries must map str to torch.Tensor; {name!r} maps to "
                f"{type(tensor).__name__}"
            )
        if tensor.layout != torch.strided:
            raise ConfigurationError(f"entry {name!r} is {tensor.layout}: use dense tensors")
    return state


def _matching(source: StateSource, spec: FlatSpec, what: str) -> dict[str, torch.Tensor]:
    """``source``'s floating-point entries by name, after checking they are ``spec``'s."""
    state = _state_of(source)
    floats = {name: t for name, t in state.items() if t.is_floating_point() or t.is_complex()}
    missing = [name for name in spec.names if name not in floats]
    expected = set(spec.names)
    extra = [name for name in floats if name not in expected]
    if missing or extra:
        raise ConfigurationError(
            f"{what} does not match the spec: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(map(repr, missing[:3]))}" if missing else "",
                    f"unexpected {', '.join(map(repr, extra[:3]))}" if extra else "",
                )
                if part
            )
        )
    for entry in spec.entries:
        tensor = floats[entry.name]
        if tuple(tensor.shape) != entry.shape:
            raise ConfigurationError(
                f"{what} entry {entry.name!r} has shape {tuple(tensor.shape)}, "
                f"the spec {entry.shape}"
            )
        if tensor.dtype != entry.dtype.torch_dtype:
            raise ConfigurationError(
                f"{what} entry {entry.name!r} is {tensor.dtype}, the spec {entry.dtype.value}"
            )
    return {entry.name: floats[entry.name] for entry in spec.entries}


def _check_vector(vector: NDArray[np.floating], spec: FlatSpec) -> NDArray[np.float32]:
    """A private float32 copy of ``vector``, after checking its type, length and values."""
    array = np.asarray(vector)
    if array.dtype.kind != "f":
        raise ConfigurationError(f"the vector must be floating point, got {array.dtype}")
    if array.shape != (spec.size,):
        raise ConfigurationError(
            f"the vector has shape {array.shape}, the spec needs ({spec.size},): "
            "the model and the vector come from different architectures"
        )
    with np.errstate(over="ignore"):  # a float64 value beyond float32's range: refused below
        values = np.array(array, dtype=np.float32, copy=True)
    _check_finite(values, spec, what="vector")
    return values


def _check_finite(vector: NDArray[np.float32], spec: FlatSpec, what: str) -> None:
    if np.isfinite(vector).all():
        return
    for entry, where in spec._slices():
        if not np.isfinite(vector[where]).all():
            raise ConfigurationError(
                f"the {what} has non-finite values (after rounding to float32) in "
                f"entry {entry.name!r}"
            )
