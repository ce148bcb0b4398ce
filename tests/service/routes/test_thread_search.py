"""threads.search ``sort_by`` ``status`` and ``state_updated_at``, as the Agent Server has them."""

from __future__ import annotations

import httpx

TURN = {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": "hi"}]}}
SLOW = {
    "assistant_id": "agent",
    "input": {"messages": [{"role": "user", "content": "look up slowly 30"}]},
}


async def _new(client: httpx.AsyncClient) -> str:
    thread_id: str = (await client.post("/threads", json={})).json()["thread_id"]
    return thread_id


async def _interrupted(client: httpx.AsyncClient) -> str:
    """A thread waiting before its tool runs (``interrupt_before``)."""
    thread_id = await _new(client)
    paused = await client.post(
        f"/threads/{thread_id}/runs/wait",
        json={
            **SLOW,
            "input": {"messages": [{"role": "user", "content": "look up slowly 1"}]},
            "interrupt_before": ["act"],
        },
    )
    assert paused.status_code == 200, paused.text
    return thread_id


async def _ids(client: httpx.AsyncClient, **search: object) -> list[str]:
    found = await client.post("/threads/search", json=search)
    assert found.status_code == 200, found.text
    return [t["thread_id"] for t in found.json()]


async def test_sort_by_status(client: httpx.AsyncClient) -> None:
    idle = await _new(client)
    waiting = await _interrupted(client)
    busy = await _new(client)
    slow = (await client.post(f"/threads/{busy}/runs", json=SLOW)).json()
    statuses = {
        t: (await client.get(f"/threads/{t}")).json()["status"] for t in (idle, waiting, busy)
    }
    assert statuses == {idle: "idle", waiting: "interrupted", busy: "busy"}

    assert await _ids(client, sort_by="status", sort_order="asc") == [busy, idle, waiting]
    assert await _ids(client, sort_by="status", sort_order="desc") == [waiting, idle, busy]
    await client.post(f"/threads/{busy}/runs/{slow['run_id']}/cancel?wait=1&action=rollback")


async def test_sort_by_state_updated_at(client: httpx.AsyncClient) -> None:
    spoken_late = await _new(client)
    silent = await _new(client)
    await client.post(f"/threads/{spoken_late}/runs/wait", json=TURN)
    reported = {
        t["thread_id"]: t["state_updated_at"]
        for t in (await client.post("/threads/search", json={})).json()
    }
    assert reported[spoken_late] > reported[silent]

    assert await _ids(client, sort_by="state_updated_at") == [spoken_late, silent]
    assert await _ids(client, sort_by="state_updated_at", sort_order="asc") == [silent, spoken_late]
    # Not the creation order, which is the other way round.
    assert await _ids(client, sort_by="created_at") == [silent, spoken_late]


async def test_search_shows_each_threads_values_and_interrupts(client: httpx.AsyncClient) -> None:
    """The Agent Chat UI labels its thread list with ``values.messages[0]`` of each result."""
    spoken = await _new(client)
    done = await client.post(f"/threads/{spoken}/runs/wait", json=TURN)
    assert done.status_code == 200, done.text
    paused = await _interrupted(client)
    silent = await _new(client)

    found = {t["thread_id"]: t for t in (await client.post("/threads/search", json={})).json()}

    assert found[spoken]["values"]["messages"][0]["content"] == "hi"
    assert found[spoken]["values"]["messages"][-1]["type"] == "ai"
    assert not found[silent]["values"]
    assert found[paused]["status"] == "interrupted"
    got = await client.get(f"/threads/{paused}")
    assert found[paused]["values"] == got.json()["values"]
    assert found[paused]["interrupts"] == got.json()["interrupts"]


async def test_search_without_values_selected_leaves_them_out(client: httpx.AsyncClient) -> None:
    thread_id = await _new(client)
    await client.post(f"/threads/{thread_id}/runs/wait", json=TURN)
    found = await client.post("/threads/search", json={"select": ["thread_id", "status"]})
    assert found.json() == [{"thread_id": thread_id, "status": "idle"}]
