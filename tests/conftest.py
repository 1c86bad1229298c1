"""Settings for the whole suite.

Hypothesis's default deadline (200 ms an example) fails a property test whose example is slow
on a busy machine: a test that depends on timing, which the suite forbids. Every property test
runs without one; a hang is pytest-timeout's to catch.
"""

from __future__ import annotations

import pytest

try:
    from hypothesis import settings
except ImportError:  # the Flower venv runs tests/flower without hypothesis
    pass
else:
    settings.register_profile("secagg", deadline=None)
    settings.load_profile("secagg")


# Under pytest-xdist (`make test`'s two workers) a file's tests run together in one worker, as
# they would alone, so a module's fixture starts once. The files that start a local Ray
# cluster share one group: two clusters starting at once on two cores time out in Ray's own
# start-up (its raylet's deadline), which no test can wait out.
_RAY_GROUP = "ray"
_RAY_FILES = frozenset({"tests/backends/test_ray_backend.py", "tests/test_readme.py"})


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            path = item.nodeid.split("::", 1)[0]
            group = _RAY_GROUP if path in _RAY_FILES else path
            item.add_marker(pytest.mark.xdist_group(group))
