"""An attempt that loses its run between its last step and its ending records nothing.

The executor is driven directly, on a real pool, with a one-node graph whose node lets another
replica take the run over (as a lease expiry and a re-claim would) while the saver still holds
every checkpoint of the attempt (see ``tests.support.runs.executor``).
"""

from __future__ import annotations

from typing import Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from tests.support.runs import claimed
from tests.support.runs import executor as executor_for
from threadkeeper.service import runs
from threadkeeper.service.db import Pool
from threadkeeper.service.executor import LEASE_LOST_ERROR

REPLICA = "executor-ending-test"
TAKE_OVER_SQL = "UPDATE runs SET attempt = attempt + 1, lease_holder = 'other' WHERE run_id = %s"


class Counter(TypedDict):
    n: int


def taking_over_graph(pool: Pool) -> Any:
    """One step that counts, and meanwhile has the run taken over by another replica."""

    async def work(state: Counter, config: RunnableConfig) -> Counter:
        run_id = (config.get("metadata") or {})["run_id"]
        async with pool.connection() as conn:
            await conn.execute(TAKE_OVER_SQL, (run_id,))
        return {"n": state["n"] + 1}

    builder = StateGraph(Counter)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_edge("work", END)
    return builder.compile(name="agent")


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
            str(run["thread_id"]),
        )
        == 0
    )
    assert (
        await _rows(
            pool,
            "SELECT count(*) AS n FROM run_events WHERE run_id = %s AND event = 'end'",
            run["run_id"],
        )
        == 0
    )
    async with pool.connection() as conn:
        after = await runs.get_by_id(conn, run["run_id"])
    assert after is not None
    assert (after["status"], after["attempt"], after["lease_holder"]) == ("running", 2, "other")
