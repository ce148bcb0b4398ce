"""Cron bodies that are refused, in process against a real Postgres: each is a 422 problem
saying why, and nothing is stored."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"schedule": "61 * * * *"}, "not a cron expression"),
        ({"schedule": "every day"}, "not a cron expression"),
        ({"schedule": "* * * * *", "timezone": "Mars/Olympus"}, "not an IANA timezone"),
        ({"schedule": "* * * * *", "end_time": "soon"}, "end_time"),
        ({"schedule": "* * * * *", "webhook": "http://x"}, "webhooks are not supported"),
        ({"schedule": "* * * * *", "stream_mode": 7}, "stream_mode"),
        ({"schedule": "* * * * *", "stream_mode": "bogus"}, "'bogus' is not supported"),
        ({"schedule": "* * * * *", "on_run_completed": "burn"}, "on_run_completed"),
        ({"schedule": "* * * * *", "checkpoint_id": str(uuid.uuid4())}, "checkpoint_id"),
        ({"schedule": "* * * * *", "multitask_strategy": "later"}, "multitask_strategy"),
    ],
)
async def test_bad_crons_are_refused(
    client: httpx.AsyncClient, body: dict[str, Any], says: str
) -> None:
    for path in ("/runs/crons", f"/threads/{uuid.uuid4()}/runs/crons"):
        if "on_run_completed" in body and path != "/runs/crons":
            continue  # a thread cron has no such field: refused as unknown, tested below
        r = await client.post(path, json={"assistant_id": "agent", **body})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert says in r.text
    assert (await client.post("/runs/crons/count", json={})).json() == 0


async def test_a_thread_cron_takes_no_on_run_completed(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    r = await client.post(
        f"/threads/{tid}/runs/crons",
        json={"assistant_id": "agent", "schedule": "* * * * *", "on_run_completed": "keep"},
    )
    assert r.status_code == 422, r.text
    assert "on_run_completed" in r.text
    assert (await client.post("/runs/crons/count", json={})).json() == 0
