"""langgraph-sdk runs API and langgraph's RemoteGraph, unchanged, against the service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from langgraph.pregel.remote import RemoteGraph
from langgraph_sdk import get_client, get_sync_client

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow


def _say(text: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_sdk_runs_api_across_replicas(replicas: Callable[..., ServiceProcess]) -> None:
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)
    thread = await on_a.threads.create()
    tid = thread["thread_id"]

    chunks = [
        c
        async for c in on_a.runs.stream(
            tid, "agent", input=_say("hi there"), stream_mode=["values", "messages-tuple"]
        )
    ]
    assert chunks[0].event == "metadata"
    assert any(c.event == "messages" for c in chunks)
    values = [c.data for c in chunks if c.event == "values"]
    assert "Turn 1." in values[-1]["messages"][-1]["content"]

    run = await on_a.runs.create(tid, "agent", input=_say("look up slowly 0.5"))
    joined = [c async for c in on_b.runs.join_stream(tid, run["run_id"])]
    assert joined[-1].event == "end"
    final = await on_b.runs.join(tid, run["run_id"])
    assert "looked up slowly for 0.5s" in final["messages"][-1]["content"]
    got = await on_b.runs.get(tid, run["run_id"])
    assert got["status"] == "success"
    assert next(r["run_id"] for r in await on_b.runs.list(tid)) == run["run_id"]

    slow = await on_a.runs.create(tid, "agent", input=_say("look up slowly 60"))
    # Cancel once the turn is under way, so its message is in the thread (interrupt keeps it).
    async with asyncio.timeout(30):
        while (await on_b.threads.get_state(tid))["next"] != ["act"]:  # noqa: ASYNC110 - remote state
            await asyncio.sleep(0.05)
    await on_b.runs.cancel(tid, slow["run_id"], wait=True)
    assert (await on_a.runs.get(tid, slow["run_id"]))["status"] == "interrupted"
    waited = await on_b.runs.wait(tid, "agent", input=_say("after the cancel"))
    assert "Turn 4." in waited["messages"][-1]["content"]
    await on_a.runs.delete(tid, run["run_id"])
    assert run["run_id"] not in [r["run_id"] for r in await on_a.runs.list(tid)]


def test_remote_graph(replicas: Callable[..., ServiceProcess]) -> None:
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    client = get_sync_client(url=a.url)
    tid = client.threads.create()["thread_id"]
    config = {"configurable": {"thread_id": tid}}
    graph_a = RemoteGraph("agent", url=a.url)
    graph_b = RemoteGraph("agent", url=b.url)

    out = graph_a.invoke(_say("I am a remote graph"), config)
    assert "Turn 1." in out["messages"][-1]["content"]
    parts = list(graph_b.stream(_say("what is 5*5"), config, stream_mode="values"))
    assert "5*5 = 25" in parts[-1]["messages"][-1]["content"]
    assert "I am a remote graph" in parts[-1]["messages"][-1]["content"]

    state = graph_b.get_state(config)
    assert len(state.values["messages"]) == 6
    history = list(graph_a.get_state_history(config))
    assert (
        history[0].config["configurable"]["checkpoint_id"]
        == (state.config["configurable"]["checkpoint_id"])
    )
    updated = graph_a.update_state(config, _say("a note"), as_node="reply")
    assert updated["configurable"]["thread_id"] == tid
    assert graph_b.get_state(config).values["messages"][-1]["content"] == "a note"
    fresh = graph_b.invoke(_say("new thread please"), {"configurable": {"thread_id": _new_id()}})
    assert "Turn 1." in fresh["messages"][-1]["content"]


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())
