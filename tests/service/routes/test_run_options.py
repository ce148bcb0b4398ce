"""Run options the SDK sends are honoured or refused with a reason, never silently dropped."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypedDict

import httpx
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from tests.support.runs import claimed
from tests.support.runs import executor as executor_for
from threadkeeper.service.db import Pool

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


async def test_options_this_service_cannot_honour_are_refused(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    run = {"assistant_id": "agent", "input": HELLO}
    refusals = [
        ({"feedback_keys": ["score"]}, "feedback"),
        ({"strict_resume": True}, "strict_resume"),
        ({"langsmith_tracer": {"project_name": "p"}}, "tracing"),
        ({"webhook": "http://127.0.0.1:9/hook"}, "webhooks are not supported"),
        ({"after_seconds": -1}, "after_seconds"),
        ({"after_seconds": 10**9}, "after_seconds"),
    ]
    for option, reason in refusals:
        r = await client.post(f"/threads/{tid}/runs", json={**run, **option})
        assert r.status_code == 422, (option, r.text)
        assert reason in r.json()["detail"], (option, r.text)
    # What they mean when off is what happens anyway.
    off = {
        "feedback_keys": [],
        "strict_resume": False,
        "langsmith_tracer": None,
        "after_seconds": 0,
    }
    r = await client.post(f"/threads/{tid}/runs/wait", json={**run, **off})
    assert r.status_code == 200, r.text
    assert len((await client.get(f"/threads/{tid}/runs")).json()) == 1


async def test_a_run_from_an_unknown_checkpoint_is_404(client: httpx.AsyncClient) -> None:
    """Starting from a checkpoint the thread lacks would start from nothing: refused, not run."""
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    first = await client.post(
        f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": HELLO}
    )
    assert first.status_code == 200
    state = (await client.get(f"/threads/{tid}/state")).json()
    unknown = str(uuid.uuid4())
    run = {"assistant_id": "agent", "input": HELLO}
    for start in ({"checkpoint_id": unknown}, {"checkpoint": {"checkpoint_id": unknown}}):
        for path in ("runs", "runs/wait", "runs/stream"):
            r = await client.post(f"/threads/{tid}/{path}", json={**run, **start})
            assert r.status_code == 404, (path, start, r.text)
            assert unknown in r.json()["detail"]
    assert len((await client.get(f"/threads/{tid}/runs")).json()) == 1
    assert (await client.get(f"/threads/{tid}/state")).json() == state
    # A checkpoint the thread has is a fork point, as before.
    known = {"checkpoint_id": state["checkpoint"]["checkpoint_id"]}
    r = await client.post(f"/threads/{tid}/runs/wait", json={**run, **known})
    assert r.status_code == 200, r.text
