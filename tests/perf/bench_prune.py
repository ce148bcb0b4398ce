"""Benchmark 6: prune under load.

A database seeded with at least a million checkpoint rows (``tests.perf.seed``: real turns of the
service graph, cloned into ~19k live threads of 52 checkpoints each) is served by one replica of
ours under a steady, moderate load: a few conversations, each taking turns back to back (the
offline model answers after a delay, as an LLM would, so the replica is not saturated), moving to
a new thread every few turns. Windows without a prune and windows with one alternate; in a prune
window the reaper's CLI (``threadkeeper-reaper prune``: ``reaper.cli.main``, in a process of its
own that is started and warmed up beforehand, see ``Reaper``) applies a ``keepLast`` policy
bounded by ``limits.maxDuration``. The CLI has no resume cursor: each run's history sweep starts
again from the first thread id, finds the threads earlier windows pruned no longer due (one index
probe each) and carries on with the next ones, so every window deletes a fresh slice (asserted).
The p99 latency of the turns started inside the engine's own run (its ``startedAt`` plus
``durationSeconds``) is paired with the p99 of the no-prune window of the same repetition. The
prune rate is the checkpoint rows the summary reports deleted over its ``durationSeconds`` (all
three tables' rows in the details). The details also hold each window's machine-wide CPU use
(on a shared 2-core machine it tells a prune's own cost from a neighbour's) and WAL volume.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import structlog
import yaml

from tests.perf import clients, servers
from tests.perf.harness import Bench, Row, alone, compare, interleave
from tests.perf.seed import seeded_database

NAME = "6. prune under load"

log = structlog.get_logger("bench.prune")

SEED_ROWS_FULL = 1_000_000
# Enough for quick mode's three 2-second prune windows at well over 5,000 rows/s: a seed the
# first windows use up leaves the last one nothing to prune, and no turn inside its window.
SEED_ROWS_QUICK = 60_000
CONVERSATIONS = 8
TURNS_PER_THREAD = 5
# Per model call; a turn makes two or three. Keeps the replica well below saturation on 2 cores.
MODEL_LATENCY_MS = 200
KEEP_LAST = 10
GOAL_RATIO = 1.2
MIN_TURNS_PER_WINDOW = 10


def p99(samples: list[float]) -> float:
    if len(samples) < 2:
        raise ValueError(f"too few samples for a p99: {len(samples)}")
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


@dataclass
class Load:
    """Conversations taking turns back to back; every turn's start (wall clock) and latency."""

    server: clients.AgentServer
    conversations: int
    turns: list[tuple[float, float]] = field(default_factory=list)
    in_flight: dict[int, float] = field(default_factory=dict)
    failure: BaseException | None = None

    async def _talk(self, index: int, http: httpx.AsyncClient) -> None:
        while True:
            thread_id = await self.server.new_thread(http)
            for turn in range(1, TURNS_PER_THREAD + 1):
                wall = time.time()
                self.in_flight[index] = wall
                began = time.perf_counter()
                reply = await self.server.turn(http, thread_id, clients.say(index, turn))
                latency = time.perf_counter() - began
                del self.in_flight[index]
                if f"Turn {turn}." not in reply:
                    raise clients.TurnFailed(f"thread {thread_id} lost its memory: {reply[:200]!r}")
                self.turns.append((wall, latency))

    async def _guarded(self, index: int, http: httpx.AsyncClient) -> None:
        try:
            await self._talk(index, http)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = exc
            raise

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        async with clients.callers(self.conversations) as https:
            tasks = [asyncio.create_task(self._guarded(i, http)) for i, http in enumerate(https)]
            try:
                yield self
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with suppress(asyncio.CancelledError, Exception):
                        await task

    def check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the load failed: {self.failure!r}") from self.failure

    async def settled(self, until: float) -> None:
        """Wait until every turn started before ``until`` (wall clock) has finished."""
        while any(started <= until for started in self.in_flight.values()):
            self.check()
            await asyncio.sleep(0.02)
        self.check()

    def latencies(self, start: float, end: float) -> list[float]:
        return [latency for wall, latency in self.turns if start <= wall <= end]


@dataclass
class CpuSampler:
    """Machine-wide CPU use (all cores, every process: ours and any neighbour's) over time."""

    samples: list[tuple[float, int, int]] = field(default_factory=list)

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CpuSampler]:
        async def sample() -> None:
            while True:
                self.samples.append((time.time(), *self._read()))
                await asyncio.sleep(0.2)

        task = asyncio.create_task(sample())
        try:
            yield self
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    def busy(self, start: float, end: float) -> float | None:
        """Fraction of all cores busy between the samples nearest ``start`` and ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (_, busy0, total0), (_, busy1, total1) = inside[0], inside[-1]
        return (busy1 - busy0) / (total1 - total0) if total1 > total0 else None


@dataclass
class Window:
    """One measured window: its p99 (ms) and what the turns and the prune did in it."""

    p99_ms: float
    turns: int
    p50_ms: float
    cpu_busy: float | None = None
    wal_mb: float = 0.0
    summary: dict[str, Any] | None = None


class Wal:
    """WAL written on the server meanwhile (every database's: the server is the benchmark's)."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
        self.conn = conn

    async def position(self) -> str:
        cur = await self.conn.execute("SELECT pg_current_wal_lsn()::text")
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def mb_since(self, position: str) -> float:
        cur = await self.conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (position,)
        )
        row = await cur.fetchone()
        assert row is not None
        return float(row[0]) / 1e6


