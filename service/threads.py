"""The ``threads`` table: one row per conversation, owned by one user.

Every query takes the owner, so a thread of another owner is indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from threadkeeper.service.domain import SortOrder, ThreadStatus
from threadkeeper.service.lease import busy_sql

SortBy = Literal[
    "created_at", "updated_at", "last_message_at", "thread_id", "status", "state_updated_at"
]
TITLE_LIMIT = 80

# The stored status says how the last run ended; "busy" is only true while a run holds a live
# lease (or waits to be claimed), so a replica that died never leaves a thread busy for ever.
STATUS_SQL = f"""
CASE
    WHEN EXISTS (
        SELECT 1 FROM runs r
        WHERE r.thread_id = t.thread_id
          AND {busy_sql("r")}
    ) THEN 'busy'
    WHEN t.status = 'busy' THEN 'interrupted'
    ELSE t.status
END
"""

COLUMNS_SQL = f"""
t.thread_id, t.owner, t.title, t.metadata, t.created_at, t.updated_at,
t.last_message_at, t.archived_at, ({STATUS_SQL}) AS status
"""


@dataclass(frozen=True)
class Thread:
    """A thread row (``COLUMNS_SQL``), its status derived from its runs' leases."""

    thread_id: UUID
    owner: str
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    last_message_at: datetime | None
    archived_at: datetime | None
    status: ThreadStatus

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Thread:
        """The record of a row with the thread columns (others, such as ``total``, are left)."""
        values = {f.name: row[f.name] for f in fields(cls)}
        values["status"] = ThreadStatus(row["status"])
        return cls(**values)


def _maybe(row: Mapping[str, Any] | None) -> Thread | None:
    return None if row is None else Thread.of(row)


INSERT_SQL = f"""
INSERT INTO threads AS t (
    thread_id, owner, title, metadata, temporary, ttl_strategy, ttl_minutes, ttl_expires_at
)
VALUES (
    %(thread_id)s, %(owner)s, %(title)s, %(metadata)s, %(temporary)s, %(ttl_strategy)s,
    %(ttl_minutes)s, now() + %(ttl_minutes)s::float8 * interval '1 minute'
)
ON CONFLICT (thread_id) DO NOTHING
RETURNING {COLUMNS_SQL}
"""

GET_SQL = f"SELECT {COLUMNS_SQL} FROM threads t WHERE t.thread_id = %s AND t.owner = %s"

EXISTS_ANY_OWNER_SQL = "SELECT 1 FROM threads WHERE thread_id = %s"

TTL_SQL = """
SELECT ttl_strategy, ttl_minutes, ttl_expires_at FROM threads
WHERE thread_id = %s AND owner = %s AND ttl_strategy IS NOT NULL
"""

LOCK_SQL = "SELECT thread_id FROM threads WHERE thread_id = %s AND owner = %s FOR UPDATE"

UPDATE_SQL = f"""
UPDATE threads AS t SET
    metadata = t.metadata || %(metadata)s,
    title = CASE WHEN %(set_title)s THEN %(title)s ELSE t.title END,
    archived_at = CASE
        WHEN %(archived)s::boolean IS NULL THEN t.archived_at
        WHEN %(archived)s THEN coalesce(t.archived_at, now())
        ELSE NULL
    END,
    ttl_strategy = CASE WHEN %(set_ttl)s THEN %(ttl_strategy)s ELSE t.ttl_strategy END,
    ttl_minutes = CASE WHEN %(set_ttl)s THEN %(ttl_minutes)s ELSE t.ttl_minutes END,
    ttl_expires_at = CASE
        WHEN %(set_ttl)s THEN now() + %(ttl_minutes)s::float8 * interval '1 minute'
        ELSE t.ttl_expires_at
    END,
    updated_at = now()
WHERE t.thread_id = %(thread_id)s AND t.owner = %(owner)s
RETURNING {COLUMNS_SQL}
"""

# Runs go first: deleting a run row waits for any fenced checkpoint write still holding it, and
# once it is gone no late write of that run can pass its fence and resurrect the thread.
DELETE_RUNS_SQL = "DELETE FROM runs WHERE thread_id = %s"
DELETE_CHECKPOINTS_SQL = (
    "DELETE FROM checkpoint_writes WHERE thread_id = %s",
    "DELETE FROM checkpoint_blobs WHERE thread_id = %s",
    "DELETE FROM checkpoints WHERE thread_id = %s",
)
DELETE_SQL = "DELETE FROM threads WHERE thread_id = %s"

