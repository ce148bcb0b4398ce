"""Long-term memory (LangGraph's ``store`` table): items past their TTL, idle items, and the
oldest items of a namespace beyond its allowance.

The service never sweeps (one sweeper per replica would repeat the work and contend for the
rows); the reaper does, once per cluster, under its advisory lock. Expired items are already
invisible to readers (the service omits them), so sweeping only reclaims space. Vectors of a
deleted item go with it (``store_vectors`` references ``store`` ON DELETE CASCADE).

Live writers: every delete locks its rows with ``FOR UPDATE SKIP LOCKED`` (a row a writer holds
is left for the next run) and re-checks the rule on the row as it is when locked, so an item
written or refreshed after the rule picked it is never deleted. A put that arrives while its
item is being deleted waits for the delete and then writes the item anew: nothing written is
lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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

# Last touched: its last write, or its last read when reads refresh its TTL (a refresh sets
# expires_at to now + ttl_minutes). Reads of an item without a TTL leave no trace, so for such
# items idle means unwritten.
IDLE_CONDITION = """
s.updated_at < %(cutoff)s
AND (s.ttl_minutes IS NULL OR s.expires_at IS NULL
     OR s.expires_at - make_interval(mins => s.ttl_minutes) < %(cutoff)s)
"""

# One page of the table in key order (the primary key's index), from after the last page.
IDLE_PAGE_CTE = """
WITH page AS (
    SELECT prefix, key FROM store
    WHERE (prefix, key) > (%(after_prefix)s, %(after_key)s)
    ORDER BY prefix, key
    LIMIT %(page)s
),
last AS (SELECT prefix, key FROM page ORDER BY prefix DESC, key DESC LIMIT 1),
"""

IDLE_DELETE_SQL = (
    IDLE_PAGE_CTE
    + """
due AS (
    SELECT s.prefix, s.key FROM store s JOIN page USING (prefix, key)
    WHERE """
    + IDLE_CONDITION
    + """
    FOR UPDATE OF s SKIP LOCKED
),
gone AS (
    DELETE FROM store s USING due
    WHERE s.prefix = due.prefix AND s.key = due.key
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS n,
       (SELECT prefix FROM last) AS last_prefix, (SELECT key FROM last) AS last_key
"""
)

IDLE_COUNT_SQL = (
    IDLE_PAGE_CTE
    + """
due AS (
    SELECT 1 FROM store s JOIN page USING (prefix, key)
    WHERE """
    + IDLE_CONDITION
    + """
)
SELECT (SELECT count(*) FROM due) AS n,
       (SELECT prefix FROM last) AS last_prefix, (SELECT key FROM last) AS last_key
"""
)

# Namespaces over their allowance, and by how much (one pass over the table).
OVER_ALLOWANCE_SQL = """
SELECT prefix, count(*) - %(keep)s AS excess FROM store
GROUP BY prefix HAVING count(*) > %(keep)s
ORDER BY prefix
"""

# The least recently written items of one namespace beyond the newest ``keep``. An item
# rewritten since it was ranked has a newer updated_at and is skipped (the re-check on lock).
EXCESS_DELETE_SQL = """
WITH ranked AS (
    SELECT key, updated_at FROM store
    WHERE prefix = %(prefix)s
    ORDER BY updated_at DESC, key DESC
    OFFSET %(keep)s
    LIMIT %(batch)s
),
due AS (
    SELECT s.prefix, s.key FROM store s JOIN ranked r ON s.key = r.key
    WHERE s.prefix = %(prefix)s AND s.updated_at = r.updated_at
    FOR UPDATE OF s SKIP LOCKED
)
DELETE FROM store s USING due
WHERE s.prefix = due.prefix AND s.key = due.key
"""


async def has_store(conn: AsyncConnection[DictRow]) -> bool:
    cur = await conn.execute(HAS_STORE_SQL)
    row = await cur.fetchone()
    return row is not None and bool(row["present"])


async def sweep_expired(conn: AsyncConnection[DictRow], *, batch: int, dry_run: bool) -> int:
    """Delete up to ``batch`` expired items (count them, in a dry run); how many."""
    if not await has_store(conn):
        return 0
    if dry_run:
        cur = await conn.execute(COUNT_SQL, {"batch": batch})
        row = await cur.fetchone()
        return int(row["n"]) if row else 0
    cur = await conn.execute(SWEEP_SQL, {"batch": batch})
    return cur.rowcount


@dataclass(frozen=True)
class IdlePage:
    """What one page of the idle sweep did, and where the next page starts (None: the end)."""

    count: int
    after: tuple[str, str] | None


# Where the first page starts: before every key (a namespace is never empty).
IDLE_START = ("", "")


async def idle_page(
    conn: AsyncConnection[DictRow],
    *,
    after: tuple[str, str],
    page: int,
    cutoff: datetime,
    dry_run: bool,
) -> IdlePage:
    """Delete (count, in a dry run) the idle items among the next ``page`` keys."""
    params = {"after_prefix": after[0], "after_key": after[1], "page": page, "cutoff": cutoff}
    cur = await conn.execute(IDLE_COUNT_SQL if dry_run else IDLE_DELETE_SQL, params)
    row = await cur.fetchone()
    assert row is not None
    last = row["last_prefix"], row["last_key"]
    return IdlePage(int(row["n"]), None if last[0] is None else last)


async def over_allowance(conn: AsyncConnection[DictRow], *, keep: int) -> dict[str, int]:
    """Namespaces (as stored prefixes) holding more than ``keep`` items, and how many more."""
    cur = await conn.execute(OVER_ALLOWANCE_SQL, {"keep": keep})
    return {row["prefix"]: int(row["excess"]) for row in await cur.fetchall()}


async def trim_namespace(
    conn: AsyncConnection[DictRow], prefix: str, *, keep: int, batch: int
) -> int:
    """Delete up to ``batch`` items of ``prefix`` beyond its newest ``keep``; how many."""
    cur = await conn.execute(EXCESS_DELETE_SQL, {"prefix": prefix, "keep": keep, "batch": batch})
    return cur.rowcount
