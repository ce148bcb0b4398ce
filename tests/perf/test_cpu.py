"""The /proc readings behind the CPU floors in benchmarks 1 and 3."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.perf import cpu

needs_proc = pytest.mark.skipif(not (cpu.PROC / "stat").exists(), reason="no /proc here")


def _process_stat(command: str, utime: int, stime: int) -> str:
    # Fields after the command: state, then ten counters before utime and stime.
    after = ["S", *[str(n) for n in range(1, 11)], str(utime), str(stime), "0", "0", "20"]
    return f"4242 ({command}) " + " ".join(after) + "\n"


def test_process_ticks_count_fields_after_the_last_parenthesis() -> None:
    # A command name may hold spaces and parentheses; splitting the whole line would shift
    # every field.
    assert cpu.process_ticks(_process_stat("uvicorn", 7, 5)) == 12
    assert cpu.process_ticks(_process_stat("a) b (c", 7, 5)) == 12


def test_machine_busy_ticks_leave_out_idle_iowait_and_steal() -> None:
    user, nice, system, idle, iowait, irq, softirq, steal = 100, 3, 40, 9000, 70, 2, 5, 11
    stat = (
        f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0\n"
        "cpu0 1 1 1 1 1 1 1 1 0 0\n"
        "intr 123\n"
    )
    assert cpu.machine_busy_ticks(stat) == user + nice + system + irq + softirq
    with pytest.raises(ValueError):
        cpu.machine_busy_ticks("cpu0 1 1 1 1 1 1 1 1 0 0\n")


def _burn(seconds: float) -> None:
    began = time.process_time()
    while time.process_time() - began < seconds:
        pass


@needs_proc
def test_a_meter_sees_the_cpu_a_process_spends() -> None:
    spent: list[cpu.Snapshot] = []
    meter = cpu.Meter({"me": os.getpid()}, spent)
    meter.start()
    _burn(0.2)
    meter.stop()
    (snapshot,) = spent
    # The kernel counts in ticks: each reading may be a tick off, at either end of the interval
    # (and a float a hair under a whole tick).
    slack = 2.01 / cpu.TICKS_PER_SECOND
    assert snapshot.processes["me"] >= 0.2 - slack
    # This process is part of the machine's busy time; the two counters are sampled apart.
    assert snapshot.machine >= snapshot.processes["me"] - slack


@needs_proc
def test_a_meter_must_be_started_and_measures_each_interval_alone() -> None:
    spent: list[cpu.Snapshot] = []
    meter = cpu.Meter({"me": os.getpid()}, spent)
    with pytest.raises(RuntimeError):
        meter.stop()
    meter.start()
    _burn(0.3)
    meter.stop()
    meter.start()
    meter.stop()
    assert len(spent) == 2
    # The second interval burnt nothing on purpose: it does not carry the first one's seconds.
    assert spent[1].processes["me"] < spent[0].processes["me"]


def test_without_proc_a_meter_measures_nothing_and_does_not_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated, as this host has a /proc: PROC points at an empty folder (macOS has none)."""
    monkeypatch.setattr(cpu, "PROC", tmp_path)
    spent: list[cpu.Snapshot] = []
    meter = cpu.Meter({"me": os.getpid()}, spent)
    meter.start()
    meter.stop()
    assert spent == []
    with pytest.raises(RuntimeError):
        meter.stop()
