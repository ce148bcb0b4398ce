"""A thread's own ttl (set through the service's API), enforced by every prune run beside the
policy's rules, with the same safety and metrics."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from langgraph.graph.state import CompiledStateGraph
from prometheus_client import CollectorRegistry
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.support import (
    OWNER,
    add_run,
    add_thread,
    chat,
    checkpoint_ids,
    db_now,
    dump,
    policy,
    rows_of,
)
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.reaper.summary import Outcome
from threadkeeper.service import threads
from threadkeeper.service.threads import Ttl, TtlStrategy

GONE = {"checkpoints": 0, "blobs": 0, "writes": 0, "runs": 0, "threads": 0}
# A rule the threads below never meet: only their own ttl acts on them.
NEVER = {"threads": {"maxIdle": "3650d"}}
TTL_MINUTES = 10.0
LATER = timedelta(minutes=2 * TTL_MINUTES)


async def _with_ttl(
    conn: AsyncConnection[DictRow], strategy: TtlStrategy, minutes: float = TTL_MINUTES
) -> str:
    thread_id = await add_thread(conn)
    row = await threads.update(
        conn, UUID(thread_id), OWNER, ttl=Ttl(strategy=strategy, minutes=minutes)
    )
    assert row is not None
    return thread_id


async def _expires_at(conn: AsyncConnection[DictRow], thread_id: str) -> object:
    cur = await conn.execute(
        "SELECT ttl_expires_at FROM threads WHERE thread_id = %s", (thread_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return row["ttl_expires_at"]


async def test_expired_threads_are_deleted_and_counted(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    expired = await _with_ttl(conn, TtlStrategy.DELETE)
    later = await _with_ttl(conn, TtlStrategy.DELETE, minutes=10 * TTL_MINUTES)
    without = await add_thread(conn)
    for thread_id in (expired, later, without):
        await chat(graph, thread_id, "hello")
    await add_run(conn, expired, "success")
    kept = {t: await rows_of(conn, t) for t in (later, without)}

    now = await db_now(conn) + LATER
    summary = await prune(conn, policy(**NEVER), now=now)

    assert summary.outcome is Outcome.SUCCEEDED
    assert summary.threads_deleted.ttl == 1
    assert summary.threads_deleted.total == 1
    assert summary.runs_deleted == 1
    assert await rows_of(conn, expired) == GONE
    assert {t: await rows_of(conn, t) for t in (later, without)} == kept
    registry = CollectorRegistry()
    ReaperMetrics(registry).observe_run(summary)
    labels = {"namespace": summary.namespace, "policy": summary.policy}
    deleted = registry.get_sample_value(
        "threadkeeper_prune_threads_deleted_total", {**labels, "reason": "ttl"}
    )
    assert deleted == 1


async def test_an_expired_thread_under_a_live_run_is_left_alone(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    busy = await _with_ttl(conn, TtlStrategy.DELETE)
    busy_latest = await _with_ttl(conn, TtlStrategy.KEEP_LATEST)
    for thread_id in (busy, busy_latest):
        await chat(graph, thread_id, "hello", "what is 2+3")
        await add_run(conn, thread_id, "running", lease=timedelta(minutes=5))
    untouched = {t: await dump(conn, t) for t in (busy, busy_latest)}

    summary = await prune(conn, policy(**NEVER), now=await db_now(conn) + LATER)

    assert summary.threads_skipped == 2
    assert summary.threads_deleted.total == 0
    assert {t: await dump(conn, t) for t in (busy, busy_latest)} == untouched


async def test_keep_latest_keeps_the_latest_state_and_starts_the_ttl_again(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    thread_id = await _with_ttl(conn, TtlStrategy.KEEP_LATEST)
    await chat(graph, thread_id, "hello", "what is 2+3", "and 3+4")
    config = {"configurable": {"thread_id": thread_id}}
    before = await graph.aget_state(config)  # type: ignore[arg-type]
    assert len((await checkpoint_ids(conn, thread_id))[""]) > 1
    first_expiry = await _expires_at(conn, thread_id)

    summary = await prune(conn, policy(**NEVER), now=await db_now(conn) + LATER)

    assert summary.threads_pruned == 1
    assert summary.threads_deleted.total == 0
    assert (await checkpoint_ids(conn, thread_id))[""] == [
        before.config["configurable"]["checkpoint_id"]
    ]
    after = await graph.aget_state(config)  # type: ignore[arg-type]
    assert after.values == before.values
    assert await _expires_at(conn, thread_id) > first_expiry  # type: ignore[operator]


async def test_a_dry_run_reports_expired_threads_and_keeps_them(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    expired = await _with_ttl(conn, TtlStrategy.DELETE)
    await chat(graph, expired, "hello")
    untouched = await dump(conn, expired)

    summary = await prune(conn, policy(**NEVER, dryRun=True), now=await db_now(conn) + LATER)

    assert summary.threads_deleted.ttl == 1
    assert await dump(conn, expired) == untouched


async def test_expired_threads_left_for_the_next_run_are_the_backlog(
    conn: AsyncConnection[DictRow],
) -> None:
    expired = [await _with_ttl(conn, TtlStrategy.DELETE) for _ in range(3)]
    now = await db_now(conn) + LATER

    summary = await prune(conn, policy(**NEVER, limits={"batchSize": 1}), now=now)

    assert summary.threads_deleted.ttl == 1
    assert summary.backlog == len(expired) - 1
