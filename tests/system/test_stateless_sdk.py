"""Stateless runs through langgraph-sdk and RemoteGraph, unchanged, across two replicas: each
run's thread is the caller's, and goes once the run ended (also when its replica died)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.pregel.remote import RemoteGraph
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError

from tests.support.balancer import front
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

# A second's grace: threads nobody waited for go soon after their runs.
ENV = {"THREADKEEPER_TEMPORARY_THREAD_SECONDS": "1", "THREADKEEPER_POLL_SECONDS": "0.2"}
GONE_WITHIN = 30.0
Pair = tuple[ServiceProcess, ServiceProcess]


@pytest.fixture
def two_replicas(replicas: Callable[..., ServiceProcess]) -> Callable[..., Pair]:
    """Starts replicas a and b with ``ENV`` and the given overrides (a migrates the database)."""

    def start(**overrides: str) -> Pair:
        env = {**ENV, **overrides}
        return replicas("a", **env).start(), replicas("b", **env).start(migrate=False)

    return start


def _say(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _threads(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT thread_id::text FROM threads ORDER BY thread_id").fetchall()
    return [row[0] for row in rows]


def _checkpoint_rows(database_url: str, thread_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s)"
            " + (SELECT count(*) FROM checkpoint_writes WHERE thread_id = %(t)s)"
            " + (SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %(t)s)",
            {"t": thread_id},
        ).fetchone()
    assert row is not None
    return int(row[0])


def _until_threads_are(database_url: str, expected: list[str]) -> None:
    deadline = time.monotonic() + GONE_WITHIN
    while _threads(database_url) != sorted(expected):
        assert time.monotonic() < deadline, f"threads left: {_threads(database_url)}"
        time.sleep(0.1)


async def test_sdk_stateless_runs_across_replicas(
    two_replicas: Callable[..., Pair], database_url: str
) -> None:
    a, b = two_replicas()
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)

    waited = await on_a.runs.wait(None, "agent", input=_say("hi there"))
    assert isinstance(waited, dict)
    assert "Turn 1." in waited["messages"][-1]["content"]

    created: list[dict[str, Any]] = []
    chunks = [
        c
        async for c in on_b.runs.stream(
            None,
            "agent",
            input=_say("what is 5*5"),
            stream_mode="values",
            on_run_created=created.append,
        )
    ]
    assert chunks[-1].event == "end"
    assert (
        "5*5 = 25"
        in next(c for c in reversed(chunks) if c.event == "values").data["messages"][-1]["content"]
    )
    streamed_thread = created[0]["thread_id"]
    assert streamed_thread is not None

    background = await on_a.runs.create(None, "agent", input=_say("look up slowly 0.5"))
    joined = await on_b.runs.join(background["thread_id"], background["run_id"])
    assert "looked up slowly for 0.5s" in joined["messages"][-1]["content"]

    batch = await on_b.runs.create_batch(
        [
            {"assistant_id": "agent", "input": _say("first")},
            {"assistant_id": "agent", "input": _say("second"), "on_completion": "keep"},
        ]
    )
    kept_thread = batch[1]["thread_id"]
    for run in batch:
        await on_a.runs.join(run["thread_id"], run["run_id"])

    # A kept thread is an ordinary thread of the caller's, on every replica.
    kept_state = await on_a.threads.get_state(kept_thread)
    assert kept_state["values"]["messages"][0]["content"] == "second"
    _until_threads_are(database_url, [kept_thread])
    for thread_id in (streamed_thread, background["thread_id"], batch[0]["thread_id"]):
        with pytest.raises(NotFoundError):
            await on_b.threads.get(thread_id)
        assert _checkpoint_rows(database_url, thread_id) == 0


def test_remote_graph_without_a_thread_and_as_a_node(
    two_replicas: Callable[..., Pair], database_url: str
) -> None:
    a, b = two_replicas()

    out = RemoteGraph("agent", url=a.url).invoke(_say("I am a remote graph"))
    assert "Turn 1." in out["messages"][-1]["content"]

    parent = StateGraph(MessagesState)
    parent.add_node("remote", RemoteGraph("agent", url=b.url))
    parent.add_edge(START, "remote")
    result = parent.compile().invoke(_say("what is 6*7"))
    assert "6*7 = 42" in result["messages"][-1].content

    _until_threads_are(database_url, [])


async def test_a_stateless_run_outlives_its_replica_and_its_thread_goes_after(
    two_replicas: Callable[..., Pair], database_url: str
) -> None:
    """The SDK follows the run to the other replica (as it would behind a Service), which
    resumes it; the thread goes once the resumed run ended, though its waiter died with a."""
    a, b = two_replicas(THREADKEEPER_LEASE_SECONDS="2")
    with front([a.port, b.port]) as balancer:
        sdk = get_client(url=balancer.url, timeout=httpx.Timeout(60))
        created: list[dict[str, Any]] = []
        chunks = []
        async for chunk in sdk.runs.stream(
            None,
            "agent",
            input=_say("look up slowly 3"),
            stream_mode=["updates", "values"],
            on_run_created=created.append,
        ):
            chunks.append(chunk)
            if chunk.event == "updates" and "plan" in chunk.data:
                # The attempt on a sits in the slow tool now.
                await asyncio.to_thread(a.kill)
    thread_id = created[0]["thread_id"]
    assert chunks[-1].event == "end"
    final = next(c for c in reversed(chunks) if c.event == "values").data
    assert "looked up slowly for 3s" in final["messages"][-1]["content"]
    assert "run_resuming" in b.logs()
    _until_threads_are(database_url, [])
    assert _checkpoint_rows(database_url, thread_id) == 0
