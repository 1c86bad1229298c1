"""The schemes there are, and what the rest of the house needs to know of each before it
builds one: whether the service carries it, the deployment file's section of its own, the
optional dependency it needs, whether distributed DP runs on it.

Entries are plain data: reading the registry imports no scheme (``secagg --help`` lists the
choices without loading TenSEAL). A new scheme is its package under ``secagg.schemes`` and
one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from secagg.errors import ConfigurationError

__all__ = ["SCHEMES", "SchemeEntry", "SchemeKind", "scheme_entry", "served_schemes"]


class SchemeKind(StrEnum):
    """Which scheme: the name a deployment file, a flag and a report use."""

    PLAINTEXT = "plaintext"
    MASKING = "masking"
    CKKS = "ckks"


@dataclass(frozen=True)
class SchemeEntry:
    """One scheme, as the service, the CLI and the reports see it.

    ``title`` is how a sentence names it, ``summary`` what it is in a few words;
    ``served``: the service's wire schema carries it (the coordinator and ``secagg join``);
    ``section``: the deployment file's section of its own, beside ``[round]``; ``extra``: the
    optional dependency it needs (``pip install 'secagg[extra]'``); ``dp``: clients can add
    distributed DP noise before it hides their updates.
    """

    kind: SchemeKind
    title: str  # how a sentence names it: "CKKS needs the he extra"
    summary: str
    served: bool
    section: str | None = None
    extra: str | None = None
    dp: bool = False


SCHEMES: tuple[SchemeEntry, ...] = (
    SchemeEntry(
        SchemeKind.PLAINTEXT,
        "plaintext",
        "every update in the clear: the baseline, in process only",
        served=False,
    ),
    SchemeEntry(
        SchemeKind.MASKING,
        "masking",
        "SecAgg and SecAgg+ pairwise masks, semi-honest or active",
        served=True,
        dp=True,
    ),
    SchemeEntry(
        SchemeKind.CKKS,
        "CKKS",
        "CKKS homomorphic encryption; every client holds the key",
        served=True,
        section="ckks",
        extra="he",
    ),
)


def scheme_entry(name: str) -> SchemeEntry:
    """The entry of the scheme called ``name`` (a ``ConfigurationError`` naming the choices)."""
    for entry in SCHEMES:
        if entry.kind.value == name:
            return entry
    choices = ", ".join(e.kind.value for e in SCHEMES)
    raise ConfigurationError(f"unknown scheme {name!r}: choose one of {choices}")


def served_schemes() -> tuple[SchemeEntry, ...]:
    """The schemes a deployment of the service can run."""
    return tuple(e for e in SCHEMES if e.served)
