"""The ``assistants`` and ``assistant_versions`` tables: graphs with the configuration runs use.

An assistant is a graph plus the ``config`` and ``context`` its runs start from. Every graph of
the deployment has a system assistant (no owner, visible to everyone, read-only) whose id is the
Agent Server's, so SDK code that hard-codes it keeps working. Assistants a user creates belong to
that user; every query takes the owner, so another owner's assistant is indistinguishable from a
missing one.

Each change makes a new row in ``assistant_versions``; the ``assistants`` row holds the version
runs use (the newest, unless ``set_latest`` picked another).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Self
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from threadkeeper.service.domain import SortOrder
from threadkeeper.service.registry import system_assistant_id

SYSTEM_METADATA = {"created_by": "system"}
# The Agent Server's name for an assistant created without one.
DEFAULT_NAME = "Untitled"


class SortBy(StrEnum):
    ASSISTANT_ID = "assistant_id"
    GRAPH_ID = "graph_id"
    NAME = "name"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"


@dataclass(frozen=True)
class Assistant:
    assistant_id: UUID
    graph_id: str
    owner: str | None
    name: str
    description: str | None
    config: dict[str, Any]
    context: dict[str, Any]
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def is_system(self) -> bool:
        return self.owner is None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Self:
        """The record of a row with the record's columns (others, such as ``total``, are left)."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class NewAssistant:
    assistant_id: UUID
    graph_id: str
    owner: str | None
    name: str = DEFAULT_NAME
    description: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """What a PATCH sets; None keeps a field. ``metadata`` is merged into the current one."""

    graph_id: str | None = None
    name: str | None = None
    description: str | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class AssistantFilter:
    """What search and count match: the owner's and system assistants of the graphs served."""

    owner: str
    graph_ids: tuple[str, ...]
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None


COLUMNS = (
    "assistant_id",
    "graph_id",
    "owner",
    "name",
    "description",
    "config",
    "context",
    "metadata",
    "version",
    "created_at",
    "updated_at",
)
COLUMNS_SQL = ", ".join(COLUMNS)
A_COLUMNS_SQL = ", ".join("a." + c for c in COLUMNS)
# Visible to an owner: their own assistants and every system one.
VISIBLE_SQL = "(a.owner = %(owner)s OR a.owner IS NULL)"

INSERT_SQL = f"""
WITH a AS (
    INSERT INTO assistants (assistant_id, graph_id, owner, name, description, config, context,
                            metadata)
    VALUES (%(assistant_id)s, %(graph_id)s, %(owner)s, %(name)s, %(description)s, %(config)s,
            %(context)s, %(metadata)s)
    ON CONFLICT (assistant_id) DO NOTHING
    RETURNING {COLUMNS_SQL}
), v AS (
    INSERT INTO assistant_versions (assistant_id, version, graph_id, name, description, config,
                                    context, metadata, created_at)
    SELECT assistant_id, version, graph_id, name, description, config, context, metadata,
           created_at
    FROM a
)
SELECT {COLUMNS_SQL} FROM a
"""

GET_SQL = f"""
SELECT {A_COLUMNS_SQL} FROM assistants a
WHERE a.assistant_id = %(assistant_id)s AND {VISIBLE_SQL}
"""

# Serialises changes of one assistant: the next statement's snapshot sees the previous version.
LOCK_OWN_SQL = """
SELECT 1 FROM assistants WHERE assistant_id = %(assistant_id)s AND owner = %(owner)s FOR UPDATE
"""

