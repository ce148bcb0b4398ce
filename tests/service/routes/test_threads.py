"""Thread endpoints, in process against a real Postgres."""

from __future__ import annotations

import uuid

import httpx


async def test_create_get_patch_delete(client: httpx.AsyncClient) -> None:
    r = await client.post("/threads", json={"metadata": {"topic": "cats"}})
    assert r.status_code == 200, r.text
    thread = r.json()
    tid = thread["thread_id"]
    assert uuid.UUID(tid)
    assert thread["status"] == "idle"
    assert thread["owner"] == "local"
    assert thread["metadata"] == {"topic": "cats"}

    r = await client.patch(f"/threads/{tid}", json={"metadata": {"mood": "ok"}, "title": "Cats"})
    assert r.status_code == 200, r.text
    assert r.json()["metadata"] == {"topic": "cats", "mood": "ok"}
    assert r.json()["title"] == "Cats"

    r = await client.get(f"/threads/{tid}")
    assert r.json()["title"] == "Cats"

    r = await client.delete(f"/threads/{tid}")
    assert r.status_code == 204
    r = await client.get(f"/threads/{tid}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 404


async def test_wait_run_remembers(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    first = "my favourite colour is teal"
    for turn, text in enumerate([first, "what is 6*7", "and again"], start=1):
        r = await client.post(
            f"/threads/{tid}/runs/wait",
            json={
                "assistant_id": "agent",
                "input": {"messages": [{"role": "user", "content": text}]},
            },
        )
        assert r.status_code == 200, r.text
        reply = r.json()["messages"][-1]["content"]
        assert f"Turn {turn}." in reply
        assert first in reply
    r = await client.get(f"/threads/{tid}")
    body = r.json()
    assert body["title"] == first
    assert body["status"] == "idle"
    assert body["last_message_at"] is not None
    assert "6*7 = 42" in str(body["values"])
