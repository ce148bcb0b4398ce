"""A waiting request answers with its run's real end, whichever attempt (or replica) made it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.support.runs import claimed
from threadkeeper.service import runs
from threadkeeper.service.executor import LEASE_LOST_ERROR, Attempt, RunOutcome
from threadkeeper.service.http import until_closing
from threadkeeper.service.problems import Problem
from threadkeeper.service.services import Services
from threadkeeper.service.submit import final_body, result_of


def _services(client: httpx.AsyncClient) -> Services:
    services: Services = client._transport.app.state.services  # type: ignore[attr-defined]
    return services


async def _ended_elsewhere(svc: Services) -> Any:
    """A run another attempt executed and ended with success; the body its waiters must get."""
    row = await claimed(svc.pool, "elsewhere")
    async with svc.pool.connection() as conn:
        ended = await runs.finish(
            conn,
            run_id=row.run_id,
            thread_id=row.thread_id,
            attempt=row.attempt,
            status="success",
            thread_status="idle",
        )
    assert ended is not None
    return row, await final_body(svc, ended)


def _attempt(row: Any, outcome: Any) -> Attempt:
    async def execute() -> RunOutcome:
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, RunOutcome)
        return outcome

    attempt = Attempt(row)
    attempt.task = asyncio.create_task(execute())
    return attempt


@pytest.mark.parametrize(
    "outcome",
    [
        RunOutcome("error", None, LEASE_LOST_ERROR, ended=False),
        RunOutcome("success", {"messages": ["not the end"]}, ended=False),
        RuntimeError("the attempt crashed"),
    ],
    ids=["lease-lost", "ending-not-recorded", "crashed"],
)
async def test_an_attempt_that_did_not_end_its_run_does_not_answer_for_it(
    client: httpx.AsyncClient, outcome: Any
) -> None:
    """Regression: the local attempt's outcome was the answer even when that attempt had lost
    the run (``__error__: LeaseLost``) while another attempt went on to end it."""
    svc = _services(client)
    row, expected = await _ended_elsewhere(svc)
    body = await result_of(svc, row, _attempt(row, outcome))
    assert body == expected
    assert "__error__" not in body


async def test_an_attempt_that_ended_its_run_answers_at_once(client: httpx.AsyncClient) -> None:
    svc = _services(client)
    row = await claimed(svc.pool, "here")
    values = {"messages": ["the end"]}
    body = await result_of(svc, row, _attempt(row, RunOutcome("success", values)))
    assert body == values


async def test_until_closing_gives_the_answer_that_comes_first() -> None:
    result = asyncio.create_task(asyncio.sleep(0, result={"answer": 1}))
    assert await until_closing(asyncio.Event(), result, {}) == {"answer": 1}


async def test_until_closing_answers_503_with_where_to_join_when_the_replica_stops() -> None:
    closing = asyncio.Event()
    never = asyncio.create_task(asyncio.Event().wait())
    closing.set()
    with pytest.raises(Problem) as raised:
        await until_closing(closing, never, {"Location": "/threads/t/runs/r/join"})
    assert raised.value.status == 503
    assert raised.value.headers == {"Retry-After": "1", "Location": "/threads/t/runs/r/join"}
    # The wait is let go; the run it followed is not this task.
    with pytest.raises(asyncio.CancelledError):
        await never
