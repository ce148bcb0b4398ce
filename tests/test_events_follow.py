"""A stream never closes before the run's last events, however the run's ending interleaves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from service import events
from service.notify import Hub


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
    run_id, thread_id = uuid.uuid4(), uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as w:
        await w.execute(
            "INSERT INTO threads (thread_id, owner) VALUES (%s, 'someone')", (thread_id,)
        )
        await w.execute(
            "INSERT INTO runs (run_id, thread_id, assistant_id, status)"
            " VALUES (%s, %s, 'agent', 'running')",
            (run_id, thread_id),
        )
        await w.execute(
            "INSERT INTO run_events (run_id, seq, event, data) VALUES (%s, 1, 'metadata', '{}')",
            (run_id,),
        )

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
