"""Assistants through langgraph-sdk and RemoteGraph, unchanged, on two replicas of one database."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from langgraph.pregel.remote import RemoteGraph
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

SYSTEM_ID = "fe096781-5601-53d2-b2f6-0d3403f7e9ca"


def _say(text: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_assistants_across_replicas(replicas: Callable[..., ServiceProcess]) -> None:
    # Both start at once: creating the system assistants must not fail either of them.
    a = replicas("a").start(wait=False)
    b = replicas("b").start(wait=False)
    a.wait_ready()
    b.wait_ready()
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)
    for client in (on_a, on_b):
        found = await client.assistants.search()
        assert [x["assistant_id"] for x in found] == [SYSTEM_ID]

    # The usual client start-up: create the app's assistant unless it exists.
    aid = str(uuid.uuid4())
    made = [
        await client.assistants.create(
            graph_id="agent",
            assistant_id=aid,
            name="helper",
            context={"tone": "dry"},
            if_exists="do_nothing",
        )
        for client in (on_a, on_b)
    ]
    assert made[0] == made[1]
    # Seen by the other replica at once.
    assert (await on_b.assistants.get(aid))["context"] == {"tone": "dry"}
    assert await on_b.assistants.count(graph_id="agent") == 2
    assert [x["assistant_id"] for x in await on_b.assistants.search(name="help")] == [aid]

    updated = await on_b.assistants.update(aid, context={"tone": "warm"}, metadata={"v": 2})
    assert updated["version"] == 2
    versions = await on_a.assistants.get_versions(aid)
    assert [v["version"] for v in versions] == [2, 1]
    back = await on_a.assistants.set_latest(aid, 1)
    assert back["version"] == 1
    assert (await on_b.assistants.get(aid))["context"] == {"tone": "dry"}

    for ident, url in (("agent", a.url), (aid, b.url)):
        drawn = RemoteGraph(ident, url=url).get_graph()
        assert {"plan", "act", "reply"} <= set(drawn.nodes)
        assert ("act", "plan") in {(e.source, e.target) for e in drawn.edges}
    xray = await on_a.assistants.get_graph(aid, xray=True)
    assert {n["id"] for n in xray["nodes"]} >= {"plan", "act", "reply"}
    schemas = await on_b.assistants.get_schemas(aid)
    assert schemas["graph_id"] == "agent"
    assert "messages" in schemas["state_schema"]["properties"]
    assert await on_a.assistants.get_subgraphs(aid, recurse=True) == {}

    thread = await on_a.threads.create()
    waited = await on_b.runs.wait(thread["thread_id"], aid, input=_say("hello"))
    assert "Turn 1." in waited["messages"][-1]["content"]
    run = (await on_a.runs.list(thread["thread_id"]))[0]
    assert run["assistant_id"] == aid
    assert run["kwargs"]["context"] == {"tone": "dry"}

    await on_a.assistants.delete(aid)
    with pytest.raises(NotFoundError):
        await on_b.assistants.get(aid)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await on_b.runs.wait(thread["thread_id"], aid, input=_say("again"))
    assert refused.value.response.status_code == 404
