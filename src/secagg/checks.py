"""The type checks every validator makes, written once.

``bool`` is an ``int`` to Python, and never a count, a size or a seed to us: both checks
refuse it.
"""

from __future__ import annotations

import numbers

__all__ = ["is_any_int", "is_int", "is_number"]


def is_int(value: object) -> bool:
    """A Python ``int`` (what a deployment file or a keyword argument gives), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_any_int(value: object) -> bool:
    """An integer of any kind, numpy's included (what an array hands over), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An ``int`` or a ``float``, not a bool (finiteness is the caller's rule)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
