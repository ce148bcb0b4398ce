"""An attempt that loses its run between its last step and its ending records nothing.

The executor is driven directly, on a real pool, with a one-node graph whose node lets another
replica take the run over (as a lease expiry and a re-claim would) while the saver still holds
every checkpoint of the attempt (see ``tests.support.runs.executor``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig

from tests.support.runs import Counter, claimed, one_node
from tests.support.runs import executor as executor_for
from threadkeeper.service import runs
from threadkeeper.service.db import Pool
from threadkeeper.service.executor import LEASE_LOST_ERROR
from threadkeeper.service.notify import Hub

REPLICA = "executor-ending-test"
TAKE_OVER_SQL = "UPDATE runs SET attempt = attempt + 1, lease_holder = 'other' WHERE run_id = %s"


def taking_over_graph(pool: Pool) -> Any:
    """One step that counts, and meanwhile has the run taken over by another replica."""

    async def work(state: Counter, config: RunnableConfig) -> Counter:
        run_id = (config.get("metadata") or {})["run_id"]
        async with pool.connection() as conn:
            await conn.execute(TAKE_OVER_SQL, (run_id,))
        return {"n": state["n"] + 1}

    return one_node(work)


async def _rows(pool: Pool, sql: str, key: Any) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(sql, (key,))
        row = await cur.fetchone()
        return int(row["n"])


@pytest.mark.usefixtures("held_writes")
async def test_a_run_taken_over_before_its_ending_records_nothing(pool: Pool) -> None:
    run = await claimed(pool, REPLICA, input={"n": 0})
    executor = executor_for(pool, taking_over_graph(pool), REPLICA)
    attempt = executor.start(run)
    assert attempt.task is not None
    outcome = await attempt.task
    assert (outcome.status, outcome.error) == ("error", LEASE_LOST_ERROR)
    assert executor.busy == 0
    # The held checkpoints were refused with the ending: the successor starts from the input.
    assert (
        await _rows(
            pool,
            "SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s",
            str(run.thread_id),
        )
        == 0
    )
    assert (
        await _rows(
            pool,
            "SELECT count(*) AS n FROM run_events WHERE run_id = %s AND event = 'end'",
            run.run_id,
        )
        == 0
    )
    async with pool.connection() as conn:
        after = await runs.get_by_id(conn, run.run_id)
    assert after is not None
    assert (after.status, after.attempt, after.lease_holder) == ("running", 2, "other")


class LossyHub(Hub):
    """A hub whose wait loses the cancellation it is interrupted by, as ``asyncio.wait_for``
    does on Python 3.11 when one lands just as what it waits for completes (psycopg_pool waits
    for a connection with it). That race is a single loop iteration wide and cannot be aimed
    at from outside, so this stands in for it; everything else is the real executor."""

    def __init__(self) -> None:
        super().__init__("postgresql://unused")
        self.lost = 0

    async def wait(self, seconds: float, *keys: str) -> bool:
        try:
            return await super().wait(seconds, *keys)
        except asyncio.CancelledError:
            if self.lost:
                raise  # one lost is enough; a test's teardown can still end the task
            self.lost += 1
            return False


async def count(state: Counter) -> Counter:
    return {"n": state["n"] + 1}


async def test_a_run_ends_even_if_its_lease_keeper_loses_its_cancellation(pool: Pool) -> None:
    run = await claimed(pool, REPLICA, input={"n": 0})
    executor = executor_for(pool, one_node(count), REPLICA, lease_seconds=0.3)
    hub = executor.hub = LossyHub()
    attempt = executor.start(run)
    assert attempt.task is not None
    # Within a few renewal intervals (0.1 s each): without the keeper noticing that the graph
    # ended, the attempt would wait for it forever.
    done, _ = await asyncio.wait([attempt.task], timeout=10)
    if not done:
        attempt.task.cancel()
    assert done, "the attempt waited for its lease keeper after the graph ended"
    outcome = attempt.task.result()
    assert outcome.status == "success"
    assert outcome.values == {"n": 1}
    assert hub.lost == 1
    assert executor.busy == 0
    async with pool.connection() as conn:
        after = await runs.get_by_id(conn, run.run_id)
    assert after is not None and after.status == "success"
