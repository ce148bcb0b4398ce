"""How big the checkpoint tables and the long-term memory store are, from the catalog, and how
many threads are in each state.

Nothing here counts the rows of a big table: sizes are ``pg_total_relation_size`` (heap, TOAST
and indexes) and row counts are the planner's estimate (``reltuples``, or the statistics
collector's ``n_live_tup`` before the first ANALYZE). Thread states are counted over index
ranges with a cap, so the cost is bounded however large ``threads`` grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes", "threads", "runs")
# Long-term memory (the LangGraph store): items, and their embeddings when indexed.
STORE_TABLES = ("store", "store_vectors")

TABLE_SIZES_SQL = """
SELECT c.relname AS name,
       pg_total_relation_size(c.oid) AS bytes,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint
            ELSE coalesce(s.n_live_tup, 0) END AS rows_estimate
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'p')
  AND c.relname = ANY(%s)
  AND n.nspname = ANY(current_schemas(false))
"""

# Index ranges only (threads_archived_idx, threads_idle_idx); each count stops at the cap.
THREAD_STATES_SQL = """
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE archived_at IS NOT NULL LIMIT %(cap)s) AS a) AS archived,
    (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE archived_at IS NULL AND last_message_at < %(idle)s LIMIT %(cap)s) AS i)
  + (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE archived_at IS NULL AND last_message_at IS NULL AND created_at < %(idle)s
        LIMIT %(cap)s) AS s) AS idle_expired,
    (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE archived_at IS NULL AND (%(idle)s::timestamptz IS NULL
                                       OR last_message_at >= %(idle)s::timestamptz)
        LIMIT %(active_cap)s) AS l)
  + (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE archived_at IS NULL AND last_message_at IS NULL
          AND %(idle)s::timestamptz IS NOT NULL AND created_at >= %(idle)s::timestamptz
        LIMIT %(active_cap)s) AS n) AS active
"""
STATE_COUNT_CAP = 1_000_000
# Live threads are most of the table, so counting them costs as much as the table is big (about
# 50 ms at 250k threads). Past this many they are the table's estimate minus the counted rest:
# the refresh stays flat however many threads there are. Archived and idle-expired threads stay
# exact: they are what the reaper deletes, so there are few of them.
ACTIVE_EXACT_LIMIT = 1_000

NOW_SQL = "SELECT now() AS now"


@dataclass(frozen=True)
class TableStats:
    bytes: int
    rows_estimate: int


@dataclass(frozen=True)
class DatabaseStats:
    tables: dict[str, TableStats]
    # active / archived / idle_expired; idle_expired is 0 when no maxIdle is known.
    threads: dict[str, int]
    # Present only where the service created the store's tables.
    store: dict[str, TableStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tables": _tables_json(self.tables),
            "store": _tables_json(self.store),
            "threads": {
                "active": self.threads["active"],
                "archived": self.threads["archived"],
                "idleExpired": self.threads["idle_expired"],
            },
        }


def _tables_json(tables: dict[str, TableStats]) -> dict[str, Any]:
    return {name: {"bytes": t.bytes, "rowsEstimate": t.rows_estimate} for name, t in tables.items()}


async def table_stats(
    conn: AsyncConnection[DictRow], names: tuple[str, ...] = TABLES
) -> dict[str, TableStats]:
    cur = await conn.execute(TABLE_SIZES_SQL, (list(names),))
    found = {
        row["name"]: TableStats(int(row["bytes"]), max(int(row["rows_estimate"]), 0))
        for row in await cur.fetchall()
    }
    return {name: found[name] for name in names if name in found}


async def thread_states(
    conn: AsyncConnection[DictRow],
    max_idle: timedelta | None = None,
    threads_estimate: int | None = None,
) -> dict[str, int]:
    idle_before = None
    if max_idle is not None:
        cur = await conn.execute(NOW_SQL)
        row = await cur.fetchone()
        assert row is not None
        idle_before = row["now"] - max_idle
    # Each of the two active counts stops one past the limit, so "more than the limit" shows.
    params = {"idle": idle_before, "cap": STATE_COUNT_CAP, "active_cap": ACTIVE_EXACT_LIMIT + 1}
    cur = await conn.execute(THREAD_STATES_SQL, params)
    row = await cur.fetchone()
    assert row is not None
    counts = {k: int(row[k]) for k in ("active", "archived", "idle_expired")}
    if counts["active"] > ACTIVE_EXACT_LIMIT and threads_estimate is not None:
        rest = threads_estimate - counts["archived"] - counts["idle_expired"]
        counts["active"] = max(rest, counts["active"])
    return counts


async def collect(
    conn: AsyncConnection[DictRow], *, max_idle: timedelta | None = None
) -> DatabaseStats:
    tables = await table_stats(conn)
    threads = tables.get("threads")
    estimate = threads.rows_estimate if threads is not None else None
    states = await thread_states(conn, max_idle, estimate)
    return DatabaseStats(tables, states, await table_stats(conn, STORE_TABLES))
