"""Schema migrations against a real Postgres."""

from __future__ import annotations

import asyncio

from langgraph.store.postgres.base import PostgresIndexConfig

from threadkeeper.service.db import connect
from threadkeeper.service.migrations import (
    LATEST_VERSION,
    STORE_LATEST_VERSION,
    migrate,
    schema_is_current,
)


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


async def test_the_store_is_migrated_and_checked(empty_database_url: str) -> None:
    """The store's tables, vector table included, come with the rest, under the same lock
    (six at once, as replicas starting together); readiness wants the store's latest version."""
    index: PostgresIndexConfig = {"dims": 3, "embed": "unused:model"}
    conns = [await connect(empty_database_url) for _ in range(6)]
    try:
        await asyncio.gather(*(migrate(c, store_index=index) for c in conns))
        cur = await conns[0].execute(TABLES_SQL)
        assert await cur.fetchone() == {"s": True, "v": True}
        assert await schema_is_current(conns[0])
        await conns[0].execute("DELETE FROM store_migrations WHERE v = %s", (STORE_LATEST_VERSION,))
        assert not await schema_is_current(conns[0])
    finally:
        for c in conns:
            await c.close()


TABLES_SQL = """
SELECT to_regclass('store') IS NOT NULL AS s, to_regclass('store_vectors') IS NOT NULL AS v
"""
