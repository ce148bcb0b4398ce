"""Queueing a run in one statement (``runs.insert_if_idle``) and when it must step aside.

The fast path decides from its statement's snapshot that a thread has no unfinished run. These
tests pin down the cases where that snapshot is stale or the thread is not the caller's, which
is when it has to return nothing so the submission takes the locked, multi-statement way.
"""

from __future__ import annotations

import asyncio
import uuid
from uuid import UUID

from tests.support import runs as support_runs
from threadkeeper.service import runs, threads
from threadkeeper.service.db import Pool

REPLICA = runs.ClaimTerms("fast-path-test", 30.0)


def new_run(thread_id: UUID) -> runs.NewRun:
    return support_runs.new_run(thread_id, input={"messages": []}, title="first words")


async def make_thread(pool: Pool, owner: str = "alice") -> UUID:
    thread_id = uuid.uuid4()
    async with pool.connection() as conn:
        await threads.insert(conn, thread_id=thread_id, owner=owner, metadata={})
    return thread_id


async def unfinished(pool: Pool, thread_id: UUID) -> list[UUID]:
    async with pool.connection() as conn:
        return [row.run_id for row in await runs.unfinished(conn, thread_id)]


async def test_idle_thread_gets_a_claimed_run_in_one_statement(pool: Pool) -> None:
    thread_id = await make_thread(pool)
    new = new_run(thread_id)
    async with pool.connection() as conn:
        row = await runs.insert_if_idle(conn, new, "alice", claim_for=REPLICA)
        assert row is not None
        assert (row.run_id, row.status, row.attempt) == (new.run_id, "running", 1)
        assert row.lease_holder == REPLICA[0]
        assert row.notified is None  # claimed: nobody else needs waking
        thread = await threads.get(conn, thread_id, "alice")
    assert thread is not None
    assert (thread.status, thread.title) == ("busy", "first words")


async def test_unclaimed_run_is_queued_and_announced(pool: Pool) -> None:
    thread_id = await make_thread(pool)
    async with pool.connection() as conn:
        row = await runs.insert_if_idle(conn, new_run(thread_id), "alice")
    assert row is not None
    assert (row.status, row.attempt, row.lease_holder) == ("pending", 0, None)
    assert row.notified is not None


async def test_steps_aside_for_a_busy_missing_or_foreign_thread(pool: Pool) -> None:
    busy = await make_thread(pool)
    async with pool.connection() as conn:
        assert await runs.insert_if_idle(conn, new_run(busy), "alice") is not None
        # An unfinished run heads the thread: the queueing rules apply, not the shortcut.
        assert await runs.insert_if_idle(conn, new_run(busy), "alice") is None
        assert await runs.insert_if_idle(conn, new_run(uuid.uuid4()), "alice") is None
        foreign = await make_thread(pool, owner="bob")
        assert await runs.insert_if_idle(conn, new_run(foreign), "alice") is None
    assert len(await unfinished(pool, busy)) == 1
    assert await unfinished(pool, foreign) == []


async def test_steps_aside_when_a_run_was_queued_while_it_waited_for_the_lock(
    pool: Pool,
) -> None:
    """The race the xmin check exists for: a submission that holds the thread lock commits a
    run after the fast path's snapshot was taken. Without the check the fast path would not see
    that run and would start a second one on the thread."""
    thread_id = await make_thread(pool)
    async with pool.connection() as holder, pool.connection() as fast:
        async with holder.transaction():
            assert await threads.lock(holder, thread_id, "alice")
            await runs.insert(holder, new_run(thread_id), claim_for=REPLICA)
            waiting = asyncio.create_task(runs.insert_if_idle(fast, new_run(thread_id), "alice"))
            # The fast path blocks on the row lock until the holder commits.
            await wait_for_lock_wait(pool, thread_id)
            assert not waiting.done()
        assert await waiting is None
    assert len(await unfinished(pool, thread_id)) == 1


async def wait_for_lock_wait(pool: Pool, thread_id: UUID) -> None:
    """Until some backend waits on a lock while running the fast-path statement."""
    query = """
        SELECT count(*) AS n FROM pg_stat_activity
        WHERE wait_event_type = 'Lock' AND query LIKE %s
    """
    async with pool.connection() as conn:
        for _ in range(500):
            cur = await conn.execute(query, ("%WITH locked AS%",))
            row = await cur.fetchone()
            if row is not None and row["n"] > 0:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"the fast path never waited for the lock of {thread_id}")
