"""``stream_subgraphs``: a subgraph's events reach the run's stream only when asked for.

The executor is driven directly, on a real pool, with a graph whose one node is a compiled
subgraph.
"""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph

from tests.support.runs import Counter, claimed
from tests.support.runs import executor as executor_for
from threadkeeper.service import events
from threadkeeper.service.db import Pool

REPLICA = "executor-subgraphs-test"


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
    run = await claimed(pool, REPLICA, input={"n": 0}, kwargs=kwargs)
    executor = executor_for(pool, nested_graph(), REPLICA)
    attempt = executor.start(run)
    assert attempt.task is not None
    outcome = await attempt.task
    async with pool.connection() as conn:
        recorded = await events.read_after(conn, run.run_id, 0)
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
