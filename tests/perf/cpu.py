"""CPU seconds from ``/proc``: a server process's own, and the whole machine's busy time.

On a small machine the client, the servers and Postgres share the cores. These figures say
whether a result is bound by the CPU, a floor no scheduling can beat: a server that runs one
event loop cannot finish sooner than its own CPU seconds, and no run finishes sooner than the
machine's busy seconds spread over its cores. Linux only; elsewhere ``Snapshot.take`` is None.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/<pid>/stat, counted from the field after the command name: state is 0, utime 11.
UTIME, STIME = 11, 12
# /proc/stat "cpu" line: user nice system idle iowait irq softirq steal (guest is in user).
BUSY_FIELDS = (0, 1, 2, 5, 6)


def process_ticks(stat: str) -> int:
    """User plus system ticks from the text of ``/proc/<pid>/stat``.

    The command name sits in parentheses and may itself hold spaces and parentheses, so the
    fields are counted from the last closing one.
    """
    fields = stat[stat.rindex(")") + 1 :].split()
    return int(fields[UTIME]) + int(fields[STIME])


def machine_busy_ticks(stat: str) -> int:
    """Ticks all CPUs spent running something, from the text of ``/proc/stat``.

    Idle and I/O wait are not busy; steal is time the hypervisor gave someone else.
    """
    for line in stat.splitlines():
        name, *values = line.split()
        if name == "cpu":
            return sum(int(values[i]) for i in BUSY_FIELDS)
    raise ValueError("no aggregate cpu line in /proc/stat")


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds so far: each named process's own, and the machine's busy total."""

    processes: dict[str, float]
    machine: float

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> Snapshot | None:
        try:
            machine = machine_busy_ticks((PROC / "stat").read_text()) / TICKS_PER_SECOND
        except FileNotFoundError:
            return None
        processes = {
            name: process_ticks((PROC / str(pid) / "stat").read_text()) / TICKS_PER_SECOND
            for name, pid in pids.items()
        }
        return cls(processes, machine)

    def since(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(
            {name: s - earlier.processes[name] for name, s in self.processes.items()},
            self.machine - earlier.machine,
        )


class Meter:
    """The CPU seconds ``pids`` spend between ``start`` and ``stop``, appended to ``spent``
    (nothing is, where there is no ``/proc``)."""

    def __init__(self, pids: Mapping[str, int], spent: list[Snapshot]) -> None:
        self.pids = dict(pids)
        self.spent = spent
        self._started = False
        self._began: Snapshot | None = None

    def start(self) -> None:
        self._started = True
        self._began = Snapshot.take(self.pids)

    def stop(self) -> None:
        if not self._started:
            raise RuntimeError("the meter was not started")
        ended = Snapshot.take(self.pids)
        if self._began is not None and ended is not None:
            self.spent.append(ended.since(self._began))
        self._started = False
        self._began = None
