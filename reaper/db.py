"""The reaper's database connection.

autocommit, because every change runs in an explicit per-thread transaction and the advisory
lock is session-level; dict rows, as the LangGraph saver (used to read DeltaChannel history)
expects; no server-side prepared statements, so PgBouncer in transaction mode works for the
per-thread transactions (the session advisory lock needs a session pooler or a direct connection).
"""

from __future__ import annotations

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row

# Shows up in pg_stat_activity, so operators (and tests) can tell the reaper's sessions apart.
APPLICATION_NAME = "threadkeeper-reaper"


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached, or the connection broke during the run."""


class InvalidDatabaseUrl(ValueError):
    """The URL is not a connection string (or one of its parameters has a bad value)."""


async def connect(url: str) -> AsyncConnection[DictRow]:
    try:
        return await AsyncConnection.connect(
            url,
            autocommit=True,
            row_factory=dict_row,
            prepare_threshold=None,
            application_name=APPLICATION_NAME,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(str(exc).strip()) from None
    except psycopg.ProgrammingError as exc:
        # libpq quotes the string it could not parse, password included: never repeat it.
        reason = str(exc).strip().replace(url, "<the URL>")
        raise InvalidDatabaseUrl(f"not a valid database URL: {reason}") from None
