"""The interface every scheme implements, and the facts a report states about one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from secagg.hazmat.randomness import Randomness
from secagg.protocol.codec import Message
from secagg.protocol.runner import RoundClient, RoundServer
from secagg.protocol.stages import Stage

__all__ = ["Disclosure", "Scheme", "SchemeKind"]


class SchemeKind(StrEnum):
    PLAINTEXT = "plaintext"
    MASKING = "masking"
    CKKS = "ckks"


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


class Scheme(Protocol):
    """A deployment of one scheme: the parameters both sides fix before any round, and for
    each side the keys it holds (a simulation holds every client's)."""

    @property
    def kind(self) -> SchemeKind: ...

    @property
    def dim(self) -> int: ...

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

    def round_config(
        self, cohort: Sequence[int], *, nonce: bytes, round_id: int = 0, task_hash: bytes = ...
    ) -> Message:
        """What the server fixes for one round of this deployment."""
        ...

    def server(self, config: Message) -> RoundServer: ...

    def client(self, config: Message, client_id: int, rng: Randomness) -> RoundClient:
        """A client for ``config``, which must first pass ``check``."""
        ...

    def check(self, config: Message, client_id: int) -> None:
        """The client's policy: raise ``ClientAbort`` for a configuration it must not run."""
        ...

    def error_bound(self, clients: int) -> float:
        """The largest error the scheme may add to a coordinate of the mean of ``clients``."""
        ...

    def disclosure(self, clients: int) -> Disclosure: ...

    def describe(self, clients: int) -> dict[str, object]:
        """Scheme-specific facts for reports (degree, threshold, ring width, parameters)."""
        ...
