"""Settings for the whole suite.

Hypothesis's default deadline (200 ms an example) fails a property test whose example is slow
on a busy machine: a test that depends on timing, which the suite forbids. Every property test
runs without one; a hang is pytest-timeout's to catch.
"""

from __future__ import annotations

try:
    from hypothesis import settings
except ImportError:  # the Flower venv runs tests/flower without hypothesis
    pass
else:
    settings.register_profile("secagg", deadline=None)
    settings.load_profile("secagg")
