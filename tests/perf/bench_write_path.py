"""Benchmark 2: the checkpoint write path, in-process, no HTTP and no run bookkeeping.

``N`` concurrent conversations (``asyncio.gather``) of ``T`` turns each; a turn is one
``graph.ainvoke`` of one user message with ``durability="sync"`` (what the service runs with:
LangGraph hands every checkpoint to the saver before the next step starts). The graph is the
service's own, ``build_graph(OfflineChatModel())`` (plan/act/reply, messages in a
``DeltaChannel``), for every contender: only the checkpointer differs, so "same graph" holds.
Figure: turns per second over the whole batch, fresh threads in every repetition.

Contenders, interleaved repetition by repetition:

* ours, fenced: what the service's executor does for a run. Each turn is a real ``runs`` row,
  queued and claimed with the service's own SQL (``service.runs.insert`` then ``claim``, live
  lease) before the clock starts; the turn copies the compiled graph with a
  ``FencedPostgresSaver(pool, Fence(run_id, 1), history=...)`` (as ``Executor._attempt`` does),
  so every checkpoint and write is committed in a transaction that checked the lease, held
  writes go out together within the saver's write-behind window, the turn ends with the saver's
  flush (as a run does), and a turn's first read brings the messages history along. The pool
  is the service's (``service.db.make_pool`` with default ``Settings``: at most 20
  connections).
* ours, unfenced: one ``FencedPostgresSaver(pool, history=...)`` without a fence on the same
  kind of pool (the saver the service reads state with); shows what the fence costs.
* stock: one ``AsyncPostgresSaver.from_conn_string(url)``, as the tutorial wires it: a single
  connection (server-side prepared statements on, ``prepare_threshold=0``) behind the saver's
  ``asyncio.Lock``, on a database of its own (``setup()`` run first).
* (b): ``InMemorySaver()``, the ceiling for a saver on this graph.

Not measured: the run queue, lease renewal, events, thread rows and HTTP (benchmark 1 has them).
The goal (ours fenced >= 0.5x (b)) is judged on the median of per-repetition ratios; the unfenced
and stock rows are for information. Everything shares one event loop and the machine's cores
with Postgres, so the ratios move with whatever else the machine is doing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph.state import CompiledStateGraph

from tests.perf import clients, cpu
from tests.perf.harness import Bench, Row, compare, interleave
from tests.support.runs import new_run
from threadkeeper.service import runs, threads
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.checkpointer import Fence, FencedPostgresSaver, history_channels
from threadkeeper.service.db import Pool, make_pool
from threadkeeper.service.settings import Settings

NAME = "2. checkpoint write path, in-process"
REPLICA = "bench-write-path"
LEASE_SECONDS = 600.0

Graph = CompiledStateGraph[Any]
# Gives the graph to run for (conversation, turn) and what to await when its turn has ended; ours
# builds a fenced copy per turn and flushes its saver, as the executor does when a run ends.
GraphFor = Callable[[int, int], tuple[Graph, Callable[[], Awaitable[None]] | None]]


async def conversations(threads_: list[str], turns: int, graph_for: GraphFor) -> float:
    """Every conversation of ``threads_`` at once, ``turns`` turns each; turns per second."""

    async def talk(index: int, thread_id: str) -> None:
        config: Any = {"configurable": {"thread_id": thread_id}}
        for turn in range(1, turns + 1):
            text = f"conversation {index} turn {turn}: tell me something about the weather"
            graph, ended = graph_for(index, turn)
            out = await graph.ainvoke(
                {"messages": [{"role": "user", "content": text}]}, config, durability="sync"
            )
            if ended is not None:
                await ended()
            reply = str(out["messages"][-1].content)
            if f"Turn {turn}." not in reply:
                raise clients.TurnFailed(f"thread {thread_id} lost its memory: {reply[:200]!r}")

    began = time.perf_counter()
    await asyncio.gather(*(talk(i, t) for i, t in enumerate(threads_)))
    return len(threads_) * turns / (time.perf_counter() - began)


def graph_alone(
    count: int, turns: int, meter: cpu.Meter, latency_seconds: float = 0.0
) -> Callable[[int], Awaitable[float]]:
    """(b) of benchmarks 1 and 3: the same conversations on the graph itself, the offline model
    with ``latency_seconds`` and ``InMemorySaver``, in this process; turns per second, with
    ``meter`` running while the clock does."""
    model = OfflineChatModel(latency_seconds=latency_seconds)
    graph = build_graph(model).compile(checkpointer=InMemorySaver())

    async def measure(rep: int) -> float:
        thread_ids = [str(uuid.uuid4()) for _ in range(count)]
        meter.start()
        per_second = await conversations(thread_ids, turns, lambda i, t: (graph, None))
        meter.stop()
        return per_second

    return measure


def shared(graph: Graph, count: int, turns: int) -> Callable[[int], Awaitable[float]]:
    """A contender whose one compiled graph (and saver) serves every turn."""

    async def measure(rep: int) -> float:
        thread_ids = [str(uuid.uuid4()) for _ in range(count)]
        return await conversations(thread_ids, turns, lambda i, t: (graph, None))

    return measure


async def _claimed_runs(pool: Pool, count: int, turns: int) -> tuple[list[str], list[list[Fence]]]:
    """Threads and, per thread, one claimed run per turn with a live lease (service SQL)."""
    thread_ids = [uuid.uuid4() for _ in range(count)]
    fences: list[list[Fence]] = []
    async with pool.connection() as conn:
        for thread_id in thread_ids:
            await threads.insert(conn, thread_id=thread_id, owner="bench", metadata={})
            mine: list[Fence] = []
            for _ in range(turns):
                run = new_run(thread_id)
                await runs.insert(conn, run)
                row = await runs.claim(conn, run.run_id, REPLICA, LEASE_SECONDS)
                assert row is not None  # no per-owner cap here
                mine.append(Fence(run.run_id, row.attempt))
            fences.append(mine)
    return [str(t) for t in thread_ids], fences


def fenced(graph: Graph, pool: Pool, count: int, turns: int) -> Callable[[int], Awaitable[float]]:
    """Ours as the executor runs it: a fenced saver per turn, on claimed runs rows."""

    history = history_channels(graph)

    async def measure(rep: int) -> float:
        thread_ids, fences = await _claimed_runs(pool, count, turns)

        def graph_for(index: int, turn: int) -> tuple[Graph, Callable[[], Awaitable[None]]]:
            saver = FencedPostgresSaver(pool, fences[index][turn - 1], history=history)
            return graph.copy(update={"checkpointer": saver}), saver.flush

        return await conversations(thread_ids, turns, graph_for)

    return measure


@asynccontextmanager
async def service_pool(url: str) -> AsyncIterator[Pool]:
    pool = make_pool(url, Settings(database_url=url))
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


async def run(bench: Bench) -> list[Row]:
    count = bench.size(32, 8)
    turns = bench.size(10, 3)
    builder = build_graph(OfflineChatModel())
    async with AsyncExitStack() as stack:
        ours_db = stack.enter_context(bench.database())
        stock_db = stack.enter_context(bench.database(migrated=False))
        pool = await stack.enter_async_context(service_pool(ours_db))
        stock_saver = await stack.enter_async_context(AsyncPostgresSaver.from_conn_string(stock_db))
        await stock_saver.setup()
        savers: dict[str, BaseCheckpointSaver[Any]] = {
            "ours unfenced": FencedPostgresSaver(pool, history=history_channels(builder.compile())),
            "stock": stock_saver,
            "memory": InMemorySaver(),
        }
        graphs = {name: builder.compile(checkpointer=s) for name, s in savers.items()}
        contenders: dict[str, Callable[[int], Awaitable[float]]] = {
            "ours fenced": fenced(builder.compile(), pool, count, turns),
            **{name: shared(g, count, turns) for name, g in graphs.items()},
        }
        # One untimed round: imports, pools and caches warm up before anything counts.
        for measure in contenders.values():
            await measure(-1)
        samples = await interleave(bench.repetitions, contenders)

    details = {
        "conversations": count,
        "turns": turns,
        "graph": "service build_graph (DeltaChannel messages), every contender",
        "durability": "sync",
        "pool_max_size": Settings(database_url=ours_db).pool_max_size,
    }
    memory = samples["memory"]
    rows = [
        compare(
            NAME, "ours fenced (service config)", "turns/s", samples["ours fenced"],
            "(b) InMemorySaver", memory, goal=">= 0.5x (b)", goal_check=lambda r: r >= 0.5,
            details=details,
        ),
        compare(
            NAME, "ours unfenced (info)", "turns/s", samples["ours unfenced"],
            "(b) InMemorySaver", memory, details=details,
        ),
        compare(
            NAME, "stock AsyncPostgresSaver (info)", "turns/s", samples["stock"],
            "(b) InMemorySaver", memory, details=details,
        ),
    ]  # fmt: skip
    return rows
