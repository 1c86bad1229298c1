"""The interface every scheme implements, and the facts a report states about one.

Three shapes, each declared once here and implemented by every scheme in its own package:

- ``Scheme``: a deployment of the scheme for one side (its keys), which the round engine
  drives: the opening message of a round, the server and client state machines, the policy;
- ``SchemeSettings``: what a deployment fixes for the scheme before any round (its
  ``[round]`` section and the scheme's own), the sizes its messages can reach, and the
  ``Scheme`` an in-process run builds from it;
- ``RoundOpening``: the message that opens a round, whatever the scheme.

The rest of the house asks these, never "which scheme is this?" (``tests/test_layers.py``
refuses an ``isinstance`` on a scheme's class outside its package); ``secagg.schemes.registry``
lists the schemes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from secagg.hazmat.randomness import Randomness
from secagg.protocol.runner import RoundClient, RoundServer
from secagg.protocol.stages import Stage
from secagg.schemes.registry import SchemeKind

if TYPE_CHECKING:
    from secagg.dp.calibrate import DpPlan
    from secagg.hazmat.keys import Ed25519SigningKey
    from secagg.hazmat.prg import ApplyMasks

__all__ = [
    "Disclosure",
    "DpFacts",
    "RoundOpening",
    "Scheme",
    "SchemeFacts",
    "SchemeSettings",
]


@dataclass(frozen=True)
class Disclosure:
    """What a scheme lets the server see, in words a report can print.

    ``server_learns``: ``everything`` (each update), ``the sum`` or ``nothing`` (ciphertexts;
    a key holder decrypts the sum). ``to_see_one_update``: who must collude to read one
    client's update. ``tolerates``: the dropout the round survives.
    """

    server_learns: str
    to_see_one_update: str
    tolerates: str


@dataclass(frozen=True)
class DpFacts:
    """A round's distributed DP, as reports state it."""

    mechanism: str
    epsilon_target: float
    delta: float
    l2_clip: float
    noise_multiplier: float
    wrap_probability_bound: float


