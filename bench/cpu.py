"""CPU time of processes under test (Linux /proc): unlike throughput, it hardly depends on
what else the machine is doing, so it shows where a change helped even on a busy machine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """utime + stime of ``pid`` and (unless told otherwise) all its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    if not descendants:
        return sum(os.times()[:2]) if pid == os.getpid() else _own_seconds(pid, ticks)
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / ticks
        stack.extend(children.get(current, []))
    return total


def _own_seconds(pid: int, ticks: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


class ProcessCpu:
    """CPU seconds each named process (with its descendants) used between ``start()`` and
    ``stop()``; the benchmark's own process is counted without its children (the services)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {name: cpu_seconds(pid, descendants=pid != os.getpid()) for name, pid in self.pids.items()}

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> None:
        after = self._read()
        self.used = {name: after[name] - self._before[name] for name in self.pids}

    def report(self, per: int, unit: str) -> str:
        """One line: each process's CPU per ``unit`` (``per`` of them), busiest first."""
        parts = [
            f"{name} {seconds / max(1, per) * 1000:.2f}"
            for name, seconds in sorted(self.used.items(), key=lambda item: -item[1])
        ]
        total = sum(self.used.values()) / max(1, per) * 1000
        return f"CPU ms per {unit}: " + ", ".join(parts) + f"; total {total:.2f}"
