"""Stateless runs (``POST /runs``, ``/runs/stream``, ``/runs/wait``, ``/runs/batch``): a new
thread per run, owned by the caller, deleted once the run ended unless ``on_completion: keep``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import httpx
import pytest

from tests.support.fixtures import app_client
from tests.support.sse import Event, events
from threadkeeper.service import stateless
from threadkeeper.service.app import create_app
from threadkeeper.service.db import Pool
from threadkeeper.service.schemas import MAX_BATCH
from threadkeeper.service.settings import Settings

HELLO = {"messages": [{"role": "user", "content": "hi"}]}
SLOW = {"messages": [{"role": "user", "content": "look up slowly 1"}]}
RUN = {"assistant_id": "agent", "input": HELLO}
# Far longer than any test: only the test's own sweeps (or the waiting request) delete.
NO_SWEEP = 3600.0

COUNT_ROWS_SQL = """
SELECT (SELECT count(*) FROM threads WHERE thread_id = %(t)s)
     + (SELECT count(*) FROM runs WHERE thread_id = %(t)s)
     + (SELECT count(*) FROM checkpoints WHERE thread_id = %(s)s)
     + (SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %(s)s)
     + (SELECT count(*) FROM checkpoint_writes WHERE thread_id = %(s)s) AS n
"""


@pytest.fixture
async def stateless_client(
    settings_for: Callable[..., Settings],
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings_for(temporary_thread_seconds=NO_SWEEP, poll_seconds=0.05), run_migrations=False
    )
    async with app_client(app) as c:
        yield c


def _thread_of(response: httpx.Response) -> UUID:
    """The run's thread, from ``Content-Location`` (``/threads/{tid}/runs/{rid}``), as the
    SDK's ``on_run_created`` reads it."""
    parts = response.headers["content-location"].split("/")
    assert parts[1] == "threads" and parts[3] == "runs", parts
    return UUID(parts[2])


async def _rows_of(pool: Pool, thread_id: UUID) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(COUNT_ROWS_SQL, {"t": thread_id, "s": str(thread_id)})
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def test_wait_answers_and_deletes_its_thread(
    stateless_client: httpx.AsyncClient, pool: Pool
) -> None:
    answer = await stateless_client.post("/runs/wait", json=RUN)
    assert answer.status_code == 200, answer.text
    assert "Turn 1." in answer.json()["messages"][-1]["content"]
    thread_id = _thread_of(answer)
    assert answer.headers["location"].endswith("/join")
    assert (await stateless_client.get(f"/threads/{thread_id}")).status_code == 404
    assert await _rows_of(pool, thread_id) == 0


async def test_keep_leaves_the_thread_with_its_state(
    stateless_client: httpx.AsyncClient, pool: Pool
) -> None:
    answer = await stateless_client.post("/runs/wait", json={**RUN, "on_completion": "keep"})
    assert answer.status_code == 200, answer.text
    thread_id = _thread_of(answer)
    state = await stateless_client.get(f"/threads/{thread_id}/state")
    assert state.json()["values"] == answer.json()
    # Not temporary: no sweep deletes it, however old.
    assert await stateless.sweep(pool, 0) == 0
    assert (await stateless_client.get(f"/threads/{thread_id}")).status_code == 200
    follow_up = await stateless_client.post(f"/threads/{thread_id}/runs/wait", json=RUN)
    assert "Turn 2." in follow_up.json()["messages"][-1]["content"]


async def test_stream_ends_then_deletes_its_thread(
    stateless_client: httpx.AsyncClient, pool: Pool
) -> None:
    response = await stateless_client.post("/runs/stream", json={**RUN, "stream_mode": "values"})
    assert response.status_code == 200, response.text
    thread_id = _thread_of(response)
    assert response.headers["location"] == f"/threads/{thread_id}/runs/" + (
        response.headers["content-location"].rsplit("/", 1)[1] + "/stream"
    )
    got: list[Event] = list(events(response))
    assert got[0].event == "metadata"
    assert got[-1].event == "end"
    assert "Turn 1." in [e for e in got if e.event == "values"][-1].data["messages"][-1]["content"]
    # The response ran its clean-up before the in-process transport handed it over.
    assert await _rows_of(pool, thread_id) == 0


