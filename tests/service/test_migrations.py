"""Schema migrations against a real Postgres."""

from __future__ import annotations

import asyncio

from threadkeeper.service.db import connect
from threadkeeper.service.migrations import LATEST_VERSION, migrate, schema_is_current


async def test_migrate_is_idempotent(empty_database_url: str) -> None:
    conn = await connect(empty_database_url)
    try:
        assert not await _current(conn)
        assert await migrate(conn) == LATEST_VERSION
        assert await migrate(conn) == 0
        assert await schema_is_current(conn)
    finally:
        await conn.close()


async def _current(conn: object) -> bool:
    try:
        return await schema_is_current(conn)  # type: ignore[arg-type]
    except Exception:
        return False


async def test_six_concurrent_migrations_all_succeed(empty_database_url: str) -> None:
    """Concurrent saver.setup() alone fails with unique violations; the advisory lock fixes it."""
    conns = [await connect(empty_database_url) for _ in range(6)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(applied) == [0, 0, 0, 0, 0, LATEST_VERSION]
        assert await schema_is_current(conns[0])
    finally:
        for c in conns:
            await c.close()
