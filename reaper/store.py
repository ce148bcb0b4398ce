"""Long-term memory (LangGraph's ``store`` table): items past their TTL.

The service never sweeps (one sweeper per replica would repeat the work and contend for the
rows); the reaper does, once per cluster, under its advisory lock. Expired items are already
invisible to readers (the service omits them), so sweeping only reclaims space. Vectors of a
deleted item go with it (``store_vectors`` references ``store`` ON DELETE CASCADE).
"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import DictRow

# A database whose service never served a store has no table: nothing to sweep.
HAS_STORE_SQL = "SELECT to_regclass('store') IS NOT NULL AS present"

# Oldest expiry first, over the partial index on expires_at the store's migrations create.
SWEEP_SQL = """
WITH due AS (
    SELECT prefix, key FROM store
    WHERE expires_at IS NOT NULL AND expires_at < now()
    ORDER BY expires_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM store s USING due
WHERE s.prefix = due.prefix AND s.key = due.key
"""

COUNT_SQL = """
SELECT count(*) AS n FROM (
    SELECT 1 FROM store
    WHERE expires_at IS NOT NULL AND expires_at < now()
    LIMIT %(batch)s
) AS due
"""


async def sweep_expired(conn: AsyncConnection[DictRow], *, batch: int, dry_run: bool) -> int:
    """Delete up to ``batch`` expired items (count them, in a dry run); how many."""
    cur = await conn.execute(HAS_STORE_SQL)
    row = await cur.fetchone()
    if row is None or not row["present"]:
        return 0
    if dry_run:
        cur = await conn.execute(COUNT_SQL, {"batch": batch})
        row = await cur.fetchone()
        return int(row["n"]) if row else 0
    cur = await conn.execute(SWEEP_SQL, {"batch": batch})
    return cur.rowcount
