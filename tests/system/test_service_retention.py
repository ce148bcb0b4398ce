"""The service and the reaper on one database: what a prune leaves the API to answer."""

from __future__ import annotations

import httpx
import psycopg

from tests.reaper.support import policy
from threadkeeper.reaper.db import connect
from threadkeeper.reaper.engine import prune


def say(text: str) -> dict[str, object]:
    return {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}}


async def test_joining_a_run_whose_state_was_pruned_says_so(
    client: httpx.AsyncClient, database_url: str
) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    run_ids = []
    for text in ("hello", "what is 2+3", "bye"):
        created = await client.post(f"/threads/{tid}/runs", json=say(text))
        assert created.status_code == 200, created.text
        run_ids.append(created.json()["run_id"])
        joined = await client.get(f"/threads/{tid}/runs/{run_ids[-1]}/join")
        assert joined.status_code == 200, joined.text
    before = (await client.get(f"/threads/{tid}/runs/{run_ids[-1]}/join")).json()

    reaper = await connect(database_url)
    try:
        summary = await prune(reaper, policy(checkpoints={"keepLast": 1}))
    finally:
        await reaper.close()
    assert summary.checkpoints_deleted > 0

    old = await client.get(f"/threads/{tid}/runs/{run_ids[0]}/join")
    assert old.status_code == 410
    assert old.headers["content-type"] == "application/problem+json"
    problem = old.json()
    assert problem["type"].endswith("/state-pruned")
    assert (problem["run_id"], problem["run_status"]) == (run_ids[0], "success")
    assert "pruned by the retention policy" in problem["detail"]
    assert f"/threads/{tid}/state" in problem["detail"]
    # The last run's state is the one every prune keeps: it still answers with its values.
    latest = await client.get(f"/threads/{tid}/runs/{run_ids[-1]}/join")
    assert latest.status_code == 200
    assert latest.json() == before
    assert "Turn 3." in latest.json()["messages"][-1]["content"]


async def test_a_message_on_an_archived_thread_keeps_it_from_archived_for(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """Archived long ago, used today: the service stamps the message, the reaper keeps it."""
    used = (await client.post("/threads", json={})).json()["thread_id"]
    unused = (await client.post("/threads", json={})).json()["thread_id"]
    for tid in (used, unused):
        r = await client.post(f"/threads/{tid}/runs/wait", json=say("hello"))
        assert r.status_code == 200, r.text
        archived = await client.patch(f"/threads/{tid}", json={"archived": True})
        assert archived.status_code == 200, archived.text
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE threads SET archived_at = now() - interval '20 days',"
            " last_message_at = now() - interval '20 days'"
            " WHERE thread_id = ANY(%s::uuid[])",
            ([used, unused],),
        )
    r = await client.post(f"/threads/{used}/runs/wait", json=say("still here"))
    assert "Turn 2." in r.json()["messages"][-1]["content"]
    thread = (await client.get(f"/threads/{used}")).json()
    assert thread["archived_at"] is not None

    reaper = await connect(database_url)
    try:
        summary = await prune(reaper, policy(threads={"archivedFor": "7d"}))
    finally:
        await reaper.close()

    assert summary.threads_deleted.archived == 1
    assert (await client.get(f"/threads/{used}")).status_code == 200
    assert (await client.get(f"/threads/{unused}")).status_code == 404
