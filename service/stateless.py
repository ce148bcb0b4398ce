"""Stateless runs: each gets a new thread of its own, owned by the caller; with
``on_completion: delete`` (the default) that thread is temporary and deleted once its runs ended.

The request that waited for the run (``/runs/wait``, ``/runs/stream``) deletes it as soon as it
has answered. A thread nobody waited for (``POST /runs``, ``/runs/batch``), or whose waiter went
away with its replica, is deleted by any replica's worker ``grace`` seconds after its last run
ended; a run resumed elsewhere after its replica died keeps its thread until it ends there.
Deletion takes the thread lock and re-checks that no run of it is unfinished (invariant 4), so
a thread is never deleted under a run, and deleting it removes its checkpoints with it.
"""

from __future__ import annotations

from uuid import UUID

import structlog
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.service import runs, threads
from threadkeeper.service.db import Pool
from threadkeeper.service.lease import unfinished_sql

log = structlog.get_logger(__name__)

SWEEP_BATCH = 100

LOCK_TEMPORARY_SQL = "SELECT thread_id FROM threads WHERE thread_id = %s AND temporary FOR UPDATE"

# Temporary threads whose runs all ended more than the grace ago (or that never got one).
ENDED_SQL = f"""
SELECT t.thread_id FROM threads t
WHERE t.temporary
  AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.thread_id = t.thread_id AND {unfinished_sql("r")})
  AND coalesce(
      (SELECT max(r.ended_at) FROM runs r WHERE r.thread_id = t.thread_id), t.created_at
  ) < now() - make_interval(secs => %s)
ORDER BY t.created_at
LIMIT %s
"""


async def _lock_temporary(conn: AsyncConnection[DictRow], thread_id: UUID) -> bool:
    """Lock the thread if it is a temporary one; whether it is."""
    cur = await conn.execute(LOCK_TEMPORARY_SQL, (thread_id,))
    return await cur.fetchone() is not None


async def _ended(conn: AsyncConnection[DictRow], grace_seconds: float) -> list[UUID]:
    """The temporary threads whose runs all ended ``grace_seconds`` ago, oldest first."""
    cur = await conn.execute(ENDED_SQL, (grace_seconds, SWEEP_BATCH))
    return [row["thread_id"] for row in await cur.fetchall()]


async def _discard_locked(conn: AsyncConnection[DictRow], thread_id: UUID) -> bool:
    if not await _lock_temporary(conn, thread_id):
        return False
    # Read after the lock: a run queued on the thread meanwhile keeps it.
    if await runs.unfinished(conn, thread_id):
        return False
    await threads.delete_locked(conn, thread_id)
    return True


async def discard(pool: Pool, thread_id: UUID) -> bool:
    """Delete the temporary thread if none of its runs is unfinished; whether it was."""
    async with pool.connection() as conn, conn.transaction():
        deleted = await _discard_locked(conn, thread_id)
    if deleted:
        log.info("temporary_thread_deleted", thread_id=str(thread_id))
    return deleted


async def sweep(pool: Pool, grace_seconds: float) -> int:
    """Delete the temporary threads whose runs ended ``grace_seconds`` ago; how many."""
    async with pool.connection() as conn:
        found = await _ended(conn, grace_seconds)
    deleted = 0
    for thread_id in found:
        deleted += await discard(pool, thread_id)
    return deleted
