"""Benchmark 11: one long conversation, per-turn latency early and late.

One conversation of 300 turns (QUICK: 30), no model latency, one turn at a time, as a user
talks. Per repetition the figure is the median latency of the late turns (290-300) over the
median of the early ones (1-10): with ``DeltaChannel`` the checkpoint rows stay O(1) a turn, so
what grows with the history is the CPU (decoding it, reducing it, answering with it) and
whatever the load's plan does with a thread's rows.

Contenders, interleaved repetition by repetition:

* ``1 replica``: the service on a database that has been analyzed (as one that has been in
  use for a while is);
* ``2 replicas``: two replicas on that database, every request to the other one in turn
  (``clients.Balanced``), so each turn is the first that replica sees since its last;
* ``fresh database``: a new database each repetition, cloned from the migrated template and
  never analyzed, with autovacuum off for its tables: a new deployment's first conversation.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import psycopg

from tests.perf import clients, servers
from tests.perf.harness import Bench, Row, alone, compare, interleave

NAME = "11. long conversation, per-turn latency"
WINDOW = 10
# Tables whose statistics the load's plan could depend on.
TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes", "threads", "runs", "run_events")
AUTOVACUUM_OFF = "ALTER TABLE {table} SET (autovacuum_enabled = false)"
ANALYZE = "ANALYZE"


@dataclass
class Windows:
    """Per repetition: the early and late windows' median latencies (seconds)."""

    early: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [late / early for early, late in zip(self.early, self.late, strict=True)]


async def conversation(server: clients.Server, turns: int) -> list[float]:
    """One conversation of ``turns`` turns; each turn's latency in seconds."""
    latencies: list[float] = []
    async with clients.callers(1) as (http,):
        thread_id = await server.new_thread(http)
        for turn in range(1, turns + 1):
            began = time.perf_counter()
            reply = await server.turn(http, thread_id, clients.say(0, turn))
            latencies.append(time.perf_counter() - began)
            if f"Turn {turn}." not in reply:
                raise clients.TurnFailed(f"thread {thread_id} lost its memory: {reply[:200]!r}")
    return latencies


def record(windows: Windows, latencies: list[float]) -> float:
    early = statistics.median(latencies[:WINDOW])
    late = statistics.median(latencies[-(WINDOW + 1) :])
    windows.early.append(early)
    windows.late.append(late)
    return late / early


def autovacuum_off(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(AUTOVACUUM_OFF.format(table=table).encode())


def analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ANALYZE)


async def run(bench: Bench) -> list[Row]:
    turns = bench.size(300, 30)
    windows = {name: Windows() for name in ("1 replica", "2 replicas", "fresh database")}
    with ExitStack() as stack:
        db = stack.enter_context(bench.database())
        replicas = [
            stack.enter_context(servers.ours(db, bench.work, name).start())
            for name in ("long-r1", "long-r2")
        ]
        one = clients.AgentServer(replicas[0].url)
        two = clients.Balanced([r.url for r in replicas])

        def on(server: clients.Server, name: str) -> Callable[[int], Awaitable[float]]:
            async def measure(rep: int) -> float:
                return record(windows[name], await conversation(server, turns))

            return measure

        async def fresh(rep: int) -> float:
            with bench.database() as url:
                autovacuum_off(url)
                with servers.ours(url, bench.work, f"long-fresh-{rep}").start() as replica:
                    latencies = await conversation(clients.AgentServer(replica.url), turns)
            return record(windows["fresh database"], latencies)

        # One untimed conversation, then statistics as autovacuum would have them by now.
        await conversation(one, turns)
        analyze(db)
        await interleave(
            bench.repetitions,
            {"1 replica": on(one, "1 replica"), "2 replicas": on(two, "2 replicas"),
             "fresh database": fresh},
        )  # fmt: skip
    return rows(windows, turns)


def rows(windows: dict[str, Windows], turns: int) -> list[Row]:
    late = f"turns {turns - WINDOW}-{turns}"
    details = {"turns": turns, "window": WINDOW}
    out = [
        alone(
            NAME, f"{late} / turns 1-{WINDOW}, {name}", "x", w.ratios(),
            goal="<= 1.3x", goal_check=lambda r: r <= 1.3,
            details={**details, "early_ms": [e * 1000 for e in w.early],
                     "late_ms": [t * 1000 for t in w.late]},
        )
        for name, w in windows.items()
    ]  # fmt: skip
    out.append(
        compare(
            NAME, f"{late}, fresh database vs analyzed", "ms",
            [t * 1000 for t in windows["fresh database"].late], "1 replica",
            [t * 1000 for t in windows["1 replica"].late], details=details,
        )
    )  # fmt: skip
    return out