# A new version from the current one with the given fields replaced, made current at once.
UPDATE_SQL = f"""
WITH cur AS (
    SELECT * FROM assistants WHERE assistant_id = %(assistant_id)s AND owner = %(owner)s
), ver AS (
    INSERT INTO assistant_versions (assistant_id, version, graph_id, name, description, config,
                                    context, metadata)
    SELECT cur.assistant_id,
           (SELECT max(v.version) + 1 FROM assistant_versions v
            WHERE v.assistant_id = cur.assistant_id),
           coalesce(%(graph_id)s, cur.graph_id),
           coalesce(%(name)s, cur.name),
           coalesce(%(description)s, cur.description),
           coalesce(%(config)s, cur.config),
           coalesce(%(context)s, cur.context),
           cur.metadata || %(metadata)s
    FROM cur
    RETURNING *
)
UPDATE assistants a SET
    graph_id = ver.graph_id, name = ver.name, description = ver.description,
    config = ver.config, context = ver.context, metadata = ver.metadata,
    version = ver.version, updated_at = now()
FROM ver
WHERE a.assistant_id = ver.assistant_id
RETURNING {A_COLUMNS_SQL}
"""

SET_LATEST_SQL = f"""
UPDATE assistants a SET
    graph_id = v.graph_id, name = v.name, description = v.description,
    config = v.config, context = v.context, metadata = v.metadata,
    version = v.version, updated_at = now()
FROM assistant_versions v
WHERE a.assistant_id = %(assistant_id)s AND a.owner = %(owner)s
  AND v.assistant_id = a.assistant_id AND v.version = %(version)s
RETURNING {A_COLUMNS_SQL}
"""

DELETE_SQL = "DELETE FROM assistants WHERE assistant_id = %(assistant_id)s AND owner = %(owner)s"

VERSIONS_SQL = f"""
SELECT v.assistant_id, v.graph_id, a.owner, v.name, v.description, v.config, v.context,
       v.metadata, v.version, v.created_at, v.created_at AS updated_at
FROM assistant_versions v JOIN assistants a USING (assistant_id)
WHERE v.assistant_id = %(assistant_id)s AND {VISIBLE_SQL} AND v.metadata @> %(metadata)s
ORDER BY v.version DESC
LIMIT %(limit)s OFFSET %(offset)s
"""


async def create(conn: AsyncConnection[DictRow], new: NewAssistant) -> Assistant | None:
    """Insert an assistant and its version 1; None if the id is taken (by anyone)."""
    cur = await conn.execute(
        INSERT_SQL,
        {
            "assistant_id": new.assistant_id,
            "graph_id": new.graph_id,
            "owner": new.owner,
            "name": new.name,
            "description": new.description,
            "config": Jsonb(new.config),
            "context": Jsonb(new.context),
            "metadata": Jsonb(new.metadata),
        },
    )
    row = await cur.fetchone()
    return Assistant.of(row) if row else None


async def ensure_system(conn: AsyncConnection[DictRow], graph_ids: Iterable[str]) -> None:
    """Every graph's system assistant; replicas starting together all succeed (the first
    insert wins, the others find the row)."""
    for graph_id in graph_ids:
        await create(
            conn,
            NewAssistant(
                assistant_id=system_assistant_id(graph_id),
                graph_id=graph_id,
                owner=None,
                name=graph_id,
                metadata=SYSTEM_METADATA,
            ),
        )


async def get(conn: AsyncConnection[DictRow], assistant_id: UUID, owner: str) -> Assistant | None:
    """The assistant if ``owner`` may see it (theirs, or a system one)."""
    cur = await conn.execute(GET_SQL, {"assistant_id": assistant_id, "owner": owner})
    row = await cur.fetchone()
    return Assistant.of(row) if row else None


async def update(
    conn: AsyncConnection[DictRow], assistant_id: UUID, owner: str, change: Change
) -> Assistant | None:
    """A new version with ``change`` applied; None when the owner has no such assistant."""
    async with conn.transaction():
        cur = await conn.execute(LOCK_OWN_SQL, {"assistant_id": assistant_id, "owner": owner})
        if await cur.fetchone() is None:
            return None
        cur = await conn.execute(
            UPDATE_SQL,
            {
                "assistant_id": assistant_id,
                "owner": owner,
                "graph_id": change.graph_id,
                "name": change.name,
                "description": change.description,
                "config": _jsonb_or_none(change.config),
                "context": _jsonb_or_none(change.context),
                "metadata": Jsonb(change.metadata or {}),
            },
        )
        row = await cur.fetchone()
    return Assistant.of(row) if row else None