async def test_background_run_keeps_its_thread_until_the_sweep(
    stateless_client: httpx.AsyncClient, pool: Pool
) -> None:
    """Nobody waits for ``POST /runs``: the thread outlives the run by the grace (so the run
    can be joined), never goes while the run is unfinished, and goes after it."""
    created = await stateless_client.post("/runs", json={**RUN, "input": SLOW})
    assert created.status_code == 200, created.text
    run = created.json()
    thread_id = UUID(run["thread_id"])
    assert _thread_of(created) == thread_id
    # Under way (or queued): not even a zero grace deletes it.
    assert await stateless.sweep(pool, 0) == 0
    joined = await stateless_client.get(f"/threads/{thread_id}/runs/{run['run_id']}/join")
    assert "looked up slowly for 1s" in joined.json()["messages"][-1]["content"]
    assert await stateless.sweep(pool, NO_SWEEP) == 0
    assert (await stateless_client.get(f"/threads/{thread_id}")).status_code == 200
    assert await stateless.sweep(pool, 0) == 1
    assert await _rows_of(pool, thread_id) == 0


async def test_a_replica_worker_sweeps_ended_temporary_threads(
    settings_for: Callable[..., Settings], pool: Pool
) -> None:
    app = create_app(
        settings_for(temporary_thread_seconds=0, poll_seconds=0.05), run_migrations=False
    )
    async with app_client(app) as client:
        created = await client.post("/runs", json=RUN)
        thread_id = UUID(created.json()["thread_id"])
        async with asyncio.timeout(30):
            while await _rows_of(pool, thread_id):  # noqa: ASYNC110 - the worker's sweep
                await asyncio.sleep(0.05)


async def test_batch_queues_each_run_on_its_own_thread(
    stateless_client: httpx.AsyncClient, pool: Pool
) -> None:
    created = await stateless_client.post(
        "/runs/batch", json=[RUN, {**RUN, "on_completion": "keep"}]
    )
    assert created.status_code == 200, created.text
    runs = created.json()
    assert len({r["thread_id"] for r in runs}) == 2
    for run in runs:
        joined = await stateless_client.get(
            f"/threads/{run['thread_id']}/runs/{run['run_id']}/join"
        )
        assert "Turn 1." in joined.json()["messages"][-1]["content"]
    assert await stateless.sweep(pool, 0) == 1
    assert await _rows_of(pool, UUID(runs[0]["thread_id"])) == 0
    assert await _rows_of(pool, UUID(runs[1]["thread_id"])) > 0


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        ("/runs/wait", {**RUN, "checkpoint_id": "1ef4a9b8-d7da-679a-a45a-872054341df2"}, "new"),
        ("/runs/stream", {**RUN, "on_completion": "later"}, "on_completion"),
        ("/runs", {**RUN, "webhook": "http://127.0.0.1:1/hook"}, "webhook"),
        ("/runs/wait", {**RUN, "stream_mode": "nonsense"}, "stream_mode"),
        ("/runs/batch", RUN, "valid list"),
        ("/runs/batch", [RUN, {"input": HELLO}], "assistant_id"),
        ("/runs/batch", [RUN] * (MAX_BATCH + 1), str(MAX_BATCH)),
    ],
)
async def test_bad_requests_are_refused_and_create_nothing(
    stateless_client: httpx.AsyncClient, pool: Pool, path: str, body: Any, detail: str
) -> None:
    refused = await stateless_client.post(path, json=body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert detail in refused.text
    await _assert_no_threads(pool)


@pytest.mark.parametrize("path", ["/runs", "/runs/wait", "/runs/stream"])
async def test_unknown_assistant_is_404_and_creates_nothing(
    stateless_client: httpx.AsyncClient, pool: Pool, path: str
) -> None:
    refused = await stateless_client.post(path, json={**RUN, "assistant_id": "no-such-graph"})
    assert refused.status_code == 404, refused.text
    await _assert_no_threads(pool)


async def test_batch_with_one_unknown_assistant_queues_none(
    stateless_client: httpx.AsyncClient, pool: Pool
) -> None:
    refused = await stateless_client.post(
        "/runs/batch", json=[RUN, {**RUN, "assistant_id": "no-such-graph"}]
    )
    assert refused.status_code == 404, refused.text
    await _assert_no_threads(pool)


async def _assert_no_threads(pool: Pool) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM threads")
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0


async def test_the_thread_is_the_callers_own(settings_for: Callable[..., Settings]) -> None:
    app = create_app(
        settings_for(auth="header", temporary_thread_seconds=NO_SWEEP), run_migrations=False
    )
    alice = {"X-Forwarded-User": "alice"}
    bob = {"X-Forwarded-User": "bob"}
    async with app_client(app) as client:
        kept = await client.post("/runs/wait", json={**RUN, "on_completion": "keep"}, headers=alice)
        thread_id = _thread_of(kept)
        assert (await client.get(f"/threads/{thread_id}", headers=alice)).status_code == 200
        assert (await client.get(f"/threads/{thread_id}", headers=bob)).status_code == 404
        found = await client.post("/threads/search", json={}, headers=bob)
        assert found.json() == []
        anonymous = await client.post("/runs/wait", json=RUN)
        assert anonymous.status_code == 401
