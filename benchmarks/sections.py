"""BENCHMARKS.md is written by several benchmarks; each owns its sections and leaves the
others alone.

``benchmarks/run.py`` owns everything from the top down to the first section another
benchmark owns; every other benchmark owns exactly one ``## `` section, named by its marker
(its heading line), which ``write_section`` replaces in place or appends.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = ROOT / "BENCHMARKS.md"

# The heading of every section a benchmark other than run.py owns.
OWNED = (
    "## Load: one coordinator, many clients",
    "## Flower: secagg's integration vs Flower's SecAgg+ (same run)",
    "## Comparing schemes: masking beside CKKS and plaintext (same run)",
    "## Distributed DP: privacy against utility on the digits",
    "## Distributed DP: removable noise layers",
    "## Ray backend",
    "## Active mode: the survivor certificate's cost per client",
    "## Primitives: the speeds the tests count instead of timing",
    "## Command-line start-up: `--help` beside `python -c pass`",
    "## Sessions: a session's round beside a one-shot round and plaintext (same run)",
    "## Session agreement at 20,000 clients: the commit and advertise stages alone",
    # Measured by hand (two checkouts side by side), kept as written.
    "## The client journal's cost in Flower (side by side)",
    "## Refactors: the same round before and after (same run, alternating)",
)


def _split(text: str) -> list[str]:
    """The file as its top part and its ``## `` sections, in order."""
    parts = text.split("\n## ")
    return [parts[0]] + ["## " + p for p in parts[1:]]


def owned_sections(text: str) -> str:
    """Every section another benchmark owns, as they stand, for run.py to keep."""
    kept = [s for s in _split(text) if s.split("\n", 1)[0] in OWNED]
    return "\n".join(s.rstrip() + "\n" for s in kept)


def write_section(marker: str, section: str, path: Path = PATH) -> None:
    """Replace the section headed ``marker`` (or append it); ``section`` starts with it."""
    if marker not in OWNED:
        raise ValueError(f"{marker!r} is not a section a benchmark owns")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    parts = _split(text)
    body = section.rstrip() + "\n"
    for k, part in enumerate(parts):
        if part.split("\n", 1)[0] == marker:
            parts[k] = body
            break
    else:
        parts.append(body)
    path.write_text("\n".join(p.rstrip() + "\n" for p in parts))
