"""Benchmark 11: long conversations, per-turn latency early and late.

No model latency, one turn at a time per conversation, as a user talks. A machine shared with
other work is slower in one minute than in the next, and a conversation takes minutes to reach
turn 300; so each repetition first talks an "old" conversation up to turn 289 (untimed), then
measures turns 1-10 of a new conversation and turns 290-300 of the old one alternately, turn by
turn, under the same load. The figure is the ratio of the two windows' median latencies. With
``DeltaChannel`` the checkpoint rows stay O(1) a turn; what can grow with the history is the CPU
(decoding it, reducing it, answering with it) and whatever the load's plan does with a thread's
rows.

Contenders, interleaved repetition by repetition:

* ``1 replica``: the service on a database that has been analyzed (as one that has been in
  use for a while is);
* ``2 replicas``: two replicas on that database, each conversation's requests going to the
  other one in turn (``clients.Balanced``), so no turn follows one on the same replica;
* ``fresh database``: a new database each repetition, cloned from the migrated template and
  never analyzed, with autovacuum off for its tables: a new deployment's first conversations;
* ``1 replica, no cache``: as ``1 replica`` with ``THREADKEEPER_BLOB_CACHE_BYTES=0`` (info);
* ``(b)``: the same graph and model in this process with no saver and no HTTP, each turn given
  the conversation so far (``clients.GraphAlone``) (info): how much of the growth is the
  graph's own work along the conversation (LangChain's handling of the model's input, the
  reducer, the model reading the messages), which no server takes away. (LangGraph's
  ``InMemorySaver`` is no such floor: it keeps checkpoints serialized and decodes the whole
  conversation on every read);
* ``(d) Aegra``: the open-source Agent Server on Postgres, the same graph (stock ``add_messages``
  state, as every baseline's): its own late / early ratio, and ours (``1 replica``) over its
  latency in each window, per repetition (info). Left out, with the reason in the table, where
  it cannot be installed or started.

QUICK: 20 turns instead of 300.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import psycopg

from tests.perf import clients, servers
from tests.perf.harness import Bench, Row, alone, compare, interleave
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel

NAME = "11. long conversation, per-turn latency"
ALONE = "(b) the graph alone, no saver, in-process"
# Contenders measured for information: the goal is ours with the defaults a user gets.
INFO = frozenset({"1 replica, no cache", ALONE})
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

    def record(self, early: list[float], late: list[float]) -> float:
        self.early.append(statistics.median(early))
        self.late.append(statistics.median(late))
        return self.late[-1] / self.early[-1]


class Conversation:
    """One conversation, talked turn by turn; each turn's latency in seconds."""

    def __init__(self, server: clients.Server, http: httpx.AsyncClient) -> None:
        self.server = server
        self.http = http
        self.thread_id = ""
        self.turns = 0

    async def start(self) -> Conversation:
        self.thread_id = await self.server.new_thread(self.http)
        return self

    async def turn(self) -> float:
        self.turns += 1
        began = time.perf_counter()
        reply = await self.server.turn(self.http, self.thread_id, clients.say(0, self.turns))
        took = time.perf_counter() - began
        if f"Turn {self.turns}." not in reply:
            raise clients.TurnFailed(f"thread {self.thread_id} lost its memory: {reply[:200]!r}")
        return took


async def windows(
    make: Callable[[], clients.Server], turns: int
) -> tuple[list[float], list[float]]:
    """Turns 1-WINDOW of a new conversation and the last WINDOW + 1 of an old one, alternately;
    ``make`` gives each conversation its own server (its own round-robin)."""
    async with clients.callers(2) as (young_http, old_http):
        old = await Conversation(make(), old_http).start()
        for _ in range(turns - WINDOW - 1):
            await old.turn()
        young = await Conversation(make(), young_http).start()
        early: list[float] = []
        late: list[float] = []
        for i in range(WINDOW + 1):
            pair = (young, old) if i % 2 else (old, young)
            for conversation in pair:
                took = await conversation.turn()
                if conversation is old:
                    late.append(took)
                elif young.turns <= WINDOW:
                    early.append(took)
    return early, late


