"""The reaper never races a run, never leaves a half-pruned thread, and bounds its work."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
import yaml
from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from structlog.testing import capture_logs

from tests.reaper.graphs import compiled
from tests.reaper.support import (
    OWNER,
    add_run,
    add_thread,
    chat,
    checkpoint_ids,
    db_now,
    dump,
    eventually,
    policy,
    policy_document,
    reaper_waits_on_lock,
    rows_of,
    session_alive,
    waiting_reaper,
)
from threadkeeper.reaper.db import connect
from threadkeeper.reaper.engine import ADVISORY_LOCK_KEY, prune
from threadkeeper.reaper.summary import Outcome, ResumeCursor
from threadkeeper.service import threads as service_threads
from threadkeeper.service.db import Pool

DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)
GONE = {"checkpoints": 0, "blobs": 0, "writes": 0, "runs": 0, "threads": 0}

HOLD_CHECKPOINT_SQL = """
SELECT 1 FROM checkpoints
WHERE thread_id = %s AND checkpoint_ns = '' ORDER BY checkpoint_id LIMIT 1
FOR SHARE
"""


async def _deep_thread(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    **ages: timedelta | None,
) -> str:
    thread_id = await add_thread(conn, **ages)
    await chat(graph, thread_id, "hello", "what is 2+3")
    return thread_id


async def test_threads_with_live_runs_are_left_alone(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    pending = await _deep_thread(conn, graph, spoke=40 * DAY)
    running = await _deep_thread(conn, graph, spoke=40 * DAY)
    expired = await _deep_thread(conn, graph, spoke=40 * DAY)
    finished = await _deep_thread(conn, graph, spoke=40 * DAY)
    busy_live = await _deep_thread(conn, graph)
    await add_run(conn, pending, "pending")
    await add_run(conn, running, "running", lease=MINUTE)
    await add_run(conn, expired, "running", lease=-MINUTE)
    await add_run(conn, finished, "success")
    await add_run(conn, busy_live, "running", lease=MINUTE)
    untouched = {t: await dump(conn, t) for t in (pending, running, busy_live)}

    summary = await prune(conn, policy(threads={"maxIdle": "30d"}, checkpoints={"keepLast": 1}))

    assert summary.threads_deleted.idle == 2
    assert await rows_of(conn, expired) == GONE
    assert await rows_of(conn, finished) == GONE
    for thread_id, rows in untouched.items():
        assert await dump(conn, thread_id) == rows
    assert summary.threads_skipped == 3
    assert summary.outcome is Outcome.SUCCEEDED


async def test_a_thread_locked_by_a_run_is_skipped_within_lock_timeout(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    pool: Pool,
) -> None:
    claimed = await _deep_thread(conn, graph, spoke=40 * DAY)
    free = await _deep_thread(conn, graph, spoke=39 * DAY)
    async with pool.connection() as runner, runner.transaction():
        # What the service does to claim a run of the thread.
        assert await service_threads.lock(runner, UUID(claimed), OWNER)
        started = time.monotonic()
        summary = await prune(
            conn, policy(threads={"maxIdle": "30d"}, limits={"lockTimeout": "1s"})
        )
        elapsed = time.monotonic() - started

    assert summary.threads_skipped == 1
    assert summary.threads_deleted.idle == 1
    assert await rows_of(conn, free) == GONE
    assert (await rows_of(conn, claimed))["threads"] == 1
    assert 1.0 <= elapsed < 10.0
    assert summary.backlog == 1


async def _pause_prune_on(pool: Pool, thread_id: str) -> AsyncConnection[DictRow]:
    """Hold a row lock that a prune of ``thread_id`` will wait for mid-transaction."""
    holder = await pool.getconn()
    await holder.execute("BEGIN")
    await holder.execute(HOLD_CHECKPOINT_SQL, (thread_id,))
    return holder


async def _release(pool: Pool, holder: AsyncConnection[DictRow]) -> None:
    await holder.execute("ROLLBACK")
    await pool.putconn(holder)


async def test_a_prune_holding_the_thread_lock_blocks_a_claim(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    pool: Pool,
) -> None:
    thread_id = await _deep_thread(conn, graph)
    holder = await _pause_prune_on(pool, thread_id)
    try:
        task = asyncio.create_task(
            prune(conn, policy(checkpoints={"keepLast": 1}, limits={"lockTimeout": "30s"}))
        )
        async with pool.connection() as observer:
            await eventually(lambda: reaper_waits_on_lock(observer), what="the prune to wait")
        async with pool.connection() as runner:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                async with runner.transaction():
                    await runner.execute("SET LOCAL lock_timeout = '200ms'")
                    await service_threads.lock(runner, UUID(thread_id), OWNER)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                async with runner.transaction():
                    await runner.execute("SET LOCAL lock_timeout = '200ms'")
                    await add_run(runner, thread_id, "pending")
    finally:
        await _release(pool, holder)
    summary = await task
    assert summary.threads_pruned == 1
    async with pool.connection() as runner, runner.transaction():
        assert await service_threads.lock(runner, UUID(thread_id), OWNER)


async def test_one_prune_at_a_time_per_database(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    pool: Pool,
    database_url: str,
) -> None:
    thread_id = await _deep_thread(conn, graph)
    holder = await _pause_prune_on(pool, thread_id)
    second = await connect(database_url)
    try:
        first = asyncio.create_task(
            prune(conn, policy(checkpoints={"keepLast": 1}, limits={"lockTimeout": "30s"}))
        )
        async with pool.connection() as observer:
            await eventually(lambda: reaper_waits_on_lock(observer), what="the prune to wait")
        with capture_logs() as logs:
            skipped = await prune(second, policy(checkpoints={"keepLast": 1}))
        assert skipped.outcome is Outcome.SKIPPED
        assert [e["outcome"] for e in logs if e["event"] == "prune_skipped"] == ["Skipped"]
        assert "locked" in skipped.message
        assert skipped.checkpoints_deleted == 0
    finally:
        await _release(pool, holder)
        await second.close()
    assert (await first).threads_pruned == 1
    # The lock went with the run: the next prune runs.
    async with pool.connection() as other:
        cur = await other.execute("SELECT pg_try_advisory_lock(%s) AS ok", (ADVISORY_LOCK_KEY,))
        assert (await cur.fetchone()) == {"ok": True}
        await other.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def _start_cli_prune(tmp_path: Path, database_url: str, **spec: object) -> subprocess.Popen[str]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_document(**spec)))
    return subprocess.Popen(
        [sys.executable, "-m", "threadkeeper.reaper.cli", "prune", "--policy", str(path)],
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
async def test_killing_a_prune_mid_run_leaves_no_half_pruned_thread(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    pool: Pool,
    database_url: str,
    tmp_path: Path,
) -> None:
    idle = await _deep_thread(conn, graph, spoke=40 * DAY)
    deep = await _deep_thread(conn, graph)
    before = await dump(conn, deep)
    holder = await _pause_prune_on(pool, deep)
    released = False
    proc = _start_cli_prune(
        tmp_path,
        database_url,
        threads={"maxIdle": "30d"},
        checkpoints={"keepLast": 1},
        limits={"lockTimeout": "60s"},
    )
    try:
        async with pool.connection() as observer:
            # By now the idle thread is committed and the deep one is half-way: snapshot
            # written, writes deleted, waiting to delete its checkpoints.
            await eventually(lambda: reaper_waits_on_lock(observer), what="the prune to wait")
            waiting = await waiting_reaper(observer)
            assert waiting is not None
            backend, statement = waiting
            assert "DELETE FROM checkpoints" in statement
            assert await rows_of(observer, idle) == GONE
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            # The backend only notices its client is gone when it next reads from it: after
            # the lock is released, it runs on, finds no COMMIT coming and rolls back.
            await _release(pool, holder)
            released = True
            await eventually(
                lambda: _gone(observer, backend), what="the killed prune's session to end"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if not released:
            await _release(pool, holder)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert await rows_of(conn, idle) == GONE
    assert await dump(conn, deep) == before


async def _gone(observer: AsyncConnection[DictRow], pid: int) -> bool:
    return not await session_alive(observer, pid)


async def test_batch_size_bounds_a_run_and_the_next_run_resumes(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    idle = [await add_thread(conn, spoke=(40 + i) * DAY) for i in range(5)]
    rules = policy(threads={"maxIdle": "30d"}, limits={"batchSize": 2})

    first = await prune(conn, rules)
    assert first.threads_deleted.idle == 2
    assert first.backlog == 3
    assert "batch size 2 reached" in first.message
    # Oldest first.
    assert [(await rows_of(conn, t))["threads"] for t in idle] == [1, 1, 1, 0, 0]

    second = await prune(conn, rules)
    third = await prune(conn, rules)
    assert (second.threads_deleted.idle, third.threads_deleted.idle) == (2, 1)
    assert third.backlog == 0
    assert [(await rows_of(conn, t))["threads"] for t in idle] == [0] * 5


async def test_history_sweep_resumes_from_its_cursor(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    deep = sorted([await _deep_thread(conn, graph) for _ in range(3)])
    rules = policy(checkpoints={"keepLast": 1}, limits={"batchSize": 1})

    resume: ResumeCursor | None = None
    cursors = []
    for n in (1, 2, 3):
        summary = await prune(conn, rules, resume=resume)
        assert summary.threads_pruned == 1
        depths = [len((await checkpoint_ids(conn, t))[""]) for t in deep]
        # One more thread per run, in id order.
        assert [d == 1 for d in depths] == [i < n for i in range(3)]
        resume = summary.resume
        cursors.append(resume.history_after)
    # The third run reached the end of the sweep, so the next one starts over.
    assert cursors == [deep[0], deep[1], None]
    last = await prune(conn, rules, resume=resume)
    assert last.threads_pruned == 0
    assert [len((await checkpoint_ids(conn, t))[""]) for t in deep] == [1, 1, 1]


async def test_max_duration_stops_the_run(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    pool: Pool,
) -> None:
    locked = await add_thread(conn, spoke=50 * DAY)
    rest = [await add_thread(conn, spoke=40 * DAY) for _ in range(2)]
    async with pool.connection() as runner, runner.transaction():
        assert await service_threads.lock(runner, UUID(locked), OWNER)
        summary = await prune(
            conn,
            policy(threads={"maxIdle": "30d"}, limits={"lockTimeout": "2s", "maxDuration": "1s"}),
        )
    # Waiting 2s for the locked thread used up the 1s budget before the others.
    assert summary.threads_skipped == 1
    assert summary.threads_deleted.idle == 0
    assert "max duration 1s reached" in summary.message
    assert summary.backlog == 3
    assert [(await rows_of(conn, t))["threads"] for t in rest] == [1, 1]


async def test_dry_run_reports_exactly_what_the_real_run_deletes(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    pool: Pool,
) -> None:
    parent = compiled("parent", pool)
    await _deep_thread(conn, graph, spoke=40 * DAY)  # idle
    await _deep_thread(conn, graph, spoke=12 * DAY, archived=10 * DAY)  # archived
    await _deep_thread(conn, graph)  # history
    busy = await _deep_thread(conn, graph, spoke=40 * DAY)
    await add_run(conn, busy, "running", lease=MINUTE)
    nested = await add_thread(conn)
    await chat(parent, nested, "hello", "what is 2+3")
    await chat(graph, "orphan-thread", "hello")
    rules = policy(
        threads={"maxIdle": "30d", "archivedFor": "7d"},
        checkpoints={"keepLast": 2},
        orphans={"olderThan": "1d"},
    )
    later = await db_now(conn) + 2 * DAY
    before = await dump(conn)

    dry = await prune(conn, rules, dry_run=True, now=later)

    assert await dump(conn) == before
    real = await prune(conn, rules, now=later)
    after = await dump(conn)
    gone = {table: len(before[table] - after[table]) for table in before}
    assert gone["checkpoint_writes"] == real.writes_deleted == dry.writes_deleted
    assert gone["runs"] == real.runs_deleted == dry.runs_deleted
    assert gone["threads"] == 2
    # Snapshots rewrite a kept checkpoint row (in place): count only rows whose key vanished.
    keys_before = {r[:3] for r in before["checkpoints"]}
    keys_after = {r[:3] for r in after["checkpoints"]}
    assert len(keys_before - keys_after) == real.checkpoints_deleted == dry.checkpoints_deleted
    blob_keys_before = {r[:4] for r in before["checkpoint_blobs"]}
    blob_keys_after = {r[:4] for r in after["checkpoint_blobs"]}
    assert len(blob_keys_before - blob_keys_after) == real.blobs_deleted == dry.blobs_deleted
    exclude = {"dry_run", "duration_seconds", "started_at", "message"}
    assert dry.model_dump(exclude=exclude) == real.model_dump(exclude=exclude)
    assert dry.dry_run and not real.dry_run
    deleted = {"idle": 1, "archived": 1, "orphan": 1, "ttl": 0, "total": 3}
    assert dry.threads_deleted.model_dump() == deleted
    assert dry.threads_pruned == 2 and dry.threads_skipped == 1
    assert dry.message.startswith("would delete")


CORRUPT_WRITE_SQL = """
UPDATE checkpoint_writes SET blob = '\\xc1c1c1'::bytea
WHERE thread_id = %s AND channel = 'messages'
"""


async def test_an_unreadable_thread_fails_alone(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    broken = await _deep_thread(conn, graph)
    fine = await _deep_thread(conn, graph)
    await conn.execute(CORRUPT_WRITE_SQL, (broken,))
    before = await dump(conn, broken)

    summary = await prune(conn, policy(checkpoints={"keepLast": 1}))

    assert summary.outcome is Outcome.FAILED
    assert summary.threads_failed == 1
    assert summary.threads_pruned == 1
    assert "1 threads failed" in summary.message
    assert await dump(conn, broken) == before
    assert len((await checkpoint_ids(conn, fine))[""]) == 1


async def test_a_lost_connection_fails_the_run_and_keeps_the_thread(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    pool: Pool,
) -> None:
    thread_id = await _deep_thread(conn, graph)
    before = await dump(conn, thread_id)
    holder = await _pause_prune_on(pool, thread_id)
    try:
        task = asyncio.create_task(
            prune(conn, policy(checkpoints={"keepLast": 1}, limits={"lockTimeout": "30s"}))
        )
        async with pool.connection() as observer:
            await eventually(lambda: reaper_waits_on_lock(observer), what="the prune to wait")
            waiting = await waiting_reaper(observer)
            assert waiting is not None
            await observer.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))
            summary = await task
    finally:
        await _release(pool, holder)
    assert summary.outcome is Outcome.FAILED
    assert summary.message.startswith("interrupted: ")
    async with pool.connection() as observer:
        assert await dump(observer, thread_id) == before  # type: ignore[arg-type]
