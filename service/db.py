"""The psycopg connection pool every part of the service shares."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from service.settings import Settings

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]

# autocommit + dict_row are what the LangGraph saver needs; prepare_threshold=None keeps
# server-side prepared statements off so PgBouncer in transaction mode works.
CONNECTION_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "row_factory": dict_row,
    "prepare_threshold": None,
}


def make_pool(url: str, settings: Settings) -> Pool:
    """Build (not open) the pool; the caller opens it in the app lifespan."""
    return AsyncConnectionPool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout,
        max_idle=settings.pool_max_idle,
        max_lifetime=settings.pool_max_lifetime,
        kwargs=CONNECTION_KWARGS,
        connection_class=AsyncConnection[DictRow],
        check=AsyncConnectionPool.check_connection,
        open=False,
        name="threadkeeper",
    )


async def connect(url: str) -> AsyncConnection[DictRow]:
    """A single connection for one-off work such as migrations."""
    return await AsyncConnection.connect(url, **CONNECTION_KWARGS)