def autovacuum_off(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(AUTOVACUUM_OFF.format(table=table).encode())


def analyze(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ANALYZE)


async def run(bench: Bench) -> list[Row]:
    turns = bench.size(300, 20)
    names = ("1 replica", "2 replicas", "fresh database", "1 replica, no cache", ALONE)
    measured = {name: Windows() for name in names}
    with ExitStack() as stack:
        db = stack.enter_context(bench.database())
        r1, r2 = (
            stack.enter_context(servers.ours(db, bench.work, name).start())
            for name in ("long-r1", "long-r2")
        )
        uncached = stack.enter_context(
            servers.ours(db, bench.work, "long-nocache", THREADKEEPER_BLOB_CACHE_BYTES="0").start()
        )
        aegra = servers.start_aegra(stack, bench, NAME)
        graph = build_graph(OfflineChatModel()).compile()

        def on(name: str, make: Callable[[], clients.Server]) -> Callable[[int], Awaitable[float]]:
            async def measure(rep: int) -> float:
                return measured[name].record(*await windows(make, turns))

            return measure

        async def fresh(rep: int) -> float:
            with bench.database() as url:
                autovacuum_off(url)
                with servers.ours(url, bench.work, f"long-fresh-{rep}").start() as replica:
                    early, late = await windows(lambda: clients.AgentServer(replica.url), turns)
            return measured["fresh database"].record(early, late)

        # One untimed round, then statistics as autovacuum would have them by now.
        await windows(lambda: clients.AgentServer(r1.url), turns)
        analyze(db)
        baseline: dict[str, Callable[[int], Awaitable[float]]] = {}
        if aegra is not None:
            measured[servers.AEGRA] = Windows()
            baseline[servers.AEGRA] = on(servers.AEGRA, lambda: clients.AgentServer(aegra.url))
        contenders = {
            "1 replica": on("1 replica", lambda: clients.AgentServer(r1.url)),
            "2 replicas": on("2 replicas", lambda: clients.Balanced([r1.url, r2.url])),
            "fresh database": fresh,
            "1 replica, no cache": on(
                "1 replica, no cache", lambda: clients.AgentServer(uncached.url)
            ),
            ALONE: on(ALONE, lambda: clients.GraphAlone(graph)),
            **baseline,
        }
        await interleave(bench.repetitions, contenders)
    aegra_windows = measured.pop(servers.AEGRA, None)
    out = rows(measured, turns)
    if aegra_windows is not None:
        out += against_aegra(measured["1 replica"], aegra_windows, turns)
    return out


def against_aegra(ours: Windows, aegra: Windows, turns: int) -> list[Row]:
    """(d)'s own late / early ratio, and ours over its latency in each window (info)."""
    late = f"turns {turns - WINDOW}-{turns}"
    details = {
        "turns": turns,
        "window": WINDOW,
        "aegra_early_ms": [e * 1000 for e in aegra.early],
        "aegra_late_ms": [t * 1000 for t in aegra.late],
    }
    pairs = {
        f"turns 1-{WINDOW}": (ours.early, aegra.early),
        late: (ours.late, aegra.late),
    }
    out = [
        alone(
            NAME, f"{late} / turns 1-{WINDOW}, {servers.AEGRA} (info)", "x", aegra.ratios(),
            details=details,
        )
    ]  # fmt: skip
    for window, (mine, theirs) in pairs.items():
        out.append(
            compare(
                NAME, f"{window}, median turn latency (info)", "ms",
                [s * 1000 for s in mine], servers.AEGRA, [s * 1000 for s in theirs],
                details=details,
            )
        )  # fmt: skip
    return out


def rows(measured: dict[str, Windows], turns: int) -> list[Row]:
    late = f"turns {turns - WINDOW}-{turns}"
    details = {"turns": turns, "window": WINDOW}
    out = [
        alone(
            NAME, f"{late} / turns 1-{WINDOW}, {name}", "x", w.ratios(),
            goal="" if name in INFO else "<= 1.3x",
            goal_check=None if name in INFO else lambda r: r <= 1.3,
            details={**details, "early_ms": [e * 1000 for e in w.early],
                     "late_ms": [t * 1000 for t in w.late]},
        )
        for name, w in measured.items()
    ]  # fmt: skip
    # What a turn gains along the conversation, ours against the graph's own share of it.
    for name in ("1 replica", ALONE):
        w = measured[name]
        growth = [(t - e) * 1000 for e, t in zip(w.early, w.late, strict=True)]
        out.append(alone(NAME, f"{late} minus turns 1-{WINDOW}, {name} (info)", "ms", growth))
    out.append(
        compare(
            NAME, f"{late}, fresh database vs analyzed", "ms",
            [t * 1000 for t in measured["fresh database"].late], "1 replica",
            [t * 1000 for t in measured["1 replica"].late], details=details,
        )
    )  # fmt: skip
    return out
