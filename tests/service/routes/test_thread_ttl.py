"""A thread's ``ttl`` (threads.create / threads.update, as the SDK sends it) and
``POST /threads/prune`` (threads.prune): owner scoped, never under a run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.support.fixtures import app_client
from threadkeeper.service.app import create_app
from threadkeeper.service.db import Pool
from threadkeeper.service.settings import Settings

ALICE = {"X-Forwarded-User": "alice"}
BOB = {"X-Forwarded-User": "bob"}
TURN = {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": "hi"}]}}
SLOW = {
    "assistant_id": "agent",
    "input": {"messages": [{"role": "user", "content": "look up slowly 2"}]},
}

TTL_SQL = """
SELECT ttl_strategy, ttl_minutes, extract(epoch FROM ttl_expires_at - updated_at) AS seconds
FROM threads WHERE thread_id = %s
"""


@pytest.fixture
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(auth="header"), run_migrations=False)
    async with app_client(app, headers=ALICE) as c:
        yield c


async def _ttl(pool: Pool, thread_id: str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = await conn.execute(TTL_SQL, (thread_id,))
        return await cur.fetchone()


async def test_create_and_update_set_the_ttl_from_now(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    # What the SDK sends for threads.create(ttl=90).
    created = await client.post("/threads", json={"ttl": {"ttl": 90, "strategy": "delete"}})
    assert created.status_code == 200, created.text
    thread_id = created.json()["thread_id"]
    assert await _ttl(pool, thread_id) == {
        "ttl_strategy": "delete",
        "ttl_minutes": 90.0,
        "seconds": 90 * 60,
    }
    patched = await client.patch(
        f"/threads/{thread_id}", json={"ttl": {"ttl": 0.5, "strategy": "keep_latest"}}
    )
    assert patched.status_code == 200, patched.text
    assert await _ttl(pool, thread_id) == {
        "ttl_strategy": "keep_latest",
        "ttl_minutes": 0.5,
        "seconds": 30,
    }
    # A patch without ttl leaves it as it is.
    await client.patch(f"/threads/{thread_id}", json={"metadata": {"a": 1}})
    assert (await _ttl(pool, thread_id) or {})["ttl_minutes"] == 0.5


async def test_include_ttl_reports_the_ttl_set_and_when_it_runs_out(
    client: httpx.AsyncClient, pool: Pool
) -> None:
    # What the SDK sends for threads.get(id, include=["ttl"]).
    with_ttl = (await client.post("/threads", json={"ttl": {"ttl": 90}})).json()["thread_id"]
    without = (await client.post("/threads", json={})).json()["thread_id"]

    got = await client.get(f"/threads/{with_ttl}", params={"include": "ttl"})

    assert got.status_code == 200, got.text
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT ttl_expires_at FROM threads WHERE thread_id = %s", (with_ttl,)
        )
        expires_at = (await cur.fetchone() or {})["ttl_expires_at"]
    assert got.json()["ttl"] == {
        "strategy": "delete",
        "ttl_minutes": 90.0,
        "expires_at": expires_at.isoformat(),
    }
    assert (await client.get(f"/threads/{without}?include=ttl")).json()["ttl"] is None
    # Only when asked for, as the Agent Server answers.
    assert "ttl" not in (await client.get(f"/threads/{with_ttl}")).json()
    # Another owner's thread stays a 404 whatever is asked for.
    theirs = await client.get(f"/threads/{with_ttl}?include=ttl", headers=BOB)
    assert theirs.status_code == 404


@pytest.mark.parametrize("include", ["ttl,owner", "values"])
async def test_include_of_an_unknown_field_is_refused(
    client: httpx.AsyncClient, include: str
) -> None:
    thread_id = (await client.post("/threads", json={"ttl": {"ttl": 5}})).json()["thread_id"]
    refused = await client.get(f"/threads/{thread_id}", params={"include": include})
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "include" in refused.json()["detail"]


@pytest.mark.parametrize(
    "ttl",
    [
        60,
        {"ttl": 0},
        {"ttl": -5},
        {"ttl": 1e12},
        {"strategy": "archive", "ttl": 5},
        {"strategy": "delete"},
        {"ttl": 5, "later": True},
    ],
)
async def test_a_bad_ttl_is_refused_and_creates_nothing(
    client: httpx.AsyncClient, pool: Pool, ttl: Any
) -> None:
    refused = await client.post("/threads", json={"ttl": ttl})
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    thread_id = (await client.post("/threads", json={})).json()["thread_id"]
    patched = await client.patch(f"/threads/{thread_id}", json={"ttl": ttl})
    assert patched.status_code == 422, patched.text
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM threads WHERE ttl_minutes IS NOT NULL")
        assert (await cur.fetchone() or {})["n"] == 0


async def test_prune_deletes_the_callers_idle_threads_only(client: httpx.AsyncClient) -> None:
    mine = [(await client.post("/threads", json={})).json()["thread_id"] for _ in range(2)]
    busy = (await client.post("/threads", json={})).json()["thread_id"]
    theirs = (await client.post("/threads", json={}, headers=BOB)).json()["thread_id"]
    for thread_id in mine:
        await client.post(f"/threads/{thread_id}/runs/wait", json=TURN)
    slow = (await client.post(f"/threads/{busy}/runs", json=SLOW)).json()

    pruned = await client.post(
        "/threads/prune", json={"thread_ids": [*mine, busy, theirs, str(uuid.uuid4()), mine[0]]}
    )

    assert pruned.status_code == 200, pruned.text
    assert pruned.json() == {"pruned_count": 2}
    for thread_id in mine:
        assert (await client.get(f"/threads/{thread_id}")).status_code == 404
    assert (await client.get(f"/threads/{theirs}", headers=BOB)).status_code == 200
    joined = await client.get(f"/threads/{busy}/runs/{slow['run_id']}/join")
    assert "looked up slowly for 2s" in joined.json()["messages"][-1]["content"]
    assert (await client.get(f"/threads/{busy}/runs/{slow['run_id']}")).json()["status"] == (
        "success"
    )


async def test_prune_keep_latest_keeps_the_latest_state(client: httpx.AsyncClient) -> None:
    thread_id = (await client.post("/threads", json={})).json()["thread_id"]
    for _ in range(2):
        await client.post(f"/threads/{thread_id}/runs/wait", json=TURN)
    before = (await client.get(f"/threads/{thread_id}/state")).json()
    history = await client.post(f"/threads/{thread_id}/history", json={"limit": 100})
    assert len(history.json()) > 1

    pruned = await client.post(
        "/threads/prune", json={"thread_ids": [thread_id], "strategy": "keep_latest"}
    )

    assert pruned.json() == {"pruned_count": 1}
    after = (await client.get(f"/threads/{thread_id}/state")).json()
    assert after["values"] == before["values"]
    assert after["checkpoint"] == before["checkpoint"]
    history = await client.post(f"/threads/{thread_id}/history", json={"limit": 100})
    assert [h["checkpoint"] for h in history.json()] == [before["checkpoint"]]
    # The thread goes on from its latest state.
    turn = await client.post(f"/threads/{thread_id}/runs/wait", json=TURN)
    assert "Turn 3." in turn.json()["messages"][-1]["content"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"thread_ids": ["not-a-uuid"]},
        {"thread_ids": [], "strategy": "archive"},
        {"thread_ids": [str(uuid.uuid4())] * 1001},
    ],
)
async def test_bad_prune_requests_are_refused(client: httpx.AsyncClient, body: Any) -> None:
    refused = await client.post("/threads/prune", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"


async def test_prune_needs_a_caller(client: httpx.AsyncClient) -> None:
    thread_id = (await client.post("/threads", json={})).json()["thread_id"]
    refused = await client.post(
        "/threads/prune", json={"thread_ids": [thread_id]}, headers={"X-Forwarded-User": ""}
    )
    assert refused.status_code == 401
    assert (await client.get(f"/threads/{thread_id}")).status_code == 200
