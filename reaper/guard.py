"""The per-thread transaction every change of the reaper runs in, and the locks it takes.

The service claims a run by locking the thread row (``SELECT ... FOR UPDATE``) and writes each
checkpoint of a run after ``SELECT ... FROM runs ... FOR SHARE`` on the run row. The reaper takes
the same thread row lock, so no run can be claimed (or a pending run created: the ``runs``
foreign key locks the thread row too) while a thread is being pruned, and it skips threads whose
runs are still alive. A run whose lease ran out may still have a zombie writer in flight; its
``FOR SHARE`` conflicts with the ``FOR UPDATE`` / ``DELETE`` the reaper takes on that run row, so
the reaper waits for the write to finish (bounded by ``lock_timeout``) and the zombie's next
write fails its fence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

# SET LOCAL takes no bind parameters; the values are rendered as literals by psycopg.sql.
SET_LOCK_TIMEOUT_SQL = sql.SQL("SET LOCAL lock_timeout = {}")
SET_STATEMENT_TIMEOUT_SQL = sql.SQL("SET LOCAL statement_timeout = {}")

# The service's rule for a busy thread (service.lease.busy_sql; the reaper never imports the
# service, so a test holds the two the same): waiting to be claimed, or running on a live
# lease. Checked while holding the thread row lock, so no run can be claimed meanwhile.
LIVE_RUN_SQL = """
SELECT EXISTS (
    SELECT 1 FROM runs
    WHERE thread_id = %s
      AND (status = 'pending' OR (status = 'running' AND lease_expires_at > now()))
) AS live
"""

# Runs left 'running' with an expired lease: a zombie writer may hold FOR SHARE on them in
# the middle of a checkpoint write. Locking them waits for that write, and blocks later ones
# until the prune commits (after which their lease check fails).
FENCE_STALE_RUNS_SQL = """
SELECT run_id FROM runs WHERE thread_id = %s AND status = 'running' FOR UPDATE
"""

# Conflicts that mean "someone else is using this thread right now": try again next run.
CONFLICTS: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)


class Skip(StrEnum):
    LIVE_RUN = "live run"
    CONFLICT = "lock conflict"


class SkipThread(Exception):
    """Leave this thread alone in this run (rolls its transaction back)."""

    def __init__(self, reason: Skip) -> None:
        super().__init__(reason.value)
        self.reason = reason


def milliseconds(value: timedelta) -> str:
    """A timeout as Postgres reads it."""
    return f"{int(value.total_seconds() * 1000)}ms"


@asynccontextmanager
async def thread_transaction(
    conn: AsyncConnection[DictRow],
    *,
    lock_timeout: timedelta,
    statement_timeout: timedelta,
    rollback: bool,
) -> AsyncIterator[AsyncConnection[DictRow]]:
    """One short transaction for one thread; rolled back instead of committed when ``rollback``.

    Lock conflicts surface as ``SkipThread(Skip.CONFLICT)``; whatever happened inside is undone.
    """
    try:
        async with conn.transaction(force_rollback=rollback):
            lock = sql.Literal(milliseconds(lock_timeout))
            statement = sql.Literal(milliseconds(statement_timeout))
            await conn.execute(SET_LOCK_TIMEOUT_SQL.format(lock))
            await conn.execute(SET_STATEMENT_TIMEOUT_SQL.format(statement))
            yield conn
    except CONFLICTS:
        raise SkipThread(Skip.CONFLICT) from None


async def lock_thread(
    conn: AsyncConnection[DictRow], lock_sql: str, params: Mapping[str, Any]
) -> bool:
    """Take the thread row lock with a statement that re-checks why the thread was chosen.

    Under READ COMMITTED, ``FOR UPDATE`` re-evaluates its WHERE on the newest row version after
    waiting, so a thread that spoke or was unarchived meanwhile is simply not returned.
    """
    cur = await conn.execute(lock_sql, params)
    return await cur.fetchone() is not None


async def refuse_live_runs(conn: AsyncConnection[DictRow], thread_id: UUID) -> None:
    """Raise SkipThread when a run of the (locked) thread is pending or holds a live lease."""
    cur = await conn.execute(LIVE_RUN_SQL, (thread_id,))
    row = await cur.fetchone()
    if row is not None and row["live"]:
        raise SkipThread(Skip.LIVE_RUN)


async def fence_stale_runs(conn: AsyncConnection[DictRow], thread_id: UUID) -> None:
    await conn.execute(FENCE_STALE_RUNS_SQL, (thread_id,))
