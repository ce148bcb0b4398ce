"""Runs rows for tests that need one in a given state, made with the service's own SQL (or, for
the stream readers' tests, a finished run and its events written directly), and an executor to
run them with a graph of the test's own."""

from __future__ import annotations

import uuid
from typing import Any, TypedDict
from uuid import UUID

import psycopg
from langgraph.graph import END, START, StateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.service import runs, threads
from threadkeeper.service.blob_cache import BlobCache
from threadkeeper.service.db import Pool
from threadkeeper.service.executor import Executor
from threadkeeper.service.graphs import GraphKind, LoadedGraph
from threadkeeper.service.metrics import Metrics
from threadkeeper.service.notify import Hub
from threadkeeper.service.registry import Registry


async def running_run(
    conn: AsyncConnection[DictRow],
    *,
    owner: str = "alice",
    replica: str = "test-replica",
    lease_seconds: float = 30.0,
    **fields: Any,
) -> tuple[UUID, UUID]:
    """A new thread and a run of it (``new_run(**fields)``) claimed by ``replica`` (attempt 1,
    live lease)."""
    thread_id = uuid.uuid4()
    await threads.insert(conn, thread_id=thread_id, owner=owner, metadata={})
    new = new_run(thread_id, **fields)
    await runs.insert(conn, new, claim_for=runs.ClaimTerms(replica, lease_seconds))
    return thread_id, new.run_id


async def run_with_events(
    url: str, status: str, events_sql: str, *, thread_id: UUID | None = None
) -> UUID:
    """A run in ``status`` of a new thread (``thread_id``, else a fresh id), with the events
    ``events_sql`` lists as ``(%s, seq, event, data)``: rows as a stream reads them, written
    directly, for tests of the readers."""
    run_id, thread_id = uuid.uuid4(), thread_id or uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as w:
        await w.execute(
            "INSERT INTO threads (thread_id, owner) VALUES (%s, 'someone')", (thread_id,)
        )
        await w.execute(
            "INSERT INTO runs (run_id, thread_id, assistant_id, status)"
            " VALUES (%s, %s, 'agent', %s)",
            (run_id, thread_id, status),
        )
        if events_sql:
            rows = events_sql.count("%s")
            await w.execute(
                f"INSERT INTO run_events (run_id, seq, event, data) VALUES {events_sql}",
                (run_id,) * rows,
            )
    return run_id


def new_run(thread_id: UUID, **fields: Any) -> runs.NewRun:
    """A run of the agent with no input; ``fields`` override any of ``NewRun``'s."""
    values: dict[str, Any] = {
        "run_id": uuid.uuid4(),
        "thread_id": thread_id,
        "assistant_id": "agent",
        "input": None,
        "kwargs": {},
        "metadata": {},
        "strategy": "enqueue",
    }
    values.update(fields)
    return runs.NewRun(**values)


async def claimed(pool: Pool, replica: str, **fields: Any) -> runs.Run:
    """``running_run``'s run, read back as the record an executor starts from."""
    async with pool.connection() as conn:
        _, run_id = await running_run(conn, replica=replica, **fields)
        row = await runs.get_by_id(conn, run_id)
    assert row is not None and row.status == "running"
    return row


def executor(
    pool: Pool,
    graph: Any,
    replica: str,
    lease_seconds: float = 30.0,
    cache: BlobCache | None = None,
) -> Executor:
    """An executor of ``graph`` driven by the test itself: its notification hub is never started
    (nothing waits for a notification), so its keeper renews the lease every third of
    ``lease_seconds`` (after ten seconds by default). ``cache``: the replica's decoded blobs."""
    loaded = LoadedGraph("agent", GraphKind.COMPILED, compiled=graph)
    return Executor(
        pool=pool,
        hub=Hub("postgresql://unused"),
        registry=Registry({"agent": loaded}, pool, cache),
        metrics=Metrics(),
        replica=replica,
        lease_seconds=lease_seconds,
    )


class Counter(TypedDict):
    """The state of ``one_node``'s graphs."""

    n: int


def one_node(work: Any) -> Any:
    """A graph named ``agent`` whose one node is ``work``."""
    builder = StateGraph(Counter)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_edge("work", END)
    return builder.compile(name="agent")