COPY_CHECKPOINTS_SQL = (
    """
    INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
                             type, checkpoint, metadata)
    SELECT %(new)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
           CASE WHEN metadata ? 'thread_id'
                THEN jsonb_set(metadata, '{thread_id}', to_jsonb(%(new)s::text))
                ELSE metadata END
    FROM checkpoints WHERE thread_id = %(old)s
    """,
    """
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %(new)s, checkpoint_ns, channel, version, type, blob
    FROM checkpoint_blobs WHERE thread_id = %(old)s
    """,
    """
    INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx,
                                   channel, type, blob, task_path)
    SELECT %(new)s, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob, task_path
    FROM checkpoint_writes WHERE thread_id = %(old)s
    """,
)


@dataclass(frozen=True)
class ThreadFilter:
    """What ``/threads/search`` and ``/threads/count`` may filter on."""

    owner: str
    ids: list[UUID] | None = None
    metadata: dict[str, Any] | None = None
    status: str | None = None
    archived: bool | None = False


def derive_title(text: str) -> str | None:
    """The first user message, trimmed on a word boundary to at most TITLE_LIMIT characters."""
    text = " ".join(text.split())
    if not text:
        return None
    if len(text) <= TITLE_LIMIT:
        return text
    cut = text[: TITLE_LIMIT - 1]
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,.;:-") + "…"


class TtlStrategy(StrEnum):
    """What pruning does to a thread, when its ttl runs out (the reaper acts) or when asked
    (``POST /threads/prune``): delete it whole, or keep its latest state only."""

    DELETE = "delete"
    KEEP_LATEST = "keep_latest"


@dataclass(frozen=True)
class Ttl:
    """A thread's time to live: ``minutes`` from when it was set."""

    strategy: TtlStrategy
    minutes: float


@dataclass(frozen=True)
class TtlInfo:
    """A thread's ttl as ``?include=ttl`` reports it: what it was set to and when it runs out."""

    strategy: TtlStrategy
    ttl_minutes: float
    expires_at: datetime


def _ttl_params(ttl: Ttl | None) -> dict[str, Any]:
    if ttl is None:
        return {"ttl_strategy": None, "ttl_minutes": None}
    return {"ttl_strategy": ttl.strategy.value, "ttl_minutes": ttl.minutes}


async def insert(
    conn: AsyncConnection[DictRow],
    *,
    thread_id: UUID,
    owner: str,
    metadata: dict[str, Any],
    title: str | None = None,
    temporary: bool = False,
    ttl: Ttl | None = None,
) -> Thread | None:
    """Insert a thread; None when the id is taken (by anyone). A temporary thread (a stateless
    run's) is deleted once its runs ended (``service.stateless``)."""
    cur = await conn.execute(
        INSERT_SQL,
        {
            "thread_id": thread_id,
            "owner": owner,
            "title": title,
            "metadata": Jsonb(metadata),
            "temporary": temporary,
            **_ttl_params(ttl),
        },
    )
    return _maybe(await cur.fetchone())


async def get(conn: AsyncConnection[DictRow], thread_id: UUID, owner: str) -> Thread | None:
    cur = await conn.execute(GET_SQL, (thread_id, owner))
    return _maybe(await cur.fetchone())


async def ttl_of(conn: AsyncConnection[DictRow], thread_id: UUID, owner: str) -> TtlInfo | None:
    """The thread's ttl; None when it has none (or the caller has no such thread)."""
    cur = await conn.execute(TTL_SQL, (thread_id, owner))
    row = await cur.fetchone()
    if row is None:
        return None
    return TtlInfo(TtlStrategy(row["ttl_strategy"]), row["ttl_minutes"], row["ttl_expires_at"])


async def exists_for_anyone(conn: AsyncConnection[DictRow], thread_id: UUID) -> bool:
    cur = await conn.execute(EXISTS_ANY_OWNER_SQL, (thread_id,))
    return await cur.fetchone() is not None


async def lock(conn: AsyncConnection[DictRow], thread_id: UUID, owner: str) -> bool:
    """Take the thread's row lock (the per-thread lock runs, deletes and prunes share).

    Must run inside a transaction; False when the caller has no such thread.
    """
    cur = await conn.execute(LOCK_SQL, (thread_id, owner))
    return await cur.fetchone() is not None


