"""The official langgraph-sdk client against a running server process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow


def _say(text: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_sdk_threads_state_history_and_runs(
    replicas: Callable[..., ServiceProcess],
) -> None:
    server = replicas("sdk").start()
    client = get_client(url=server.url)

    thread = await client.threads.create(metadata={"project": "sdk"})
    tid = thread["thread_id"]
    assert (await client.threads.get(tid))["metadata"] == {"project": "sdk"}
    with pytest.raises(ConflictError):
        await client.threads.create(thread_id=tid)
    same = await client.threads.create(thread_id=tid, if_exists="do_nothing")
    assert same["thread_id"] == tid

    result = await client.runs.wait(tid, "agent", input=_say("the secret is 4711"))
    assert "Turn 1." in result["messages"][-1]["content"]
    result = await client.runs.wait(tid, "agent", input=_say("what is 12*3"))
    reply = result["messages"][-1]["content"]
    assert "4711" in reply
    assert "12*3 = 36" in reply

    updated = await client.threads.update(tid, metadata={"stage": "two"})
    # As the Agent Server's, a thread's metadata records the graph and assistant of its runs.
    ran = {"graph_id": "agent", "assistant_id": "fe096781-5601-53d2-b2f6-0d3403f7e9ca"}
    assert updated["metadata"] == {"project": "sdk", "stage": "two", **ran}
    found = await client.threads.search(metadata={"project": "sdk"})
    assert [t["thread_id"] for t in found] == [tid]
    assert await client.threads.count(metadata={"stage": "two"}) == 1

    state = await client.threads.get_state(tid)
    assert [m["type"] for m in state["values"]["messages"]] == [
        "human",
        "ai",
        "human",
        "ai",
        "tool",
        "ai",
    ]
    assert state["next"] == []
    history = await client.threads.get_history(tid, limit=50)
    assert history[0]["checkpoint"]["checkpoint_id"] == state["checkpoint"]["checkpoint_id"]
    earlier = history[-1]["checkpoint"]
    old = await client.threads.get_state(tid, checkpoint=earlier)
    assert old["checkpoint"]["checkpoint_id"] == earlier["checkpoint_id"]
    at = await client.threads.get_state(
        tid, checkpoint_id=history[3]["checkpoint"]["checkpoint_id"]
    )
    assert at["values"] == history[3]["values"]

    written = await client.threads.update_state(
        tid, {"messages": [{"role": "user", "content": "note from the SDK"}]}, as_node="reply"
    )
    assert written["checkpoint"]["thread_id"] == tid
    after = await client.threads.get_state(tid)
    assert after["values"]["messages"][-1]["content"] == "note from the SDK"

    copy = await client.threads.copy(tid)
    assert (await client.threads.get_state(copy["thread_id"]))["values"] == after["values"]

    runs = await client.runs.list(tid)
    assert [r["status"] for r in runs] == ["success", "success"]
    assert (await client.runs.get(tid, runs[0]["run_id"]))["run_id"] == runs[0]["run_id"]

    # runs.wait raises plain httpx errors (the SDK does not map them to its typed ones).
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await client.runs.wait(tid, "agent", input=_say("x"), webhook="http://127.0.0.1:9/hook")
    assert refused.value.response.status_code == 422
    await client.threads.delete(tid)
    with pytest.raises(NotFoundError):
        await client.threads.get(tid)

    created = await client.runs.wait(
        "6f1c0d2e-0000-4000-8000-000000000001", "agent", input=_say("new"), if_not_exists="create"
    )
    assert "Turn 1." in created["messages"][-1]["content"]
    assistants = await client.assistants.search()
    assert assistants[0]["graph_id"] == "agent"


async def test_sdk_runs_choose_their_durability(replicas: Callable[..., ServiceProcess]) -> None:
    """``runs.wait(..., durability="exit")`` reaches the graph: one checkpoint per turn (and the
    first turn's stub parent) where the default writes one per step."""
    server = replicas("sdk-durability").start()
    client = get_client(url=server.url)
    histories: dict[str, list[Any]] = {}
    for durability in ("sync", "exit"):
        tid = (await client.threads.create())["thread_id"]
        for text in ("the secret is 4711", "what is the secret?"):
            result = await client.runs.wait(tid, "agent", input=_say(text), durability=durability)
        assert "4711" in result["messages"][-1]["content"]
        histories[durability] = await client.threads.get_history(tid, limit=100)
    runs_at_exit = [h["metadata"]["run_id"] for h in histories["exit"]]
    assert len(set(runs_at_exit)) == 2
    assert len(runs_at_exit) == 3
    assert len(histories["sync"]) > len(histories["exit"])
