"""Which threads a run looks at, in which order, and the lock statements that re-check them.

Whole-thread deletion reads candidates oldest first from the partial indexes the service keeps
for the reaper (``threads_idle_idx``, ``threads_archived_idx``): a deleted thread no longer
matches, so the next run resumes where this one stopped without any saved state. Pages are read
with a keyset (not OFFSET), so threads skipped in this run (live run, lock conflict) are passed
over instead of being re-read, and a dry run walks the same sequence as a real one.

History depth and orphans have no such index; they are sweeps in id order, probing each thread
with primary-key lookups only (never a scan of a thread's rows), resumable from a cursor.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.reaper.ids import is_time_ordered

# -- idle threads: nobody spoke for maxIdle (never-spoken threads count from their creation).
# Split in two so each half is an index range: spoken threads by last_message_at, silent ones
# (last_message_at IS NULL, also in the index) by id.
IDLE_SPOKEN_PAGE_SQL = """
SELECT thread_id, last_message_at AS position FROM threads
WHERE archived_at IS NULL AND last_message_at < %(before)s
  AND (%(after_at)s::timestamptz IS NULL
       OR (last_message_at, thread_id) > (%(after_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY last_message_at, thread_id
LIMIT %(page)s
"""

IDLE_SILENT_PAGE_SQL = """
SELECT thread_id, NULL::timestamptz AS position FROM threads
WHERE archived_at IS NULL AND last_message_at IS NULL AND created_at < %(before)s
  AND (%(after_id)s::uuid IS NULL OR thread_id > %(after_id)s::uuid)
ORDER BY thread_id
LIMIT %(page)s
"""

LOCK_IDLE_SQL = """
SELECT thread_id FROM threads
WHERE thread_id = %(thread_id)s AND archived_at IS NULL
  AND coalesce(last_message_at, created_at) < %(before)s
FOR UPDATE
"""

# -- archived threads: archived, and neither archived nor spoken in, for archivedFor. A message
# on an archived thread (a run finishing there) restarts the count, so a thread still in use is
# never deleted for having been archived long ago. The index range stays on archived_at; the
# last_message_at test only filters it.
ARCHIVED_PAGE_SQL = """
SELECT thread_id, archived_at AS position FROM threads
WHERE archived_at IS NOT NULL AND archived_at < %(before)s
  AND (last_message_at IS NULL OR last_message_at < %(before)s)
  AND (%(after_at)s::timestamptz IS NULL
       OR (archived_at, thread_id) > (%(after_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY archived_at, thread_id
LIMIT %(page)s
"""

LOCK_ARCHIVED_SQL = """
SELECT thread_id FROM threads
WHERE thread_id = %(thread_id)s AND archived_at IS NOT NULL AND archived_at < %(before)s
  AND (last_message_at IS NULL OR last_message_at < %(before)s)
FOR UPDATE
"""


class TtlStrategy(StrEnum):
    """What a thread's own ttl does when it runs out (the service's ``ttl_strategy``)."""

    DELETE = "delete"
    KEEP_LATEST = "keep_latest"


# -- threads whose own ttl ran out (set through the service's API), by strategy: deleted
# whole, or pruned to their latest checkpoint and given their ttl again.
EXPIRED_PAGE_SQL = """
SELECT thread_id, ttl_expires_at AS position FROM threads
WHERE ttl_expires_at < %(before)s AND ttl_strategy = %(strategy)s
  AND (%(after_at)s::timestamptz IS NULL
       OR (ttl_expires_at, thread_id) > (%(after_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY ttl_expires_at, thread_id
LIMIT %(page)s
"""

LOCK_EXPIRED_SQL = """
SELECT thread_id FROM threads
WHERE thread_id = %(thread_id)s AND ttl_expires_at < %(before)s AND ttl_strategy = %(strategy)s
FOR UPDATE
"""

REARM_TTL_SQL = """
UPDATE threads SET ttl_expires_at = now() + ttl_minutes * interval '1 minute'
WHERE thread_id = %s
"""

# -- history depth: is any namespace of the thread deeper than the policy allows, or a
# subgraph call whose root checkpoint would not be kept? Namespaces are enumerated with a skip
# scan of the primary key (thread_id, checkpoint_ns, checkpoint_id); each test below is one or
# two index descents. Must agree with reaper.history.choose (a test checks both on one data set).
HISTORY_PAGE_SQL = """
WITH page AS (
    SELECT thread_id, thread_id::text AS tid FROM threads
    WHERE %(after)s::uuid IS NULL OR thread_id > %(after)s::uuid
    ORDER BY thread_id
    LIMIT %(page)s
)
SELECT p.thread_id, EXISTS (
    WITH RECURSIVE ns(name) AS (
        SELECT min(checkpoint_ns) FROM checkpoints WHERE thread_id = p.tid
      UNION ALL
        SELECT (SELECT min(c.checkpoint_ns) FROM checkpoints c
                WHERE c.thread_id = p.tid AND c.checkpoint_ns > ns.name)
        FROM ns WHERE ns.name IS NOT NULL
    )
    SELECT 1 FROM ns
    WHERE ns.name IS NOT NULL AND (
        (EXISTS (SELECT 1 FROM checkpoints d
                 WHERE d.thread_id = p.tid AND d.checkpoint_ns = ns.name
                 ORDER BY d.checkpoint_id DESC OFFSET %(keep)s LIMIT 1)
         AND (%(cutoff)s::text IS NULL
              OR (SELECT min(o.checkpoint_id) FROM checkpoints o
                  WHERE o.thread_id = p.tid AND o.checkpoint_ns = ns.name) < %(cutoff)s::text))
        OR (strpos(ns.name, ':') > 0 AND NOT EXISTS (
            SELECT 1
            FROM (SELECT h.metadata -> 'parents' ->> '' AS root FROM checkpoints h
                  WHERE h.thread_id = p.tid AND h.checkpoint_ns = ns.name
                  ORDER BY h.checkpoint_id DESC LIMIT 1) AS head
            WHERE head.root IS NULL
               OR (EXISTS (SELECT 1 FROM checkpoints r
                           WHERE r.thread_id = p.tid AND r.checkpoint_ns = ''
                             AND r.checkpoint_id = head.root)
                   AND (head.root >= coalesce(
                            (SELECT k.checkpoint_id FROM checkpoints k
                             WHERE k.thread_id = p.tid AND k.checkpoint_ns = ''
                             ORDER BY k.checkpoint_id DESC OFFSET %(keep)s - 1 LIMIT 1), '')
                        OR (%(cutoff)s::text IS NOT NULL AND head.root >= %(cutoff)s::text)))))
    )
) AS due
FROM page p
ORDER BY p.thread_id
"""

LOCK_ANY_SQL = "SELECT thread_id FROM threads WHERE thread_id = %(thread_id)s FOR UPDATE"

# -- orphans: distinct thread ids of the checkpoints table, by a skip scan of its thread_id
# index (one descent per distinct id, not one read per row).
ORPHAN_IDS_PAGE_SQL = """
WITH RECURSIVE ids(thread_id) AS (
    (SELECT thread_id FROM checkpoints
     WHERE %(after)s::text IS NULL OR thread_id > %(after)s::text
     ORDER BY thread_id LIMIT 1)
  UNION ALL
    SELECT (SELECT c.thread_id FROM checkpoints c WHERE c.thread_id > ids.thread_id
            ORDER BY c.thread_id LIMIT 1)
    FROM ids WHERE ids.thread_id IS NOT NULL
)
SELECT thread_id FROM ids WHERE thread_id IS NOT NULL LIMIT %(page)s
"""

# The newest checkpoint is only looked up for ids without a thread (rare), never for the rest.
ORPHAN_FILTER_SQL = """
SELECT i.thread_id,
       (SELECT max(c.checkpoint_id) FROM checkpoints c WHERE c.thread_id = i.thread_id) AS newest
FROM unnest(%(ids)s::text[], %(uuids)s::uuid[]) AS i(thread_id, as_uuid)
WHERE NOT EXISTS (SELECT 1 FROM threads t WHERE t.thread_id = i.as_uuid)
ORDER BY i.thread_id
"""

# Eligible threads still waiting after a run. Index ranges with a cap, never a table count.
BACKLOG_SQL = """
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE archived_at IS NULL AND last_message_at < %(idle)s LIMIT %(cap)s) AS a)
  + (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE archived_at IS NULL AND last_message_at IS NULL AND created_at < %(idle)s
        LIMIT %(cap)s) AS b)
  + (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE archived_at IS NOT NULL AND archived_at < %(archived)s
          AND (last_message_at IS NULL OR last_message_at < %(archived)s)
        LIMIT %(cap)s) AS c)
  + (SELECT count(*) FROM (SELECT 1 FROM threads
        WHERE ttl_expires_at < %(expired)s AND ttl_strategy = 'delete'
        LIMIT %(cap)s) AS d)
    AS backlog
"""
BACKLOG_CAP = 100_000


@dataclass(frozen=True)
class Page:
    """One page of a sweep: the threads due, and the last thread id looked at."""

    due: list[str]
    last: str | None


def as_uuid(thread_id: str) -> UUID | None:
    """The thread a checkpoint thread_id belongs to; None when it cannot name one."""
    try:
        return uuid.UUID(thread_id)
    except ValueError:
        return None


async def _keyset(
    conn: AsyncConnection[DictRow],
    statement: str,
    before: datetime,
    page: int,
    **more: object,
) -> AsyncGenerator[UUID, None]:
    after_at: datetime | None = None
    after_id: UUID | None = None
    while True:
        cur = await conn.execute(
            statement,
            {"before": before, "after_at": after_at, "after_id": after_id, "page": page, **more},
        )
        rows = await cur.fetchall()
        for row in rows:
            yield row["thread_id"]
        if len(rows) < page:
            return
        after_at, after_id = rows[-1]["position"], rows[-1]["thread_id"]


async def idle_threads(
    conn: AsyncConnection[DictRow], before: datetime, page: int
) -> AsyncGenerator[UUID, None]:
    async for thread_id in _keyset(conn, IDLE_SPOKEN_PAGE_SQL, before, page):
        yield thread_id
    async for thread_id in _keyset(conn, IDLE_SILENT_PAGE_SQL, before, page):
        yield thread_id


async def archived_threads(
    conn: AsyncConnection[DictRow], before: datetime, page: int
) -> AsyncGenerator[UUID, None]:
    async for thread_id in _keyset(conn, ARCHIVED_PAGE_SQL, before, page):
        yield thread_id


async def expired_threads(
    conn: AsyncConnection[DictRow], before: datetime, strategy: str, page: int
) -> AsyncGenerator[UUID, None]:
    """Threads whose ttl of ``strategy`` ran out before ``before``, oldest expiry first."""
    async for thread_id in _keyset(conn, EXPIRED_PAGE_SQL, before, page, strategy=strategy):
        yield thread_id


async def history_pages(
    conn: AsyncConnection[DictRow],
    *,
    after: str | None,
    page: int,
    keep_last: int,
    cutoff_id: str | None,
) -> AsyncGenerator[Page, None]:
    """Pages of threads in id order after ``after``, with the ones whose history is due."""
    while True:
        cur = await conn.execute(
            HISTORY_PAGE_SQL,
            {"after": after, "page": page, "keep": keep_last, "cutoff": cutoff_id},
        )
        rows = await cur.fetchall()
        if not rows:
            return
        after = str(rows[-1]["thread_id"])
        yield Page([str(r["thread_id"]) for r in rows if r["due"]], after)
        if len(rows) < page:
            return


async def orphan_pages(
    conn: AsyncConnection[DictRow], *, after: str | None, page: int, cutoff_id: str
) -> AsyncGenerator[Page, None]:
    """Pages of checkpoint thread ids after ``after``, with the orphans old enough to delete."""
    while True:
        cur = await conn.execute(ORPHAN_IDS_PAGE_SQL, {"after": after, "page": page})
        ids = [r["thread_id"] for r in await cur.fetchall()]
        if not ids:
            return
        cur = await conn.execute(
            ORPHAN_FILTER_SQL, {"ids": ids, "uuids": [as_uuid(i) for i in ids]}
        )
        due = [
            r["thread_id"]
            for r in await cur.fetchall()
            if is_time_ordered(r["newest"]) and r["newest"] < cutoff_id
        ]
        after = ids[-1]
        yield Page(due, after)
        if len(ids) < page:
            return


async def deletion_backlog(
    conn: AsyncConnection[DictRow],
    idle_before: datetime | None,
    archived_before: datetime | None,
    expired_before: datetime,
) -> int:
    cur = await conn.execute(
        BACKLOG_SQL,
        {
            "idle": idle_before,
            "archived": archived_before,
            "expired": expired_before,
            "cap": BACKLOG_CAP,
        },
    )
    row = await cur.fetchone()
    return int(row["backlog"]) if row else 0
