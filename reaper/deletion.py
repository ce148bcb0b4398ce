"""Deleting a whole thread: its row, its runs and every checkpoint row of every namespace.

Both functions run inside the caller's per-thread transaction, so a thread is either gone
completely or untouched, whatever happens to the process.
"""

from __future__ import annotations

from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.reaper.ids import V6_ID_PATTERN
from threadkeeper.reaper.summary import RowCounts

# runs first: DELETE waits for the FOR SHARE a zombie writer holds on its run row mid-write, so
# by the time the checkpoint tables are emptied below (each statement reading the newest
# committed rows) that write has landed and is deleted too, and no later write passes the fence.
DELETE_RUNS_SQL = "DELETE FROM runs WHERE thread_id = %s"
DELETE_WRITES_SQL = "DELETE FROM checkpoint_writes WHERE thread_id = %s"
DELETE_BLOBS_SQL = "DELETE FROM checkpoint_blobs WHERE thread_id = %s"
DELETE_CHECKPOINTS_SQL = "DELETE FROM checkpoints WHERE thread_id = %s"
DELETE_THREAD_SQL = "DELETE FROM threads WHERE thread_id = %s"

# Orphans have no row to lock. The transaction is REPEATABLE READ, so the eligibility check and
# the deletes read one snapshot: checkpoint rows committed after it are neither seen nor deleted,
# and a row changed after it aborts the transaction (serialization failure -> skipped).
ORPHAN_SNAPSHOT_SQL = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"

# Still orphaned and still old: no threads row (the id may not even be a uuid), and the newest
# checkpoint in any namespace is a time-ordered id older than the cutoff.
ORPHAN_STILL_ELIGIBLE_SQL = """
SELECT NOT EXISTS (SELECT 1 FROM threads WHERE thread_id = %(uuid)s::uuid)
   AND newest ~ %(v6)s AND newest < %(cutoff)s AS eligible
FROM (SELECT max(checkpoint_id) AS newest FROM checkpoints WHERE thread_id = %(tid)s) AS n
"""


async def _delete(conn: AsyncConnection[DictRow], statement: str, key: object) -> int:
    cur = await conn.execute(statement, (key,))
    return max(cur.rowcount, 0)


async def _delete_checkpoint_rows(conn: AsyncConnection[DictRow], thread_id: str) -> RowCounts:
    counts = RowCounts()
    counts.writes = await _delete(conn, DELETE_WRITES_SQL, thread_id)
    counts.blobs = await _delete(conn, DELETE_BLOBS_SQL, thread_id)
    counts.checkpoints = await _delete(conn, DELETE_CHECKPOINTS_SQL, thread_id)
    return counts


async def delete_thread(conn: AsyncConnection[DictRow], thread_id: UUID) -> RowCounts:
    """Delete a thread the caller has locked and found free of live runs."""
    runs = await _delete(conn, DELETE_RUNS_SQL, thread_id)
    # LangGraph keys checkpoints by the text the service passed as thread_id: str(uuid).
    counts = await _delete_checkpoint_rows(conn, str(thread_id))
    counts.runs = runs
    counts.threads = await _delete(conn, DELETE_THREAD_SQL, thread_id)
    return counts


async def delete_orphan(
    conn: AsyncConnection[DictRow], thread_id: str, as_uuid: UUID | None, cutoff_id: str
) -> RowCounts | None:
    """Delete the checkpoint rows of a thread id without a thread; None if no longer eligible.

    Must be the first thing in its transaction (it sets the isolation level).
    """
    await conn.execute(ORPHAN_SNAPSHOT_SQL)
    cur = await conn.execute(
        ORPHAN_STILL_ELIGIBLE_SQL,
        {"uuid": as_uuid, "tid": thread_id, "cutoff": cutoff_id, "v6": V6_ID_PATTERN},
    )
    row = await cur.fetchone()
    if row is None or not row["eligible"]:
        return None
    return await _delete_checkpoint_rows(conn, thread_id)