async def set_latest(
    conn: AsyncConnection[DictRow], assistant_id: UUID, owner: str, version: int
) -> Assistant | None:
    """Make ``version`` the one runs use; None when the owner has no such assistant or version."""
    cur = await conn.execute(
        SET_LATEST_SQL, {"assistant_id": assistant_id, "owner": owner, "version": version}
    )
    row = await cur.fetchone()
    return Assistant.of(row) if row else None


async def delete(conn: AsyncConnection[DictRow], assistant_id: UUID, owner: str) -> bool:
    cur = await conn.execute(DELETE_SQL, {"assistant_id": assistant_id, "owner": owner})
    return cur.rowcount > 0


async def versions(
    conn: AsyncConnection[DictRow],
    assistant_id: UUID,
    owner: str,
    *,
    metadata: dict[str, Any] | None,
    limit: int,
    offset: int,
) -> list[Assistant]:
    """The assistant's versions, newest first, matching ``metadata``."""
    cur = await conn.execute(
        VERSIONS_SQL,
        {
            "assistant_id": assistant_id,
            "owner": owner,
            "metadata": Jsonb(metadata or {}),
            "limit": limit,
            "offset": offset,
        },
    )
    return [Assistant.of(row) for row in await cur.fetchall()]


def _where(flt: AssistantFilter) -> tuple[str, dict[str, Any]]:
    clauses = [VISIBLE_SQL, "a.graph_id = ANY(%(graph_ids)s)"]
    params: dict[str, Any] = {"owner": flt.owner, "graph_ids": list(flt.graph_ids)}
    if flt.graph_id is not None:
        clauses.append("a.graph_id = %(graph_id)s")
        params["graph_id"] = flt.graph_id
    if flt.name:
        # The Agent Server matches names by substring, case-insensitively.
        clauses.append("strpos(lower(a.name), lower(%(name)s)) > 0")
        params["name"] = flt.name
    if flt.metadata:
        clauses.append("a.metadata @> %(metadata)s")
        params["metadata"] = Jsonb(flt.metadata)
    return " AND ".join(clauses), params


async def search(
    conn: AsyncConnection[DictRow],
    flt: AssistantFilter,
    *,
    sort_by: SortBy,
    sort_order: SortOrder,
    limit: int,
    offset: int,
) -> tuple[list[Assistant], int]:
    """One page of matching assistants and the total number of matches."""
    where, params = _where(flt)
    direction = sort_order.sql
    # Text columns sort case-insensitively, as the Agent Server sorts them.
    key = f"lower(a.{sort_by.value})" if sort_by in (SortBy.NAME, SortBy.GRAPH_ID) else None
    order = f"{key or 'a.' + sort_by.value} {direction}, a.assistant_id {direction}"
    # sort_by and sort_order are enum members, never client text.
    query = (
        f"SELECT {A_COLUMNS_SQL}, count(*) OVER () AS total FROM assistants a WHERE {where} "
        f"ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s"
    )
    cur = await conn.execute(query.encode(), {**params, "limit": limit, "offset": offset})
    rows = await cur.fetchall()
    if rows:
        return [Assistant.of(r) for r in rows], int(rows[0]["total"])
    return [], await count(conn, flt) if offset else 0


async def count(conn: AsyncConnection[DictRow], flt: AssistantFilter) -> int:
    where, params = _where(flt)
    query = f"SELECT count(*) AS n FROM assistants a WHERE {where}"
    cur = await conn.execute(query.encode(), params)
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


def _jsonb_or_none(value: dict[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(value)
