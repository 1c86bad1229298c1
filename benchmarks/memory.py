"""The memory of a process and everything it started, as benchmarks report it (Linux /proc).

Proportional set size (PSS): a page shared between processes (a forked worker's copy of its
parent, Ray's object store) counts once, split between them, so the sum over a process tree
is what the tree really occupies.
"""

from __future__ import annotations

import os


def meminfo() -> dict[str, int]:
    """The machine's /proc/meminfo, each figure in bytes."""
    fields: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) * 1024
    return fields


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (forked workers, Ray's daemons and their
    workers alike)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while it was being read
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pss_bytes(pid: int) -> int:
    """One process's PSS; 0 once it has ended."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss_bytes(root: int) -> int:
    """The PSS of ``root`` and every process descended from it."""
    return sum(pss_bytes(pid) for pid in process_tree(root))
