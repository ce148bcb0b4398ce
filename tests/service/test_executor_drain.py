"""A draining replica hands back every run it still executes, including a run whose graph lost
the first cancellation and a run whose claim was under way when the drain began.

The executor is driven directly on a real pool (see ``tests.support.runs.executor``), with
one-node graphs of the test's own; a drain of 0 seconds stops every attempt at once.
"""

from __future__ import annotations

import asyncio

from tests.support.runs import Counter, claimed, one_node
from tests.support.runs import executor as executor_for
from threadkeeper.service import runs
from threadkeeper.service.db import Pool
from threadkeeper.service.domain import RunStatus
from threadkeeper.service.executor import RESTOP_SECONDS, RunOutcome

REPLICA = "executor-drain-test"
# Long enough for a loaded machine, short of anything a lost cancellation would take.
PATIENCE = 10 * RESTOP_SECONDS + 20


async def _status(pool: Pool, run: runs.Run) -> RunStatus | None:
    async with pool.connection() as conn:
        row = await runs.get_by_id(conn, run.run_id)
    return None if row is None else RunStatus(row.status)


def _handed_back(outcome: RunOutcome) -> bool:
    return outcome.status is RunStatus.PENDING and not outcome.ended


async def test_a_graph_that_swallows_the_drains_cancellation_is_cancelled_again(
    pool: Pool,
) -> None:
    """The node catches the first cancellation and waits on (as a graph whose library lost the
    cancellation would run on into its next call): the drain cancels it again, and the run
    goes back to the queue instead of running to its end on a replica that is going away."""
    entered, swallowed = asyncio.Event(), asyncio.Event()

    async def stubborn(state: Counter) -> Counter:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.Event().wait()
        return {"n": state["n"] + 1}

    executor = executor_for(pool, one_node(stubborn), REPLICA)
    run = await claimed(pool, REPLICA, input={"n": 0})
    attempt = executor.start(run)
    assert attempt.task is not None
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
        await executor.drain(0)
        outcome = await attempt.task
    assert swallowed.is_set()
    assert _handed_back(outcome), outcome
    assert await _status(pool, run) is RunStatus.PENDING


async def test_an_attempt_started_during_the_drain_is_handed_back_as_it_starts(
    pool: Pool,
) -> None:
    """A claim under way when the drain began starts its attempt afterwards: that run goes
    back to the queue without running, while the run already executing has its grace period
    and ends here; the drain returns once both have ended."""
    entered, release = asyncio.Event(), asyncio.Event()
    started: list[int] = []

    async def work(state: Counter) -> Counter:
        started.append(state["n"])
        entered.set()
        await release.wait()
        return {"n": state["n"] + 1}

    executor = executor_for(pool, one_node(work), REPLICA)
    first_run = await claimed(pool, REPLICA, input={"n": 0})
    late_run = await claimed(pool, REPLICA, input={"n": 10})
    first = executor.start(first_run)
    assert first.task is not None
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
        drained = asyncio.create_task(executor.drain(PATIENCE))
        await asyncio.sleep(0)  # one pass of the loop: the drain task's first step runs
        assert executor.draining
        late = executor.start(late_run)
        assert late.task is not None
        late_outcome = await late.task
        assert not first.task.done() and not drained.done()
        release.set()
        first_outcome = await first.task
        await drained
    assert _handed_back(late_outcome), late_outcome
    assert first_outcome.status is RunStatus.SUCCESS and first_outcome.ended
    assert started == [0]
    assert await _status(pool, late_run) is RunStatus.PENDING
    assert await _status(pool, first_run) is RunStatus.SUCCESS
