"""An attempt that loses its run between its last step and its ending records nothing.

The executor is driven directly, on a real pool, with a one-node graph whose node lets another
replica take the run over (as a lease expiry and a re-claim would) while the saver still holds
every checkpoint of the attempt. The notification hub is not started: nothing here waits for
a notification, and lease renewal would come only after ten seconds.
"""

from __future__ import annotations

import uuid
from typing import Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from service import runs, threads
from service.db import Pool
from service.executor import LEASE_LOST_ERROR, Executor
from service.metrics import Metrics
from service.notify import Hub
from tests.support.runs import new_run

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
    thread_id = uuid.uuid4()
    new = new_run(thread_id, input={"n": 0})
    async with pool.connection() as conn:
        await threads.insert(conn, thread_id=thread_id, owner="alice", metadata={})
        await runs.insert(conn, new, claim_for=(REPLICA, 30.0))
        claimed = await runs.get_by_id(conn, new.run_id)
    assert claimed is not None and claimed["status"] == "running"
    executor = Executor(
        pool=pool,
        hub=Hub("postgresql://unused"),
        graph=taking_over_graph(pool),
        metrics=Metrics(),
        replica=REPLICA,
        lease_seconds=30.0,
    )
    attempt = executor.start(claimed)
    assert attempt.task is not None
    outcome = await attempt.task
    assert (outcome.status, outcome.error) == ("error", LEASE_LOST_ERROR)
    assert executor.busy == 0
    # The held checkpoints were refused with the ending: the successor starts from the input.
    assert (
        await _rows(
            pool, "SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s", str(thread_id)
        )
        == 0
    )
    assert (
        await _rows(
            pool,
            "SELECT count(*) AS n FROM run_events WHERE run_id = %s AND event = 'end'",
            new.run_id,
        )
        == 0
    )
    async with pool.connection() as conn:
        after = await runs.get_by_id(conn, new.run_id)
    assert after is not None
    assert (after["status"], after["attempt"], after["lease_holder"]) == ("running", 2, "other")
