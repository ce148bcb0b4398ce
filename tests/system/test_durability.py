"""A run's ``durability``: how often its checkpoints are written, never what the thread holds."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langgraph.types import Durability

from threadkeeper.service.executor import DEFAULT_DURABILITY, run_durability

CONVERSATION = ["hello, remember the word zebra", "what is 6*7", "which word did I give you?"]

CHECKPOINTS_PER_RUN_SQL = """
SELECT r.run_id::text AS run_id, count(c.checkpoint_id) AS n
FROM runs r
LEFT JOIN checkpoints c
  ON c.thread_id = r.thread_id::text AND c.checkpoint_ns = ''
 AND c.metadata->>'run_id' = r.run_id::text
WHERE r.thread_id = %s
GROUP BY r.run_id, r.created_at
ORDER BY r.created_at
"""


def turn(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "assistant_id": "agent",
        "input": {"messages": [{"role": "user", "content": text}]},
        **extra,
    }


async def converse(client: httpx.AsyncClient, **extra: Any) -> tuple[str, list[str]]:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    replies = []
    for text in CONVERSATION:
        r = await client.post(f"/threads/{tid}/runs/wait", json=turn(text, **extra))
        assert r.status_code == 200, r.text
        replies.append(r.json()["messages"][-1]["content"])
    return tid, replies


async def checkpoints_per_run(client: httpx.AsyncClient, tid: str) -> list[int]:
    pool = client._transport.app.state.services.pool  # type: ignore[attr-defined]
    async with pool.connection() as conn:
        cur = await conn.execute(CHECKPOINTS_PER_RUN_SQL, (tid,))
        return [row["n"] for row in await cur.fetchall()]


async def messages(client: httpx.AsyncClient, tid: str) -> list[tuple[str, str]]:
    state = (await client.get(f"/threads/{tid}/state")).json()
    return [(m["type"], str(m["content"])) for m in state["values"]["messages"]]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, DEFAULT_DURABILITY),
        ({"durability": "exit"}, "exit"),
        ({"durability": "async"}, "async"),
        ({"checkpoint_during": False}, "exit"),
        ({"checkpoint_during": True}, "async"),
    ],
)
def test_the_run_kwargs_choose_the_durability(kwargs: dict[str, Any], expected: str) -> None:
    assert run_durability(kwargs) == expected


@pytest.mark.parametrize("extra", [{"durability": "exit"}, {"checkpoint_during": False}])
async def test_exit_writes_one_checkpoint_a_run_and_keeps_the_same_conversation(
    client: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    stepwise, stepwise_replies = await converse(client)
    at_exit, at_exit_replies = await converse(client, **extra)
    assert at_exit_replies == stepwise_replies
    assert "zebra" in at_exit_replies[-1]
    assert await messages(client, at_exit) == await messages(client, stepwise)
    every_step = await checkpoints_per_run(client, stepwise)
    assert len(every_step) == len(CONVERSATION)
    assert all(n > 1 for n in every_step), every_step
    first, *later = await checkpoints_per_run(client, at_exit)
    # A thread's first run also stores LangGraph's stub parent, which holds the input's
    # DeltaChannel writes when there is no checkpoint to store them on.
    assert first == 2
    assert later == [1] * (len(CONVERSATION) - 1)


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_stepwise_modes_checkpoint_every_step(
    client: httpx.AsyncClient, durability: Durability
) -> None:
    """With "async" a step's checkpoint is written while the next step runs; the turn ends only
    after every one is written, so a reader sees all of them once the response arrives."""
    reference, reference_replies = await converse(client, durability="sync")
    tid, replies = await converse(client, durability=durability)
    assert replies == reference_replies
    assert await checkpoints_per_run(client, tid) == await checkpoints_per_run(client, reference)


async def test_a_run_may_not_name_both_durability_fields(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    r = await client.post(
        f"/threads/{tid}/runs/wait",
        json=turn("hello", durability="sync", checkpoint_during=True),
    )
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "checkpoint_during" in r.text
    assert (await client.get(f"/threads/{tid}/runs")).json() == []


async def test_an_unknown_durability_is_refused(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    r = await client.post(f"/threads/{tid}/runs", json=turn("hello", durability="never"))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (await client.get(f"/threads/{tid}/runs")).json() == []
