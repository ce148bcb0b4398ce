"""Repetitions, statistics, the results table and its JSON, and the machine they ran on.

Every row compares ours with a baseline measured in the same process run, interleaved: each
repetition measures every contender once, in a rotating order, so drift (a warming cache, a busy
neighbour, a growing table) lands on all of them alike. Ratios are taken per repetition and
summarised by their median, min and max.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
import structlog

from tests.perf import aegra_env
from tests.support import postgres

PACKAGES = (
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-postgres",
    "langgraph-api",
    "psycopg",
    "starlette",
    "uvicorn",
)

log = structlog.get_logger("bench")


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        if not samples:
            raise ValueError("no samples")
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def to_json(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


@dataclass
class Row:
    """One line of the table: ours against one baseline (or alone, where there is none)."""

    benchmark: str
    metric: str
    unit: str
    ours: Stat
    baseline_name: str | None = None
    baseline: Stat | None = None
    ratio: Stat | None = None
    goal: str = ""
    goal_met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "metric": self.metric,
            "unit": self.unit,
            "ours": self.ours.to_json(),
            "baseline_name": self.baseline_name,
            "baseline": self.baseline.to_json() if self.baseline else None,
            "ratio": self.ratio.to_json() if self.ratio else None,
            "goal": self.goal,
            "goal_met": self.goal_met,
            "details": self.details,
        }


def paired_ratios(ours: list[float], baseline: list[float]) -> list[float]:
    """Per-repetition ratios ours / baseline (samples were taken in the same repetition)."""
    if len(ours) != len(baseline):
        raise ValueError(f"unpaired samples: {len(ours)} vs {len(baseline)}")
    return [o / b for o, b in zip(ours, baseline, strict=True) if b]


def compare(
    benchmark: str,
    metric: str,
    unit: str,
    ours: list[float],
    baseline_name: str,
    baseline: list[float],
    *,
    goal: str = "",
    goal_check: Callable[[float], bool] | None = None,
    details: dict[str, Any] | None = None,
) -> Row:
    """A row whose goal (if any) is judged on the median of the paired ratios."""
    ratio = Stat.of(paired_ratios(ours, baseline))
    return Row(
        benchmark=benchmark,
        metric=metric,
        unit=unit,
        ours=Stat.of(ours),
        baseline_name=baseline_name,
        baseline=Stat.of(baseline),
        ratio=ratio,
        goal=goal,
        goal_met=goal_check(ratio.median) if goal_check else None,
        details=details or {},
    )


def alone(
    benchmark: str,
    metric: str,
    unit: str,
    ours: list[float],
    *,
    goal: str = "",
    goal_check: Callable[[float], bool] | None = None,
    details: dict[str, Any] | None = None,
) -> Row:
    """A row with no baseline; its goal is judged on the median of ours."""
    stat = Stat.of(ours)
    return Row(
        benchmark=benchmark,
        metric=metric,
        unit=unit,
        ours=stat,
        goal=goal,
        goal_met=goal_check(stat.median) if goal_check else None,
        details=details or {},
    )


async def interleave(
    repetitions: int, contenders: dict[str, Callable[[int], Awaitable[float]]]
) -> dict[str, list[float]]:
    """Measure each contender once per repetition, rotating who goes first."""
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repetitions):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await contenders[name](rep))
    return samples


@dataclass(frozen=True)
class Skipped:
    """A baseline a benchmark ran without, and why (one line)."""

    benchmark: str
    baseline: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"benchmark": self.benchmark, "baseline": self.baseline, "reason": self.reason}


@dataclass
class Bench:
    """What every benchmark gets: the Postgres server, a scratch folder, and the mode; and
    where it notes the baselines it had to run without."""

    server_url: str
    work: Path
    quick: bool
    skipped: list[Skipped] = field(default_factory=list)

    def skip(self, benchmark: str, baseline: str, reason: str) -> None:
        self.skipped.append(Skipped(benchmark, baseline, reason))
        log.warning("baseline_skipped", benchmark=benchmark, baseline=baseline, reason=reason)

    @property
    def repetitions(self) -> int:
        # Quick mode is a smoke test of the harness; the figures need full mode.
        return 3 if self.quick else 5

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @contextmanager
    def database(self, *, migrated: bool = True) -> Iterator[str]:
        """A fresh database on the shared server (migrated for ours, empty for baselines)."""
        with postgres.fresh_database(self.server_url, migrated=migrated) as url:
            yield url


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def settle(server_url: str) -> bool:
    """Write out the dirty pages a previous benchmark left (benchmarks 6 and 7 seed a million
    rows), so the background writer is not still busy with them during the next one. False
    when the role may not CHECKPOINT (an external server); the figures are then less isolated."""
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def machine(server_url: str) -> dict[str, Any]:
    with psycopg.connect(server_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "postgres": row[0] if row else "unknown",
        "commit": _git_commit(),
        "packages": {p: _version(p) for p in PACKAGES}
        | {f"{aegra_env.PACKAGE} (d)": aegra_env.locked_version()},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _stat(stat: Stat | None) -> str:
    if stat is None:
        return "-"
    return f"{_fmt(stat.median)} [{_fmt(stat.min)}..{_fmt(stat.max)}]"


def render(
    info: dict[str, Any],
    rows: list[Row],
    failures: dict[str, str],
    skipped: Sequence[Skipped] = (),
) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    lines = [
        f"machine: {info['cores']} cores, {info['cpu']}, {info['platform']}",
        f"python {info['python']}, postgres {info['postgres']}, commit {info['commit']}",
        packages,
        "figures: median [min..max] over repetitions; ratio = ours / baseline per repetition",
        "",
    ]
    header = ("benchmark", "metric", "ours", "baseline", "ratio", "goal")
    table = [header]
    for r in rows:
        base = f"{r.baseline_name}: {_stat(r.baseline)}" if r.baseline_name else "-"
        met = "" if r.goal_met is None else (" ok" if r.goal_met else " MISSED")
        table.append(
            (
                r.benchmark,
                f"{r.metric} ({r.unit})",
                _stat(r.ours),
                base,
                _stat(r.ratio),
                f"{r.goal}{met}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    for s in skipped:
        lines.append(f"SKIPPED {s.baseline} in {s.benchmark}: {s.reason}")
    for name, error in failures.items():
        lines.append(f"FAILED {name}: {error}")
    return "\n".join(lines)


def write_json(
    path: Path,
    info: dict[str, Any],
    rows: list[Row],
    failures: dict[str, str],
    quick: bool,
    skipped: Sequence[Skipped] = (),
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": info,
        "quick": quick,
        "rows": [r.to_json() for r in rows],
        "skipped": [s.to_json() for s in skipped],
        "failures": failures,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
