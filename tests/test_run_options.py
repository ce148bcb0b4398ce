"""Run options the SDK sends are honoured or refused with a reason, never silently dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import httpx
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from service.db import Pool
from tests.support.runs import claimed
from tests.support.runs import executor as executor_for

REPLICA = "run-options-test"
HELLO = {"messages": [{"role": "user", "content": "hi"}]}


class Greeting(TypedDict, total=False):
    greeting: str


@dataclass(frozen=True)
class Caller:
    name: str


def context_graph() -> CompiledStateGraph[Greeting]:
    """Greets whoever the run's runtime ``context`` names."""

    async def greet(state: Greeting, runtime: Runtime[Caller]) -> Greeting:
        return {"greeting": f"hello {runtime.context.name}"}

    graph = StateGraph(Greeting, context_schema=Caller)
    graph.add_node("greet", greet)
    graph.add_edge(START, "greet")
    graph.add_edge("greet", END)
    return graph.compile(name="agent")


async def test_context_reaches_the_graph(pool: Pool) -> None:
    """The run's ``context`` (LangGraph's runtime context) is what the graph's nodes see."""
    run = await claimed(pool, REPLICA, input={}, kwargs={"context": {"name": "ada"}})
    attempt = executor_for(pool, context_graph(), REPLICA).start(run)
    assert attempt.task is not None
    outcome = await attempt.task
    assert outcome.status == "success", outcome.error
    assert outcome.values == {"greeting": "hello ada"}


async def test_context_is_kept_with_the_run(client: httpx.AsyncClient) -> None:
    """Stored with the run, so an attempt resumed on another replica gets it too."""
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    body = {"assistant_id": "agent", "input": HELLO, "context": {"name": "ada"}}
    created = await client.post(f"/threads/{tid}/runs", json=body)
    assert created.status_code == 200, created.text
    run_id = created.json()["run_id"]
    await client.get(f"/threads/{tid}/runs/{run_id}/join")
    run = (await client.get(f"/threads/{tid}/runs/{run_id}")).json()
    assert run["kwargs"]["context"] == {"name": "ada"}


async def test_on_completion(client: httpx.AsyncClient) -> None:
    """``keep`` is what a thread's run always does; ``delete`` (the Agent Server's stateless-run
    option) is refused with the reason, and the thread is kept."""
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    run = {"assistant_id": "agent", "input": HELLO}
    kept = await client.post(f"/threads/{tid}/runs/wait", json={**run, "on_completion": "keep"})
    assert kept.status_code == 200, kept.text
    refused = await client.post(
        f"/threads/{tid}/runs/wait", json={**run, "on_completion": "delete"}
    )
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert "stateless" in refused.json()["detail"]
    assert (await client.get(f"/threads/{tid}")).status_code == 200
    assert len((await client.get(f"/threads/{tid}/runs")).json()) == 1
