"""``stream_subgraphs``: a subgraph's events reach the run's stream only when asked for.

The executor is driven directly, on a real pool, with a graph whose one node is a compiled
subgraph. The notification hub is not started: nothing here waits for a notification.
"""

from __future__ import annotations

import uuid
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from service import events, runs, threads
from service.db import Pool
from service.executor import Executor
from service.metrics import Metrics
from service.notify import Hub
from tests.support.runs import new_run

REPLICA = "executor-subgraphs-test"


class Counter(TypedDict):
    n: int


def nested_graph() -> Any:
    async def step(state: Counter) -> Counter:
        return {"n": state["n"] + 1}

    inner = StateGraph(Counter)
    inner.add_node("step", step)
    inner.add_edge(START, "step")
    inner.add_edge("step", END)
    outer = StateGraph(Counter)
    outer.add_node("inner", inner.compile())
    outer.add_edge(START, "inner")
    outer.add_edge("inner", END)
    return outer.compile(name="agent")


async def _run(pool: Pool, kwargs: dict[str, Any]) -> tuple[Any, list[events.Event]]:
    thread_id = uuid.uuid4()
    new = new_run(thread_id, input={"n": 0}, kwargs=kwargs)
    async with pool.connection() as conn:
        await threads.insert(conn, thread_id=thread_id, owner="alice", metadata={})
        await runs.insert(conn, new, claim_for=(REPLICA, 30.0))
        claimed = await runs.get_by_id(conn, new.run_id)
    assert claimed is not None
    executor = Executor(
        pool=pool,
        hub=Hub("postgresql://unused"),
        graph=nested_graph(),
        metrics=Metrics(),
        replica=REPLICA,
        lease_seconds=30.0,
    )
    attempt = executor.start(claimed)
    assert attempt.task is not None
    outcome = await attempt.task
    async with pool.connection() as conn:
        recorded = await events.read_after(conn, new.run_id, 0)
    return outcome, recorded


@pytest.mark.parametrize("subgraphs", [False, True])
async def test_subgraph_events_only_when_asked_for(pool: Pool, subgraphs: bool) -> None:
    outcome, recorded = await _run(
        pool, {"stream_mode": ["values", "updates"], "stream_subgraphs": subgraphs}
    )
    assert outcome.status == "success" and outcome.values == {"n": 1}
    names = [e.event for e in recorded]
    nested = [name for name in names if "|" in name]
    root = [e for e in recorded if e.event in ("values", "updates")]
    # The root graph's events come either way, the last one the end state.
    assert [e.data for e in root if e.event == "values"][-1] == {"n": 1}
    assert {"inner": {"n": 1}} in [e.data for e in root if e.event == "updates"]
    if subgraphs:
        assert {name.split("|")[0] for name in nested} == {"values", "updates"}
        assert all(name.split("|")[1].startswith("inner:") for name in nested)
    else:
        assert nested == []
    assert names[0] == "metadata" and names[-1] == "end"