async def update(
    conn: AsyncConnection[DictRow],
    thread_id: UUID,
    owner: str,
    *,
    metadata: dict[str, Any] | None = None,
    title: str | None = None,
    set_title: bool = False,
    archived: bool | None = None,
    ttl: Ttl | None = None,
) -> Thread | None:
    """Change what is given; a ``ttl`` restarts the thread's time to live from now."""
    cur = await conn.execute(
        UPDATE_SQL,
        {
            "set_ttl": ttl is not None,
            **_ttl_params(ttl),
            "thread_id": thread_id,
            "owner": owner,
            "metadata": Jsonb(metadata or {}),
            "title": title,
            "set_title": set_title,
            "archived": archived,
        },
    )
    return _maybe(await cur.fetchone())


async def delete_locked(conn: AsyncConnection[DictRow], thread_id: UUID) -> None:
    """Delete the thread, its runs (cascade) and all its checkpoint rows.

    The caller holds the row lock inside one transaction, so nothing of it can outlive the row.
    """
    await conn.execute(DELETE_RUNS_SQL, (thread_id,))
    for sql in DELETE_CHECKPOINTS_SQL:
        await conn.execute(sql, (str(thread_id),))
    await conn.execute(DELETE_SQL, (thread_id,))


async def copy_checkpoints(conn: AsyncConnection[DictRow], old: UUID, new: UUID) -> None:
    params = {"old": str(old), "new": str(new)}
    for sql in COPY_CHECKPOINTS_SQL:
        await conn.execute(sql, params)


def _where(flt: ThreadFilter) -> tuple[str, list[Any]]:
    clauses = ["t.owner = %s"]
    params: list[Any] = [flt.owner]
    if flt.ids is not None:
        clauses.append("t.thread_id = ANY(%s)")
        params.append(flt.ids)
    if flt.metadata:
        clauses.append("t.metadata @> %s")
        params.append(Jsonb(flt.metadata))
    if flt.archived is not None:
        clauses.append("t.archived_at IS NOT NULL" if flt.archived else "t.archived_at IS NULL")
    if flt.status is not None:
        clauses.append(f"({STATUS_SQL}) = %s")
        params.append(flt.status)
    return " AND ".join(clauses), params


# What each sort_by orders on; state_updated_at is what a thread reports as such.
SORT_SQL: dict[str, str] = {
    "created_at": "t.created_at",
    "updated_at": "t.updated_at",
    "last_message_at": "t.last_message_at",
    "thread_id": "t.thread_id",
    "status": f"({STATUS_SQL})",
    "state_updated_at": "coalesce(t.last_message_at, t.updated_at)",
}


async def search(
    conn: AsyncConnection[DictRow],
    flt: ThreadFilter,
    *,
    limit: int,
    offset: int,
    sort_by: SortBy,
    sort_order: SortOrder,
) -> tuple[list[Thread], int]:
    """One page of matching threads and the total number of matches."""
    where, params = _where(flt)
    direction = sort_order.sql
    nulls = "NULLS FIRST" if sort_order is SortOrder.ASC else "NULLS LAST"
    # sort_by is a Literal checked at the HTTP boundary, never free text.
    query = (
        f"SELECT {COLUMNS_SQL}, count(*) OVER () AS total FROM threads t WHERE {where} "
        f"ORDER BY {SORT_SQL[sort_by]} {direction} {nulls}, t.thread_id {direction} "
        "LIMIT %s OFFSET %s"
    )
    cur = await conn.execute(query, [*params, limit, offset])  # type: ignore[arg-type]
    rows = await cur.fetchall()
    if rows:
        return [Thread.of(row) for row in rows], int(rows[0]["total"])
    return [], await count(conn, flt) if offset else 0


async def count(conn: AsyncConnection[DictRow], flt: ThreadFilter) -> int:
    where, params = _where(flt)
    cur = await conn.execute(f"SELECT count(*) AS n FROM threads t WHERE {where}", params)  # type: ignore[arg-type]
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


LOCK_ANY_SQL = "SELECT 1 FROM threads WHERE thread_id = %s FOR UPDATE"


async def lock_any(conn: AsyncConnection[DictRow], thread_id: UUID) -> None:
    """The thread lock for internal work that already checked ownership."""
    await conn.execute(LOCK_ANY_SQL, (thread_id,))
