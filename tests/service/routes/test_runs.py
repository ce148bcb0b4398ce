"""Runs: one executor per thread, deletes that never race a run, resume after a stop."""

from __future__ import annotations

import asyncio
import uuid

import httpx


def say(text: str) -> dict[str, object]:
    return {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}}


async def wait_for_status(client: httpx.AsyncClient, tid: str, status: str) -> None:
    for _ in range(400):
        if (await client.get(f"/threads/{tid}")).json()["status"] == status:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"thread {tid} never became {status}")


async def checkpoint_rows(client: httpx.AsyncClient, tid: str) -> int:
    pool = client._transport.app.state.services.pool  # type: ignore[attr-defined]
    async with pool.connection() as conn:
        total = 0
        for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"):
            cur = await conn.execute(
                f"SELECT count(*) AS n FROM {table} WHERE thread_id = %s", (tid,)
            )
            row = await cur.fetchone()
            total += row["n"]
        return total


async def test_reject_strategy_refuses_a_busy_thread(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    slow = asyncio.create_task(
        client.post(f"/threads/{tid}/runs/wait", json=say("look up slowly 1.5"))
    )
    try:
        await wait_for_status(client, tid, "busy")
        second = await client.post(
            f"/threads/{tid}/runs/wait", json={**say("me too"), "multitask_strategy": "reject"}
        )
        assert second.status_code == 409
        assert "already running" in second.json()["detail"]
        update = await client.post(f"/threads/{tid}/state", json={"values": {"messages": []}})
        assert update.status_code == 409
    finally:
        first = await slow
    assert first.status_code == 200
    assert "looked up slowly" in first.text
    runs = (await client.get(f"/threads/{tid}/runs")).json()
    assert [r["status"] for r in runs] == ["success"]
    assert (await client.get(f"/threads/{tid}")).json()["status"] == "idle"


async def test_delete_during_a_run_cancels_it_and_nothing_reappears(
    client: httpx.AsyncClient,
) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    await client.post(f"/threads/{tid}/runs/wait", json=say("hello"))
    run = (await client.post(f"/threads/{tid}/runs", json=say("look up slowly 30"))).json()
    await wait_for_status(client, tid, "busy")
    executor = client._transport.app.state.services.executor  # type: ignore[attr-defined]
    attempt = executor.attempts[uuid.UUID(run["run_id"])]
    assert (await client.delete(f"/threads/{tid}")).status_code == 204
    async with asyncio.timeout(15):
        await attempt.done.wait()  # the executing attempt noticed and stopped
    assert await checkpoint_rows(client, tid) == 0
    assert (await client.get(f"/threads/{tid}")).status_code == 404


async def test_delete_removes_every_checkpoint_row(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    for text in ["one", "what is 1+1", "three"]:
        assert (await client.post(f"/threads/{tid}/runs/wait", json=say(text))).status_code == 200
    assert await checkpoint_rows(client, tid) > 0
    assert (await client.delete(f"/threads/{tid}")).status_code == 204
    assert await checkpoint_rows(client, tid) == 0
    assert (await client.get(f"/threads/{tid}/runs")).status_code == 404


async def test_archive_hides_from_default_search(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    await client.post(f"/threads/{tid}/runs/wait", json=say("keep me"))
    r = await client.patch(f"/threads/{tid}", json={"archived": True})
    assert r.json()["archived_at"] is not None
    assert (await client.post("/threads/search", json={})).json() == []
    archived = (await client.post("/threads/search", json={"archived": True})).json()
    assert [t["thread_id"] for t in archived] == [tid]
    # Soft delete keeps the conversation.
    assert "keep me" in str((await client.get(f"/threads/{tid}/state")).json()["values"])
    r = await client.patch(f"/threads/{tid}", json={"archived": False})
    assert r.json()["archived_at"] is None


async def test_search_sort_paginate_count(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(5):
        r = await client.post("/threads", json={"metadata": {"i": i, "even": i % 2 == 0}})
        ids.append(r.json()["thread_id"])
    for tid in (ids[3], ids[1]):  # ids[1] spoke last
        await client.post(f"/threads/{tid}/runs/wait", json=say("hi"))
    r = await client.post(
        "/threads/search", json={"sort_by": "last_message_at", "limit": 2, "offset": 0}
    )
    assert [t["thread_id"] for t in r.json()] == [ids[1], ids[3]]
    assert r.headers["X-Pagination-Total"] == "5"
    assert r.headers["X-Pagination-Next"] == "2"
    r = await client.post("/threads/search", json={"metadata": {"even": True}, "limit": 10})
    assert {t["thread_id"] for t in r.json()} == {ids[0], ids[2], ids[4]}
    assert (await client.post("/threads/count", json={"metadata": {"even": False}})).json() == 2
    r = await client.post("/threads/search", json={"sort_by": "created_at", "sort_order": "asc"})
    assert [t["thread_id"] for t in r.json()] == ids


async def test_copy_and_time_travel(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    for text in ["first words", "second words"]:
        await client.post(f"/threads/{tid}/runs/wait", json=say(text))
    copy = (await client.post(f"/threads/{tid}/copy")).json()
    assert copy["thread_id"] != tid
    assert copy["title"] == "first words"
    original_state = (await client.get(f"/threads/{tid}/state")).json()
    copied_state = (await client.get(f"/threads/{copy['thread_id']}/state")).json()
    assert copied_state["values"] == original_state["values"]

    history = (await client.post(f"/threads/{tid}/history", json={"limit": 100})).json()
    assert len(history) >= 6
    ids = [h["checkpoint"]["checkpoint_id"] for h in history]
    assert ids == sorted(ids, reverse=True)
    # The state right after the first turn still reads as it was.
    after_first = next(
        h for h in history if len(h["values"].get("messages", [])) == 2 and not h["next"]
    )
    cid = after_first["checkpoint"]["checkpoint_id"]
    at = (await client.get(f"/threads/{tid}/state/{cid}")).json()
    assert at["values"] == after_first["values"]
    posted = await client.post(
        f"/threads/{tid}/state/checkpoint", json={"checkpoint": {"checkpoint_id": cid}}
    )
    assert posted.json()["values"] == after_first["values"]
    older = (await client.get(f"/threads/{tid}/history?limit=2&before={cid}")).json()
    assert all(h["checkpoint"]["checkpoint_id"] < cid for h in older)
    assert len(older) == 2

    # Continue the conversation from the fork and the copy keeps its own history.
    forked = await client.post(
        f"/threads/{tid}/state", json={"values": None, "checkpoint_id": cid, "as_node": "reply"}
    )
    assert forked.status_code == 200, forked.text
    r = await client.post(f"/threads/{tid}/runs/wait", json=say("after the fork"))
    assert "Turn 2." in r.json()["messages"][-1]["content"]
    r = await client.post(f"/threads/{copy['thread_id']}/runs/wait", json=say("in the copy"))
    assert "Turn 3." in r.json()["messages"][-1]["content"]


async def test_idempotency_key_makes_retries_safe(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    headers = {"Idempotency-Key": "turn-1"}
    first = (await client.post(f"/threads/{tid}/runs", json=say("once"), headers=headers)).json()
    again = (await client.post(f"/threads/{tid}/runs", json=say("once"), headers=headers)).json()
    assert again["run_id"] == first["run_id"]
    joined = await client.get(f"/threads/{tid}/runs/{first['run_id']}/join")
    assert "Turn 1." in joined.json()["messages"][-1]["content"]
    other = await client.post(f"/threads/{tid}/runs/wait", json=say("twice"))
    assert "Turn 2." in other.json()["messages"][-1]["content"]
    runs = (await client.get(f"/threads/{tid}/runs")).json()
    assert len(runs) == 2
    bad = await client.post(f"/threads/{tid}/runs", json=say("x"), headers={"Idempotency-Key": " "})
    assert bad.status_code == 422


async def test_events_of_a_run_that_never_executed(client: httpx.AsyncClient) -> None:
    """A queued run cancelled before it started still ends its stream (end event)."""
    from threadkeeper.service import events

    tid = (await client.post("/threads", json={})).json()["thread_id"]
    slow = (await client.post(f"/threads/{tid}/runs", json=say("look up slowly 30"))).json()
    queued = (await client.post(f"/threads/{tid}/runs", json=say("later"))).json()
    assert queued["status"] == "pending"
    r = await client.post(f"/threads/{tid}/runs/{queued['run_id']}/cancel?wait=1")
    assert r.json()["status"] == "interrupted"
    pool = client._transport.app.state.services.pool  # type: ignore[attr-defined]
    async with pool.connection() as conn:
        stream = await events.read_after(conn, uuid.UUID(queued["run_id"]), 0)
    assert [(e.seq, e.event) for e in stream] == [(1, "end")]
    await client.post(f"/threads/{tid}/runs/{slow['run_id']}/cancel?wait=1&action=rollback")
    assert (await client.get(f"/threads/{tid}/runs/{slow['run_id']}")).status_code == 404
    state = (await client.get(f"/threads/{tid}/state")).json()
    assert state["values"] in ({}, None) or state["values"].get("messages") in (None, [])


async def test_a_failing_run_reports_its_error(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    body = {**say("what is 1+1"), "config": {"recursion_limit": 1}}
    r = await client.post(f"/threads/{tid}/runs/wait", json=body)
    assert r.status_code == 200
    error = r.json()["__error__"]
    assert error["error"] == "GraphRecursionError"
    runs = (await client.get(f"/threads/{tid}/runs")).json()
    assert runs[0]["status"] == "error"
    assert runs[0]["error"]["error"] == "GraphRecursionError"
    assert (await client.get(f"/threads/{tid}")).json()["status"] == "error"
    # The thread stays usable.
    ok = await client.post(f"/threads/{tid}/runs/wait", json=say("again"))
    assert "__error__" not in ok.json()


async def test_bad_model_configuration_is_a_clear_error() -> None:
    import pytest

    from threadkeeper.service.agent.models import ModelConfigError, make_model

    with pytest.raises(ModelConfigError, match="provider:model"):
        make_model("gpt-4o")
