"""How an attempt ends when its graph raises or the database fails it.

The executor is driven directly on a real pool (see ``tests.support.runs.executor``), with small
graphs of the test's own; the database failures are real (backends terminated by Postgres).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from langchain_core.runnables import RunnableConfig

from tests.support.runs import Counter, claimed, one_node
from tests.support.runs import executor as executor_for
from threadkeeper.service import runs
from threadkeeper.service.db import Pool
from threadkeeper.service.executor import DATABASE_FAILED_ERROR, WAIT_ONLY
from threadkeeper.service.worker import Worker

REPLICA = "attempt-failures-test"


class Refused(Exception):
    """The graph's own error."""


async def test_every_raising_run_ends_with_the_graphs_error(pool: Pool) -> None:
    """The lease keeper renews every 33 ms, so many renewals land while runs record their
    error: none may be cut short (a CancelledError instead of the run's error)."""

    async def work(state: Counter) -> Counter:
        await asyncio.sleep(0)  # one step on the loop, as a model call would take
        raise Refused(f"no {state['n']}")

    executor = executor_for(pool, one_node(work), REPLICA, lease_seconds=0.1)
    rows = [await claimed(pool, REPLICA, input={"n": i}) for i in range(100)]
    attempts = [executor.start(row) for row in rows]
    outcomes = await asyncio.gather(
        *(a.task for a in attempts if a.task is not None), return_exceptions=True
    )
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert [o.error for o in outcomes] == [  # type: ignore[union-attr]
        {"error": "Refused", "message": f"no {i}"} for i in range(100)
    ]
    async with pool.connection() as conn:
        statuses = [getattr(await runs.get_by_id(conn, r.run_id), "status", None) for r in rows]
    assert set(statuses) == {"error"}


class WriteKiller:
    """Holds a run's row lock so that the attempt's next checkpoint write waits for it, then
    terminates the waiting backends (as a Postgres restart would: AdminShutdown) and lets go."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.killed: list[int] = []
        self.task: asyncio.Task[None] | None = None

    async def hold(self, run_id: str) -> None:
        conn = await psycopg.AsyncConnection.connect(self.database_url)
        await conn.execute("BEGIN")
        await conn.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (run_id,))
        self.task = asyncio.create_task(self._kill_writer(conn))

    async def _kill_writer(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            async with asyncio.timeout(30):
                while not self.killed:
                    # The activity view is read once per transaction unless told to read anew.
                    await conn.execute("SELECT pg_stat_clear_snapshot()")
                    cur = await conn.execute(KILL_WAITING_WRITE_SQL)
                    self.killed.extend(row[0] for row in await cur.fetchall())
                    await asyncio.sleep(0.01)  # poll until the checkpoint write is waiting
        finally:
            await conn.close()


# A backend of this database waiting for a lock in a fenced write of checkpoint rows (a held
# batch, or a run's ending carrying one), terminated. Matched by how they begin, as the activity
# view keeps only a statement's first kilobyte; OFFSET 0 keeps the planner from terminating
# before it has filtered.
KILL_WAITING_WRITE_SQL = r"""
SELECT pid, pg_terminate_backend(pid) FROM (
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND wait_event_type = 'Lock' AND query ~ '^\s*WITH (fence|thread_lock) AS'
    OFFSET 0
) AS waiting
"""


@pytest.mark.usefixtures("held_writes")
async def test_a_database_restart_mid_write_ends_the_attempt_not_the_run(
    pool: Pool, database_url: str
) -> None:
    """Postgres terminates the connection (AdminShutdown) of the first attempt's checkpoint
    write: the run goes back to the queue, not counted as a failed attempt, and the next
    attempt finishes it. The saver holds the attempt's checkpoints for its ending and nobody
    follows its events (a ``/runs/wait`` run), so the ending is the one write to wait."""
    killer = WriteKiller(database_url)

    async def work(state: Counter, config: RunnableConfig) -> Counter:
        if killer.task is None:
            await killer.hold((config.get("metadata") or {})["run_id"])
        return {"n": state["n"] + 1}

    executor = executor_for(pool, one_node(work), REPLICA)
    run = await claimed(pool, REPLICA, input={"n": 0}, kwargs={WAIT_ONLY: True})
    first = executor.start(run)
    assert first.task is not None
    outcome = await first.task
    assert killer.task is not None
    await killer.task
    assert len(killer.killed) == 1
    assert (outcome.status, outcome.error) == ("pending", DATABASE_FAILED_ERROR)
    async with pool.connection() as conn:
        after = await runs.get_by_id(conn, run.run_id)
        assert after is not None
        assert (after.status, after.failed_attempts) == ("pending", 0)
        again = await runs.claim(conn, run.run_id, REPLICA, 30.0)
    assert again is not None and again.attempt == 2
    second = executor.start(again)
    assert second.task is not None
    done = await second.task
    assert (done.status, done.values) == ("success", {"n": 1})


# An attempt whose replica stopped renewing its lease: either before Postgres restarted (the
# restart may be why) or after it (the database was up: the replica died).
EXPIRED_SQL = """
UPDATE runs SET attempt = 2, failed_attempts = %(failed)s,
    lease_expires_at = now() - interval '1 second',
    updated_at = pg_postmaster_start_time() + %(renewed)s * interval '1 second'
WHERE run_id = %(run_id)s
"""


def _worker(executor: Any, max_attempts: int) -> Worker:
    return Worker(
        pool=executor.pool,
        hub=executor.hub,
        executor=executor,
        capacity=1,
        lease_seconds=30.0,
        max_attempts=max_attempts,
        poll_seconds=1.0,
        event_retention_seconds=3600.0,
    )


@pytest.mark.parametrize(
    ("renewed", "failed", "resumed"),
    [
        # renewed before the restart: the restart ended the attempt, which does not count
        (-1, 0, True),
        # renewed after it: the second failure (the first was counted before) ends the run
        (1, 1, False),
    ],
)
async def test_only_attempts_lost_while_the_database_was_up_count(
    pool: Pool, renewed: int, failed: int, resumed: bool
) -> None:
    async def work(state: Counter) -> Counter:
        return {"n": state["n"] + 1}

    executor = executor_for(pool, one_node(work), REPLICA)
    worker = _worker(executor, max_attempts=2)
    run = await claimed(pool, REPLICA, input={"n": 0})
    async with pool.connection() as conn:
        await conn.execute(
            EXPIRED_SQL, {"failed": failed, "renewed": renewed, "run_id": run.run_id}
        )
    attempt = await worker.try_start(run.run_id, run.thread_id)
    if attempt is not None and attempt.task is not None:
        await attempt.task
    async with pool.connection() as conn:
        after = await runs.get_by_id(conn, run.run_id)
    assert after is not None
    if resumed:
        assert (after.status, after.attempt, after.failed_attempts) == ("success", 3, 0)
    else:
        assert attempt is None
        assert (after.status, after.error["error"]) == ("error", "LeaseExpired")
        assert after.error["message"].startswith("gave up after 2 failed attempts")
