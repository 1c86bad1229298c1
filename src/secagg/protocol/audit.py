"""How a client's audit names what it did: short, and never a secret."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["listed_ids"]

_SHOWN = 16  # ids an audit line lists before it says how many more


def listed_ids(ids: Iterable[int]) -> str:
    """``[1,2,5] (3)``; the first 16 and ``,...`` beyond them; ``none`` for no id."""
    listed = sorted(int(i) for i in ids)
    if not listed:
        return "none"
    shown = ",".join(str(i) for i in listed[:_SHOWN])
    return f"[{shown}{',...' if len(listed) > _SHOWN else ''}] ({len(listed)})"