def policy_file(work: Path, max_duration_s: int, batch_size: int) -> Path:
    document = {
        "apiVersion": "threadkeeper.dev/v1alpha1",
        "kind": "RetentionPolicy",
        "metadata": {"name": "bench-prune", "namespace": "bench"},
        "spec": {
            # The CLI takes --database-url; the Secret is only read by the operator.
            "database": {"secretRef": {"name": "unused"}},
            "checkpoints": {"keepLast": KEEP_LAST},
            "limits": {"batchSize": batch_size, "maxDuration": f"{max_duration_s}s"},
        },
    }
    path = work / "bench-prune-policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Reaper:
    """``threadkeeper-reaper prune``, run by the CLI's own ``main`` in a process of its own.

    The process is started (and imports the reaper and LangGraph) before anything is measured,
    then runs the CLI's ``main`` once per prune window, as the operator keeps the engine loaded
    between runs. A cold CLI start costs ~5 s of CPU for imports alone, which on 2 cores would
    disturb the load just before every prune window and overrun quick mode's time budget.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.perf.bench_prune", WORKER_FLAG,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                env={**os.environ, "THREADKEEPER_LOG_LEVEL": "warning"},
            )  # fmt: skip

    async def ready(self) -> None:
        if await self._line() != "ready":
            raise RuntimeError(f"the reaper process did not start; see {self.log_path}")

    async def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the reaper process exited; see {self.log_path}")
        return line.decode().strip()

    async def prune(self, policy: Path, database_url: str) -> dict[str, Any]:
        """One ``threadkeeper-reaper prune``; its JSON summary."""
        assert self.proc is not None and self.proc.stdin is not None
        argv = ["prune", "--policy", str(policy), "--database-url", database_url]
        self.proc.stdin.write((json.dumps(argv) + "\n").encode())
        await self.proc.stdin.drain()
        result = json.loads(await self._line())
        if result["code"] != 0:
            raise RuntimeError(f"reaper prune exited {result['code']}; see {self.log_path}")
        summary: dict[str, Any] = json.loads(result["stdout"])
        return summary

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


WORKER_FLAG = "--reaper-worker"


def _worker() -> int:
    """The reaper process: ``reaper.cli.main(argv)`` for each JSON argv line on stdin."""
    import io
    from contextlib import redirect_stdout

    import threadkeeper.reaper.engine  # noqa: F401  (what the CLI imports on each run)
    from threadkeeper.reaper import cli

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        captured = io.StringIO()
        with redirect_stdout(captured):
            code = cli.main(json.loads(line))
        out.write(json.dumps({"code": code, "stdout": captured.getvalue()}) + "\n")
        out.flush()
    return 0


def _window(load: Load, cpu: CpuSampler, start: float, end: float, what: str) -> Window:
    latencies = load.latencies(start, end)
    if len(latencies) < MIN_TURNS_PER_WINDOW:
        raise RuntimeError(f"only {len(latencies)} turns in the {what} window")
    return Window(
        p99_ms=p99(latencies) * 1000,
        turns=len(latencies),
        p50_ms=statistics.median(latencies) * 1000,
        cpu_busy=cpu.busy(start, end),
    )


def contenders(
    load: Load,
    cpu: CpuSampler,
    wal: Wal,
    reaper: Reaper,
    policy: Path,
    database_url: str,
    window_s: float,
) -> tuple[dict[str, Callable[[int], Awaitable[float]]], list[Window], list[Window]]:
    quiet: list[Window] = []
    pruning: list[Window] = []

    async def without_prune(rep: int) -> float:
        position = await wal.position()
        start = time.time()
        await asyncio.sleep(window_s)
        end = time.time()
        wal_mb = await wal.mb_since(position)
        await load.settled(end)
        window = _window(load, cpu, start, end, "no-prune")
        window.wal_mb = wal_mb
        quiet.append(window)
        log.info(
            "window",
            kind="no prune",
            rep=rep,
            p99_ms=round(window.p99_ms),
            turns=window.turns,
            cpu_busy=window.cpu_busy,
            wal_mb=round(window.wal_mb, 1),
        )
        return window.p99_ms

    async def with_prune(rep: int) -> float:
        position = await wal.position()
        summary = await reaper.prune(policy, database_url)
        # Includes the run's last statements after startedAt + durationSeconds (a few ms).
        wal_mb = await wal.mb_since(position)
        if summary["outcome"] != "Succeeded":
            raise RuntimeError(f"prune {summary['outcome']}: {summary['message']}")
        if summary["checkpointsDeleted"] <= 0:
            raise RuntimeError(f"the prune deleted nothing: {summary['message']}")
        start = datetime.fromisoformat(summary["startedAt"]).timestamp()
        end = start + float(summary["durationSeconds"])
        await load.settled(end)
        window = _window(load, cpu, start, end, "prune")
        window.summary = summary
        window.wal_mb = wal_mb
        pruning.append(window)
        log.info(
            "window",
            kind="prune",
            rep=rep,
            p99_ms=round(window.p99_ms),
            turns=window.turns,
            cpu_busy=window.cpu_busy,
            wal_mb=round(window.wal_mb, 1),
            checkpoints_deleted=summary["checkpointsDeleted"],
            threads_pruned=summary["threadsPruned"],
            seconds=summary["durationSeconds"],
        )
        return window.p99_ms

    return {"no prune": without_prune, "prune": with_prune}, quiet, pruning


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _deleted(summary: dict[str, Any]) -> int:
    return int(summary["checkpointsDeleted"] + summary["blobsDeleted"] + summary["writesDeleted"])


async def run(bench: Bench) -> list[Row]:
    target = bench.size(SEED_ROWS_FULL, SEED_ROWS_QUICK)
    window_s = bench.size(12, 2)
    # maxDuration bounds each run; batchSize (threads per run) is set high enough not to.
    batch_size = bench.size(5_000, 2_000)
    policy = policy_file(bench.work, window_s, batch_size)
    async with seeded_database(bench, target) as (url, seeded):
        if seeded.checkpoints < target:
            raise RuntimeError(f"seeded {seeded.checkpoints} checkpoints, wanted {target}")
        env = {"THREADKEEPER_OFFLINE_LATENCY_MS": str(MODEL_LATENCY_MS)}
        reaper = Reaper(bench.work / "bench-prune-reaper.log")
        # Started first: its imports overlap with the service's start.
        await reaper.start()
        try:
            with servers.ours(url, bench.work, name="ours-prune", **env).start() as service:
                await reaper.ready()
                load = Load(clients.AgentServer(service.url), CONVERSATIONS)
                cpu = CpuSampler()
                async with (
                    load.running(),
                    cpu.running(),
                    await psycopg.AsyncConnection.connect(url, autocommit=True) as monitor,
                ):
                    # Untimed: pools, caches and the first threads warm up.
                    await asyncio.sleep(bench.size(5_000, 1_500) / 1000)
                    load.check()
                    measures, quiet, pruning = contenders(
                        load, cpu, Wal(monitor), reaper, policy, url, window_s
                    )
                    samples = await interleave(bench.repetitions, measures)
                    load.check()
                total_turns = len(load.turns)
        finally:
            await reaper.stop()

    summaries = [w.summary for w in pruning if w.summary is not None]
    rates = [s["checkpointsDeleted"] / float(s["durationSeconds"]) for s in summaries]
    all_rates = [_deleted(s) / float(s["durationSeconds"]) for s in summaries]
    details: dict[str, Any] = {
        **seeded.details(),
        "conversations": CONVERSATIONS,
        "turns_per_thread": TURNS_PER_THREAD,
        "model_latency_ms": MODEL_LATENCY_MS,
        "window_s": window_s,
        "keep_last": KEEP_LAST,
        "turns_measured": total_turns,
        "turns_per_window_no_prune": [w.turns for w in quiet],
        "turns_per_window_prune": [w.turns for w in pruning],
        "p50_ms_no_prune": [round(w.p50_ms, 1) for w in quiet],
        "p50_ms_prune": [round(w.p50_ms, 1) for w in pruning],
        "cpu_busy_no_prune": [_pct(w.cpu_busy) for w in quiet],
        "cpu_busy_prune": [_pct(w.cpu_busy) for w in pruning],
        "wal_mb_no_prune": [round(w.wal_mb, 1) for w in quiet],
        "wal_mb_prune": [round(w.wal_mb, 1) for w in pruning],
    }
    prune_details: dict[str, Any] = {
        "checkpoints_deleted": [s["checkpointsDeleted"] for s in summaries],
        "blobs_deleted": [s["blobsDeleted"] for s in summaries],
        "writes_deleted": [s["writesDeleted"] for s in summaries],
        "threads_pruned": [s["threadsPruned"] for s in summaries],
        "threads_skipped": [s["threadsSkipped"] for s in summaries],
        "duration_s": [s["durationSeconds"] for s in summaries],
        "all_rows_per_s": [round(r) for r in all_rates],
        "messages": [s["message"] for s in summaries],
        "batch_size": batch_size,
        "seeded_checkpoints": seeded.checkpoints,
    }
    return [
        compare(
            NAME, "p99 turn latency, prune running", "ms", samples["prune"], "no prune",
            samples["no prune"], goal=f"<= {GOAL_RATIO}x", goal_check=lambda r: r <= GOAL_RATIO,
            details=details,
        ),
        alone(NAME, "prune rate, checkpoint rows", "rows/s", rates, details=prune_details),
    ]  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:] != [WORKER_FLAG]:
        sys.exit(f"usage: python -m tests.perf.bench_prune {WORKER_FLAG} (run by benchmark 6)")
    sys.exit(_worker())
