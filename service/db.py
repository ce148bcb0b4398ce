"""The psycopg connection pool every part of the service shares."""

from __future__ import annotations

import asyncio
import enum
import re
import time
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from threadkeeper.service.serialize import db_dumps
from threadkeeper.service.settings import Settings

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]

# autocommit + dict_row are what the LangGraph saver needs; prepare_threshold=None keeps
# server-side prepared statements off, for one-off connections and PgBouncer in transaction
# mode (see Settings.prepared_statements).
CONNECTION_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "row_factory": dict_row,
    "prepare_threshold": None,
}


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """The pool's connections: prepared on first use (0), as LangGraph's docs configure it."""
    return {**CONNECTION_KWARGS, "prepare_threshold": 0 if settings.prepared_statements else None}


# A connection back in the pool for less than this was working moments ago; checking it on every
# borrow would add a round trip to each of the dozen borrows a turn makes.
CHECK_IDLE_SECONDS = 1.0


async def _configure(conn: AsyncConnection[DictRow]) -> None:
    # Checkpoints and run rows are Jsonb parameters on every write; orjson encodes them
    # several times faster than json.dumps.
    set_json_dumps(db_dumps, conn)


async def _check_if_idle(conn: AsyncConnection[DictRow]) -> None:
    """Check a connection that sat idle (the server may have gone away meanwhile)."""
    returned = getattr(conn, "info_returned_at", None)
    if returned is None or time.monotonic() - returned >= CHECK_IDLE_SECONDS:
        await AsyncConnectionPool.check_connection(conn)


class ServicePool(AsyncConnectionPool[AsyncConnection[DictRow]]):
    """The pool, stamping each connection as it comes back, for ``_check_if_idle``, and
    giving it back even if the returning task is cancelled meanwhile.

    The stamp is taken here, not by a ``reset`` callback: with one configured, psycopg_pool
    hands every returned connection to a worker task's queue, behind other returns.
    """

    async def putconn(self, conn: AsyncConnection[DictRow]) -> None:
        conn.info_returned_at = time.monotonic()  # type: ignore[attr-defined]
        # Shielded: the return waits for the pool's lock while other returns hand connections
        # over, and a task cancelled there (a stopped attempt, a lease keeper at the end of a
        # run, a client gone) would drop the connection, counted in use by the pool for good.
        await asyncio.shield(super().putconn(conn))


def make_pool(url: str, settings: Settings) -> Pool:
    """Build (not open) the pool; the caller opens it in the app lifespan."""
    return ServicePool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout,
        max_idle=settings.pool_max_idle,
        max_lifetime=settings.pool_max_lifetime,
        kwargs=connection_kwargs(settings),
        connection_class=AsyncConnection[DictRow],
        configure=_configure,
        check=_check_if_idle,
        open=False,
        name="threadkeeper",
    )


_PLACEHOLDER = re.compile(r"%(.)")


def numbered(sql: str) -> bytes:
    """``sql``'s ``%s`` placeholders as PostgreSQL's ``$1, $2 ...``, for a raw cursor.

    For generated statements with many rows: psycopg parses a query's placeholders on every
    call unless it is under 4 KB and 50 parameters, and a raw cursor sends the text as it is.
    """
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(1) == "%":
            return "%"
        if match.group(1) != "s":
            raise ValueError(f"only %s placeholders can be numbered, not {match.group(0)!r}")
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql).encode()


async def connect(url: str) -> AsyncConnection[DictRow]:
    """A single connection for one-off work such as migrations."""
    conn = await AsyncConnection.connect(url, **CONNECTION_KWARGS)
    await _configure(conn)
    return conn


class Failure(enum.Enum):
    """What a database error says about the database (see ``classify``)."""

    # The database went away or turned us away: a connection lost or refused (SQLSTATE class
    # 08, or no SQLSTATE at all: the client saw the socket close), a shutdown or restart
    # (class 57: admin shutdown, crash shutdown, cannot connect now), no connection in time.
    UNREACHABLE = "unreachable"
    # Reachable, but the statement failed for a passing reason of the server's (a deadlock,
    # a serialization failure, a full disk, a lock timeout): any other ``OperationalError``.
    TRANSIENT = "transient"


UNREACHABLE_SQLSTATE_CLASSES = frozenset({"08", "57"})


def classify(exc: BaseException) -> Failure | None:
    """Whether ``exc`` (or what it was raised from) is the database failing, and how; None for
    anything else, such as a statement's own error (bad data, a constraint) or a graph's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PoolTimeout):
            return Failure.UNREACHABLE
        if isinstance(seen, psycopg.OperationalError):
            state = seen.sqlstate
            if state is None or state[:2] in UNREACHABLE_SQLSTATE_CLASSES:
                return Failure.UNREACHABLE
            return Failure.TRANSIENT
        seen = seen.__cause__
    return None
