"""The service's connection pool: borrowed connections are checked only after sitting idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from threadkeeper.service import db
from threadkeeper.service.db import Pool, make_pool
from threadkeeper.service.settings import Settings


@pytest.fixture
async def one_connection(database_url: str) -> AsyncIterator[Pool]:
    settings = Settings(database_url=database_url, pool_min_size=1, pool_max_size=1)
    pool = make_pool(database_url, settings)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The backend pid of every connection the pool checked (the real check still runs)."""
    seen: list[int] = []
    real = AsyncConnectionPool.check_connection

    async def counting(conn: Any) -> None:
        seen.append(conn.info.backend_pid)
        await real(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counting))
    return seen


async def _backend_pid(pool: Pool) -> int:
    async with pool.connection() as conn:
        return conn.info.backend_pid


async def test_a_connection_back_moments_ago_is_lent_without_a_check(
    one_connection: Pool, checks: list[int]
) -> None:
    first = await _backend_pid(one_connection)
    checks.clear()  # the first borrow of a new connection is checked: it was never returned
    assert await _backend_pid(one_connection) == first
    assert await _backend_pid(one_connection) == first
    assert checks == []


async def test_a_connection_whose_server_went_away_while_idle_is_replaced(
    one_connection: Pool, checks: list[int], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await _backend_pid(one_connection)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    # Every connection counts as idle now, as one back from a long pause would.
    monkeypatch.setattr(db, "CHECK_IDLE_SECONDS", 0.0)
    checks.clear()
    second = await _backend_pid(one_connection)
    assert second != first
    assert checks[0] == first  # the dead one was checked, found broken, and not lent


async def test_jsonb_parameters_go_through_the_service_encoder(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pool connections encode ``Jsonb`` with ``serialize.db_dumps`` (orjson, with a fallback
    for what it refuses), and the value comes back unchanged."""
    encoded: list[object] = []
    real = db.db_dumps

    def recording(value: object) -> bytes:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(db, "db_dumps", recording)
    value = {"text": "héllo ✓", "big": 2**70, "nested": [1, 2.5, None, {"k": True}]}
    pool = make_pool(
        database_url, Settings(database_url=database_url, pool_min_size=1, pool_max_size=1)
    )
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT %s::jsonb AS v", (Jsonb(value),))
            row = await cur.fetchone()
    finally:
        await pool.close()
    assert row is not None and row["v"] == value
    assert encoded == [value]


def test_numbered_turns_placeholders_into_positions() -> None:
    assert db.numbered("SELECT %s, '100%%', %s") == b"SELECT $1, '100%', $2"
    with pytest.raises(ValueError, match="only %s placeholders"):
        db.numbered("SELECT %(name)s")


async def test_a_numbered_statement_runs_on_a_raw_cursor(pool: Pool) -> None:
    query = db.numbered("SELECT %s::int AS a, %s::text AS b, '5%%' AS c")
    async with pool.connection() as conn:
        cur = psycopg.AsyncRawCursor(conn, row_factory=dict_row)
        await cur.execute(query, [7, "x"])
        assert await cur.fetchone() == {"a": 7, "b": "x", "c": "5%"}


class WatchedLock(asyncio.Lock):
    """A lock that tells when someone has to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.contended = asyncio.Event()

    async def acquire(self) -> bool:
        if self.locked():
            self.contended.set()
        return await super().acquire()


async def test_a_borrower_cancelled_while_giving_its_connection_back_still_gives_it_back(
    one_connection: Pool,
) -> None:
    """A task cancelled while its ``pool.connection()`` block returns the connection (here
    waiting for the pool's lock, as it does while other returns hand connections over) must
    not take the connection with it: the pool would count it in use for good."""
    pool = one_connection
    used, locked = asyncio.Event(), asyncio.Event()

    async def borrow() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            used.set()
            await locked.wait()

    # The pool's own lock, watched, and held here as a concurrent return holds it.
    lock = pool._lock = WatchedLock()
    task = asyncio.create_task(borrow())
    await used.wait()
    async with lock:
        locked.set()
        await lock.contended.wait()  # the borrower is now waiting inside putconn
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The pool's only connection is lent again, not lost with the cancelled task.
    async with pool.connection(timeout=5) as conn:
        await conn.execute("SELECT 1")
    stats = pool.get_stats()
    assert stats["pool_size"] - stats["pool_available"] == 0
