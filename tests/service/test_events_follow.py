"""A stream never closes before the run's last events, however the run's ending interleaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.support.runs import run_with_events
from threadkeeper.service import events
from threadkeeper.service.notify import Hub


class _HookedConnection:
    """A real connection that runs ``before_second`` just before its second statement."""

    def __init__(self, conn: Any, before_second: Callable[[], Awaitable[None]]) -> None:
        self.conn = conn
        self.before_second = before_second
        self.statements = 0

    async def execute(self, sql: Any, params: Any = None) -> Any:
        self.statements += 1
        if self.statements == 2:
            await self.before_second()
        return await self.conn.execute(sql, params)


class _HookedPool:
    """Stands in for the psycopg pool so a test can land a commit between follow()'s reads."""

    def __init__(self, url: str, before_second: Callable[[], Awaitable[None]]) -> None:
        self.url = url
        self.before_second = before_second
        self.borrowed = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        self.borrowed += 1
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, row_factory=dict_row
        )
        try:
            hook = self.before_second if self.borrowed == 1 else _nothing
            yield _HookedConnection(conn, hook)
        finally:
            await conn.close()


async def _nothing() -> None:
    return None


async def test_run_ending_between_the_two_reads_loses_no_event(database_url: str) -> None:
    """Regression: follow() read events, then the status; a run whose last batch and final
    status committed between the two looked finished, and the stream closed without ``end``.

    The database and connections are real; only the pool is wrapped, to land that commit at the
    exact point between the two reads (whichever read comes second)."""
    run_id = await run_with_events(database_url, "running", "(%s, 1, 'metadata', '{}')")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as w:

        async def the_run_ends() -> None:
            # As the executor ends a run: its last events first, then its status.
            await w.execute(
                "INSERT INTO run_events (run_id, seq, event, data)"
                " VALUES (%s, 2, 'values', '{}'), (%s, 3, 'end', 'null')",
                (run_id, run_id),
            )
            await w.execute("UPDATE runs SET status = 'success' WHERE run_id = %s", (run_id,))

        pool: Any = _HookedPool(database_url, the_run_ends)
        stream = events.follow(pool, Hub(database_url), run_id, 1, 5.0, asyncio.Event())
        async with asyncio.timeout(30):
            got = [e.event async for e in stream if e is not None]
    assert got == ["values", "end"]


class _OutagePool:
    """Stands in for the psycopg pool: its first borrow fails as in a database outage (the pool
    raises ``PoolTimeout``, an ``OperationalError``), later ones get real connections."""

    def __init__(self, url: str, *, outage: bool = True) -> None:
        self.url = url
        self.outage = outage
        self.borrowed = 0
        self.released = asyncio.Event()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        self.borrowed += 1
        if self.outage and self.borrowed == 1:
            raise psycopg.OperationalError("couldn't get a connection after 1.00 sec")
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, row_factory=dict_row
        )
        try:
            yield conn
        finally:
            await conn.close()
            self.released.set()


async def test_a_follower_waits_out_a_database_outage(database_url: str) -> None:
    """Regression: an outage ended the stream with an error while the run went on; the
    follower now keeps going (heartbeats) and still delivers the run's events to ``end``."""
    run_id = await run_with_events(
        database_url, "success", "(%s, 1, 'metadata', '{}'), (%s, 2, 'end', 'null')"
    )
    pool: Any = _OutagePool(database_url)
    stream = events.follow(pool, Hub(database_url), run_id, 0, 0.01, asyncio.Event())
    async with asyncio.timeout(30):
        got = [e if e is None else e.event async for e in stream]
    assert got == [None, "metadata", "end"]
    assert pool.borrowed == 2


async def test_a_follower_stops_without_end_when_the_replica_closes(database_url: str) -> None:
    """The caller cuts the connection then (see routes.runs._sse): no ``end`` is made up."""
    run_id = await run_with_events(database_url, "running", "")
    closing = asyncio.Event()
    pool: Any = _OutagePool(database_url, outage=False)
    stream = events.follow(pool, Hub(database_url), run_id, 0, 3600.0, closing)
    following = asyncio.create_task(_collect(stream))
    async with asyncio.timeout(30):
        await pool.released.wait()  # it looked once, and now waits for news
        closing.set()
        assert await following == []


async def _collect(stream: AsyncIterator[events.Event | None]) -> list[events.Event | None]:
    return [e async for e in stream]