@dataclass(frozen=True)
class SchemeFacts:
    """What a scheme fixes for a round of ``clients``, typed for the code that reads it.

    ``protocol`` names what runs (``secagg``, ``secagg+``, ``ckks``, ``plaintext``), and
    ``title`` says it with what it fixes, in one line (``secagg+ k=4 t=3, 24-bit ring``);
    ``degree`` and ``threshold`` are the neighbours each client shares its secrets with and
    how many of them must answer (None: the scheme shares nothing); ``clip`` bounds each
    value (or, with DP, each update's L2 norm; None: nothing is clipped); ``parameters`` are
    the scheme's other facts, in the order reports print them.
    """

    protocol: str
    title: str
    clip: float | None
    min_cohort: int
    degree: int | None = None
    threshold: int | None = None
    ring_bits: int | None = None
    dp: DpFacts | None = None
    parameters: Mapping[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The facts as a report's JSON states them (the keys reports have always used)."""
        out: dict[str, object] = {}
        if self.dp is not None:
            out |= {
                "dp_mechanism": self.dp.mechanism,
                "dp_epsilon_target": self.dp.epsilon_target,
                "dp_delta": self.dp.delta,
                "dp_l2_clip": self.dp.l2_clip,
                "dp_noise_multiplier": self.dp.noise_multiplier,
                "dp_wrap_probability_bound": self.dp.wrap_probability_bound,
            }
        return out | dict(self.parameters)


class RoundOpening(Protocol):
    """The message that opens a round, in every scheme: what the server fixed for it.

    ``config_id`` is its digest, which every later message of the round carries; ``terms``
    is what a client agrees to by running it, in the words of the client's audit."""

    @property
    def round_id(self) -> int: ...

    @property
    def client_ids(self) -> tuple[int, ...]: ...

    @property
    def dim(self) -> int: ...

    @property
    def min_cohort(self) -> int: ...

    @property
    def task_hash(self) -> bytes: ...

    @property
    def config_id(self) -> bytes: ...

    def encode(self) -> bytes: ...

    def terms(self) -> str: ...


class Scheme(Protocol):
    """A deployment of one scheme: the parameters both sides fix before any round, and for
    each side the keys it holds (a simulation holds every client's)."""

    @property
    def kind(self) -> SchemeKind: ...

    @property
    def dim(self) -> int: ...

    @property
    def min_cohort(self) -> int:
        """The fewest inputs any revealed sum of this deployment may hold."""
        ...

    def reference(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        """An update as the scheme clips it: the aggregate is the mean of these."""
        ...

    def epsilon(self, included: int) -> float | None:
        """The DP epsilon of a revealed sum of ``included`` inputs (None: no DP)."""
        ...

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages a client can fail to answer, in order (for drop schedules)."""
        ...

    @property
    def dp_plan(self) -> DpPlan | None:
        """The calibrated distributed DP every client of this deployment adds (None: none)."""
        ...

    def round_config(
        self, cohort: Sequence[int], *, nonce: bytes, round_id: int = 0, task_hash: bytes = ...
    ) -> RoundOpening:
        """What the server fixes for one round of this deployment."""
        ...

    def server(self, config: RoundOpening) -> RoundServer: ...

    def client(self, config: RoundOpening, client_id: int, rng: Randomness) -> RoundClient:
        """A client for ``config``, which must first pass ``check``."""
        ...

    def check(self, config: RoundOpening, client_id: int) -> None:
        """The client's policy: raise ``ClientAbort`` for a configuration it must not run."""
        ...

    def error_bound(self, clients: int) -> float:
        """The largest error the scheme may add to a coordinate of the mean of ``clients``."""
        ...

    def disclosure(self, clients: int) -> Disclosure: ...

    def facts(self, clients: int) -> SchemeFacts:
        """What a round of ``clients`` runs under, for reports and the ledger."""
        ...

    def signing_as(
        self, client_id: int, signing_key: Ed25519SigningKey, pki: Mapping[int, bytes]
    ) -> Scheme:
        """This deployment on one client's device: able to sign as ``client_id`` where the
        scheme signs (masking's active mode), checking peers against ``pki``."""
        ...

    def wrapping_masks(self, wrap: Callable[[ApplyMasks], ApplyMasks]) -> Scheme:
        """This deployment with its server's mask applier passed through ``wrap`` (to time
        unmasking); a scheme without masks returns itself."""
        ...


@runtime_checkable
class SchemeSettings(Protocol):
    """What a deployment fixes for its scheme before any round: the ``[round]`` keys every
    scheme shares (here), its own section, and what follows from them.

    A coordinator needs ``largest_message_bytes`` (gRPC's size caps on both ends) and
    ``check_min_clients`` (a typo in the deployment file is one line at start-up);
    ``simulated`` is the ``Scheme`` an in-process run of every client builds.
    """

    @property
    def kind(self) -> SchemeKind: ...

    @property
    def dim(self) -> int: ...

    @property
    def max_clients(self) -> int: ...

    @property
    def max_weight(self) -> int: ...

    @property
    def min_cohort(self) -> int: ...

    @property
    def dp_plan(self) -> DpPlan | None: ...

    def largest_message_bytes(self) -> int:
        """The largest protocol message of a round of ``max_clients`` (its opening included)."""
        ...

    def opening_message_bytes(self) -> int:
        """The size of a round's opening message beyond its fixed fields (a transport that
        carries it beside the model adds the two)."""
        ...

    def check_min_clients(self, clients: int) -> None:
        """Raise ``ConfigurationError`` if the smallest cohort cannot run a round."""
        ...

    def simulated(
        self, client_ids: Sequence[int], rng: Randomness, *, apply_masks: ApplyMasks | None = None
    ) -> Scheme:
        """The scheme with every listed client's keys, for an in-process run."""
        ...
