"""The ``runs/wait`` body: keepalive newlines only while the run is still going."""

from __future__ import annotations

import asyncio

import pytest

from service.routes import runs as runs_routes


async def _body(result: asyncio.Task[object], stopping: asyncio.Event) -> list[bytes]:
    return [chunk async for chunk in runs_routes._keepalive_then(result, stopping)]


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
    stream = runs_routes._keepalive_then(result, asyncio.Event())
    assert await anext(stream) == b"\n"
    gate.set()
    rest = [chunk async for chunk in stream]
    assert rest[-1] == b'{"n":1}'
    assert set(rest[:-1]) <= {b"\n"}


async def test_a_draining_replica_cuts_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs_routes, "KEEPALIVE_SECONDS", 3600.0)
    never = asyncio.create_task(asyncio.Event().wait())
    stopping = asyncio.Event()
    body = asyncio.create_task(_body(never, stopping))
    stopping.set()
    async with asyncio.timeout(30):
        assert await body == []
    never.cancel()
