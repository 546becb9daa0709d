"""A mesh's processes as /proc shows them: their CPU time (user + system) by kind over a
stretch of load, what each process spent per query, which stays steadier than any rate
on a shared machine; and their memory."""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("frontend", "selection", "model_container")
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _process_table() -> tuple[dict[int, list[int]], dict[int, str]]:
    """Every process's children, and its command line, now."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children, commands


@dataclass(frozen=True)
class TreeMemory:
    """The memory of a process tree (MB). `pss_mb` is what the machine gives it: each
    shared page (the interpreter's and libraries' code, mapped by every process) counted
    once, split among the processes that map it; `rss_mb` counts such a page once per
    process, so it grows with the number of processes more than the memory used does."""

    pss_mb: float
    rss_mb: float
    processes: int


def tree_memory(root: int) -> TreeMemory:
    """The memory of `root` and all its descendants."""
    children, _ = _process_table()
    pss_kb = rss_kb = count = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        pss_kb += _kb(rollup, "Pss")
        rss_kb += _kb(rollup, "Rss")
        count += 1
        todo.extend(children.get(pid, []))
    return TreeMemory(pss_kb / 1024, rss_kb / 1024, count)


def _kb(rollup: str, field_name: str) -> int:
    found = re.search(rf"^{field_name}:\s+(\d+) kB", rollup, re.MULTILINE)
    return int(found.group(1)) if found else 0


def mesh_processes(root: int) -> dict[str, list[int]]:
    """The service processes under `root` (at any depth), by kind (from their command
    lines), with the processes they started (a container's worker processes)."""
    children, commands = _process_table()
    found: dict[str, list[int]] = {kind: [] for kind in KINDS}
    todo: list[tuple[int, str | None]] = [(pid, None) for pid in children.get(root, [])]
    while todo:  # a process counts for its nearest service ancestor (a container's workers)
        pid, kind = todo.pop()
        kind = next((k for k in KINDS if f"services.{k}" in commands.get(pid, "")), kind)
        if kind is not None:
            found[kind].append(pid)
        todo.extend((child, kind) for child in children.get(pid, []))
    return found


def cpu_s(pid: int) -> float:
    """CPU seconds `pid` has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (a load generator run to its end)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuUse:
    """CPU seconds per process kind over one stretch; `load` is the load generator's."""

    seconds: dict[str, float] = field(default_factory=dict)

    def per_query_ms(self, kind: str, queries: int) -> float:
        return 1000 * self.seconds.get(kind, 0.0) / max(queries, 1)

    @property
    def mesh_s(self) -> float:
        return sum(v for k, v in self.seconds.items() if k in KINDS)


@contextmanager
def measured(pids: dict[str, list[int]]) -> Iterator[CpuUse]:
    """CPU used by `pids` (by kind) and by child processes run to their end in the block."""
    use = CpuUse()
    before = {kind: sum(cpu_s(p) for p in found) for kind, found in pids.items()}
    load_before = children_cpu_s()
    yield use
    for kind, found in pids.items():
        use.seconds[kind] = sum(cpu_s(p) for p in found) - before[kind]
    use.seconds["load"] = children_cpu_s() - load_before
