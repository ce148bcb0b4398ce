"""``/join`` of a run whose final checkpoint a history prune deleted: a problem, never ``{}``."""

from __future__ import annotations

import httpx

from reaper.db import connect
from reaper.engine import prune
from tests.reaper.support import policy


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
