"""The ``runs/wait`` body: keepalive newlines only while the run is still going."""

from __future__ import annotations

import asyncio
from uuid import UUID

import httpx
import pytest

from threadkeeper.service import events
from threadkeeper.service.middleware import CUT
from threadkeeper.service.problems import Problem
from threadkeeper.service.routes import runs as runs_routes


async def _body(
    result: asyncio.Task[object], closing: asyncio.Event, scope: dict[str, object] | None = None
) -> list[bytes]:
    stream = runs_routes._keepalive_then(result, closing, {} if scope is None else scope)
    return [chunk async for chunk in stream]


async def test_body_is_sent_as_soon_as_the_run_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the generator waited for *both* the result and the drain event, so every
    ``runs/wait`` answer came a whole keepalive interval (5 s) after its run had finished."""
    monkeypatch.setattr(runs_routes, "KEEPALIVE_SECONDS", 3600.0)
    gate = asyncio.Event()

    async def run() -> dict[str, str]:
        await gate.wait()
        return {"answer": "done"}

    result = asyncio.create_task(run())
    body = asyncio.create_task(_body(result, asyncio.Event()))
    gate.set()
    # Far below the keepalive interval: the body must not wait for it.
    async with asyncio.timeout(30):
        chunks = await body
    assert chunks == [b'{"answer":"done"}']


async def test_keepalives_while_waiting_then_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs_routes, "KEEPALIVE_SECONDS", 0.01)
    gate = asyncio.Event()

    async def run() -> dict[str, int]:
        await gate.wait()
        return {"n": 1}

    result = asyncio.create_task(run())
    stream = runs_routes._keepalive_then(result, asyncio.Event(), {})
    assert await anext(stream) == b"\n"
    gate.set()
    rest = [chunk async for chunk in stream]
    assert rest[-1] == b'{"n":1}'
    assert set(rest[:-1]) <= {b"\n"}


async def test_a_replica_that_stops_serving_cuts_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No body at all rather than a complete-looking one: the response is marked cut (its
    connection then breaks, see CutMiddleware), and the wait it followed is let go."""
    monkeypatch.setattr(runs_routes, "KEEPALIVE_SECONDS", 3600.0)
    never = asyncio.create_task(asyncio.Event().wait())
    closing = asyncio.Event()
    scope: dict[str, object] = {}
    body = asyncio.create_task(_body(never, closing, scope))
    closing.set()
    async with asyncio.timeout(30):
        assert await body == []
    assert scope.get(CUT) is True
    with pytest.raises(asyncio.CancelledError):
        await never


HI = {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": "hi"}]}}


async def _recorded(client: httpx.AsyncClient, run_id: str) -> list[events.Event]:
    pool = client._transport.app.state.services.pool  # type: ignore[attr-defined]
    async with pool.connection() as conn:
        return await events.read_after(conn, UUID(run_id), 0)


async def _wait_turn(client: httpx.AsyncClient, tid: str, **extra: object) -> tuple[str, object]:
    r = await client.post(f"/threads/{tid}/runs/wait", json={**HI, **extra})
    assert r.status_code == 200, r.text
    run_id = r.headers["content-location"].rsplit("/", 1)[-1]
    return run_id, r.json()


async def test_a_waited_run_records_a_short_stream(client: httpx.AsyncClient) -> None:
    """Nobody follows a ``runs/wait`` run step by step: its stream keeps how it started and
    ended, not the (growing) state; the end state is the response, and ``/join`` reads it from
    the checkpoint."""
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    run_id, body = await _wait_turn(client, tid)
    assert "Turn 1." in body["messages"][-1]["content"]
    recorded = await _recorded(client, run_id)
    assert [e.event for e in recorded] == ["metadata", "end"]
    joined = await client.get(f"/threads/{tid}/runs/{run_id}/join")
    assert joined.json() == body


async def test_a_waited_run_that_asks_for_values_records_every_step(
    client: httpx.AsyncClient,
) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    run_id, body = await _wait_turn(client, tid, stream_mode=["values"])
    values = [e.data for e in await _recorded(client, run_id) if e.event == "values"]
    # One state per step: the earlier ones do not have the reply yet.
    assert len(values) >= 2
    assert values[-1] == body
    assert all("Turn 1." not in str(v) for v in values[:-1])


async def test_a_quick_run_answers_with_a_plain_body(client: httpx.AsyncClient) -> None:
    """No stream for a run that ends at once: the answer has a length, as any JSON reply."""
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    r = await client.post(f"/threads/{tid}/runs/wait", json=HI)
    assert r.status_code == 200, r.text
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["content-type"] == "application/json"
    assert r.content.startswith(b"{") and "Turn 1." in r.json()["messages"][-1]["content"]
    assert r.headers["location"].endswith("/join")


async def test_a_slow_run_streams_keepalives_then_its_body(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs_routes, "QUICK_ANSWER_SECONDS", 0.01)
    monkeypatch.setattr(runs_routes, "KEEPALIVE_SECONDS", 0.05)
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    ask = {"role": "user", "content": "please look up slowly 0.5"}
    r = await client.post(
        f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": {"messages": [ask]}}
    )
    assert r.status_code == 200, r.text
    assert "content-length" not in r.headers
    assert r.content.startswith(b"\n")
    assert "looked up slowly" in str(r.json()["messages"])


async def test_a_wait_that_fails_at_once_is_a_problem_response(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the body starts, a failure to produce it is an error response, not a cut body."""

    async def failing(*args: object) -> object:
        raise Problem(503, "the database is away", kind="unavailable")

    monkeypatch.setattr(runs_routes, "result_of", failing)
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    r = await client.post(f"/threads/{tid}/runs/wait", json=HI)
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] == "the database is away"
