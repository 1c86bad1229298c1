"""No test reads a clock.

A test that asserts on elapsed wall time fails on a machine busy with other work, and a suite
that is red only because the machine was busy teaches people to ignore red. What a timed test
wanted to show is a count asserted exactly (operations, vector draws, passes, calls, the reason
a round recorded), or a figure in ``benchmarks/``.

A test may wait for an event and fail if it never comes: ``tests/waiting.py`` (``wait_until``)
is the one module of ``tests/`` that reads a clock, for that. This module parses every other
test file and refuses any reference to the ``time`` module's clocks (``time.monotonic``,
``time.perf_counter``, ``time.time`` and the rest, called or passed along, however imported),
an event loop's clock (``loop.time()``) and ``timeit``.

Left alone, on purpose: sleeping (a test may let time pass; it then asserts on what happened,
not on how long it took), faking a clock (``monkeypatch.setattr(time, "time", ...)`` names it
by a string), deadlines handed to a wait (``process.wait(timeout=60)``, pytest-timeout: a hang
fails instead of hanging) and calendar dates (``datetime.now()`` for a certificate's validity
period, which is not a duration).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
WAITING = TESTS / "waiting.py"

# The time module's clocks; time.sleep and time.strftime and the like are not among them.
CLOCKS = frozenset(
    {
        "time",
        "time_ns",
        "perf_counter",
        "perf_counter_ns",
        "monotonic",
        "monotonic_ns",
        "process_time",
        "process_time_ns",
        "thread_time",
        "thread_time_ns",
        "clock_gettime",
        "clock_gettime_ns",
    }
)


def clock_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) for every clock the source reads or hands on."""
    if "time" not in source:  # every form found below spells it: most files need no parse
        return []
    tree = ast.parse(source)
    time_modules: set[str] = set()  # the names the time module goes by here
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "time":
                    time_modules.add(alias.asname or "time")
                elif alias.name == "timeit":
                    found.append((node.lineno, "import timeit"))
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "timeit"):
            for alias in node.names:
                if node.module == "timeit" or alias.name in CLOCKS:
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in time_modules
            and node.attr in CLOCKS
        ):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "time"
            and not (isinstance(node.func.value, ast.Name) and node.func.value.id in time_modules)
            and not node.args
            and not node.keywords
        ):
            found.append((node.lineno, f"{ast.unparse(node.func)}() (an event loop's clock)"))
    return sorted(found)


def test_no_test_reads_a_clock_outside_the_waiting_helper() -> None:
    reads = [
        f"{path.relative_to(TESTS.parent)}:{line}: {what}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != WAITING
        for line, what in clock_reads(path.read_text())
    ]
    assert not reads, (
        "tests read a clock; assert a count instead, move a speed figure to benchmarks/, or "
        "wait with tests.waiting.wait_until:\n" + "\n".join(reads)
    )


def test_the_waiting_helper_is_the_clock_the_exemption_is_for() -> None:
    assert [what for _, what in clock_reads(WAITING.read_text())] == [
        "time.monotonic",
        "time.monotonic",
    ]


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("import time\nstart = time.perf_counter()\nassert time.perf_counter() - start < 0.5\n",
         ["time.perf_counter", "time.perf_counter"]),
        ("import time\nassert time.monotonic() < deadline\n", ["time.monotonic"]),
        ("import time as t\nx = t.time()\n", ["t.time"]),
        ("from time import perf_counter as now\n", ["from time import perf_counter"]),
        ("import time\nclock = time.monotonic_ns\n", ["time.monotonic_ns"]),
        ("x = loop.time()\n", ["loop.time() (an event loop's clock)"]),
        ("x = asyncio.get_running_loop().time()\n",
         ["asyncio.get_running_loop().time() (an event loop's clock)"]),
        ("import timeit\n", ["import timeit"]),
        ("from timeit import default_timer\n", ["from timeit import default_timer"]),
    ],
)  # fmt: skip
def test_the_check_finds_a_clock_in_each_form(source: str, what: list[str]) -> None:
    assert [found for _, found in clock_reads(source)] == what


@pytest.mark.parametrize(
    "source",
    [
        "import time\ntime.sleep(0.5)\n",
        'import time\nmonkeypatch.setattr(time, "time", lambda: later)\n',
        "process.wait(timeout=60)\n",
        "import datetime as dt\nnow = dt.datetime.now(dt.UTC)\n",
        "from tests.waiting import wait_until\nwait_until(ready, 'the server')\n",
        "time = 3\nx = record.time\n",
    ],
)
def test_the_check_lets_sleeps_fakes_waits_and_dates_be(source: str) -> None:
    assert clock_reads(source) == []
