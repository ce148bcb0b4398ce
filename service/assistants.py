"""The ``assistants`` and ``assistant_versions`` tables: graphs with their configuration.

An assistant is a graph plus the ``config`` and ``context`` its runs start from. Every graph of
the deployment has a system assistant (no owner, visible to everyone) whose id is the Agent
Server's: ``uuid5(NAMESPACE_GRAPH, graph_id)``, so SDK code that hard-codes it keeps working.
Assistants a user creates belong to that user; every query takes the owner, so another owner's
assistant is indistinguishable from a missing one.

Each change makes a new row in ``assistant_versions``; the ``assistants`` row holds the version
that runs use (the latest, unless ``set_latest`` picked an older one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

# The Agent Server's namespace for graph ids; system assistant ids are uuid5 of the graph id.
NAMESPACE_GRAPH = UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
SYSTEM_METADATA = {"created_by": "system"}

MIGRATION_SQL = """
CREATE TABLE assistants (
    assistant_id uuid PRIMARY KEY,
    graph_id     text NOT NULL,
    owner        text,            -- NULL: a system assistant, visible to every owner
    name         text NOT NULL,
    description  text,
    config       jsonb NOT NULL DEFAULT '{}',
    context      jsonb NOT NULL DEFAULT '{}',
    metadata     jsonb NOT NULL DEFAULT '{}',
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assistants_owner_graph_idx ON assistants (owner, graph_id, updated_at DESC);
CREATE INDEX assistants_metadata_idx ON assistants USING gin (metadata jsonb_path_ops);

CREATE TABLE assistant_versions (
    assistant_id uuid NOT NULL REFERENCES assistants (assistant_id) ON DELETE CASCADE,
    version      integer NOT NULL,
    graph_id     text NOT NULL,
    name         text NOT NULL,
    description  text,
    config       jsonb NOT NULL DEFAULT '{}',
    context      jsonb NOT NULL DEFAULT '{}',
    metadata     jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (assistant_id, version)
);
"""


class SortBy(StrEnum):
    ASSISTANT_ID = "assistant_id"
    GRAPH_ID = "graph_id"
    NAME = "name"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"


class SortOrder(StrEnum):
    ASC = "asc"
    DESC = "desc"


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
    def from_row(cls, row: DictRow) -> Assistant:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class AssistantFields:
    """What a create or an update sets; None leaves a field as it is (on update)."""

    graph_id: str | None = None
    name: str | None = None
    description: str | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class AssistantFilter:
    owner: str
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None


def system_id(graph_id: str) -> UUID:
    return uuid5(NAMESPACE_GRAPH, graph_id)


COLUMNS = (
    "assistant_id, graph_id, owner, name, description, config, context, metadata, version, "
    "created_at, updated_at"
)
# Visible to an owner: their own assistants and every system one.
VISIBLE_SQL = "(owner = %(owner)s OR owner IS NULL)"

INSERT_SQL = f"""
WITH a AS (
    INSERT INTO assistants (assistant_id, graph_id, owner, name, description, config, context,
                            metadata)
    VALUES (%(assistant_id)s, %(graph_id)s, %(owner)s, %(name)s, %(description)s, %(config)s,
            %(context)s, %(metadata)s)
    ON CONFLICT (assistant_id) DO NOTHING
    RETURNING {COLUMNS}
), v AS (
    INSERT INTO assistant_versions (assistant_id, version, graph_id, name, description, config,
                                    context, metadata, created_at)
    SELECT assistant_id, version, graph_id, name, description, config, context, metadata,
           created_at
    FROM a
)
SELECT {COLUMNS} FROM a
"""

GET_SQL = (
    f"SELECT {COLUMNS} FROM assistants WHERE assistant_id = %(assistant_id)s AND {VISIBLE_SQL}"
)

EXISTS_ANY_OWNER_SQL = "SELECT owner FROM assistants WHERE assistant_id = %s"

# A new version from the current one with the given fields replaced, made current at once.
UPDATE_SQL = f"""
WITH cur AS (
    SELECT * FROM assistants
    WHERE assistant_id = %(assistant_id)s AND owner = %(owner)s
    FOR UPDATE
), next AS (
    SELECT coalesce(max(v.version), 0) + 1 AS version
    FROM assistant_versions v JOIN cur USING (assistant_id)
), ver AS (
    INSERT INTO assistant_versions (assistant_id, version, graph_id, name, description, config,
                                    context, metadata)
    SELECT cur.assistant_id, next.version,
           coalesce(%(graph_id)s, cur.graph_id),
           coalesce(%(name)s, cur.name),
           CASE WHEN %(set_description)s THEN %(description)s ELSE cur.description END,
           coalesce(%(config)s, cur.config),
           coalesce(%(context)s, cur.context),
           coalesce(%(metadata)s, cur.metadata)
    FROM cur, next
    RETURNING *
)
UPDATE assistants a SET
    graph_id = ver.graph_id, name = ver.name, description = ver.description,
    config = ver.config, context = ver.context, metadata = ver.metadata,
    version = ver.version, updated_at = now()
FROM ver
WHERE a.assistant_id = ver.assistant_id
RETURNING {", ".join("a." + c.strip() for c in COLUMNS.split(","))}
"""

SET_LATEST_SQL = f"""
UPDATE assistants a SET
    graph_id = v.graph_id, name = v.name, description = v.description,
    config = v.config, context = v.context, metadata = v.metadata,
    version = v.version, updated_at = now()
FROM assistant_versions v
WHERE a.assistant_id = %(assistant_id)s AND a.owner = %(owner)s
  AND v.assistant_id = a.assistant_id AND v.version = %(version)s
RETURNING {", ".join("a." + c.strip() for c in COLUMNS.split(","))}
"""

DELETE_SQL = "DELETE FROM assistants WHERE assistant_id = %(assistant_id)s AND owner = %(owner)s"

VERSIONS_SQL = f"""
SELECT v.assistant_id, v.graph_id, a.owner, v.name, v.description, v.config, v.context,
       v.metadata, v.version, v.created_at, v.created_at AS updated_at
FROM assistant_versions v JOIN assistants a USING (assistant_id)
WHERE v.assistant_id = %(assistant_id)s AND {VISIBLE_SQL.replace("owner", "a.owner")}
  AND v.metadata @> %(metadata)s
ORDER BY v.version DESC
LIMIT %(limit)s OFFSET %(offset)s
"""


async def create(
    conn: AsyncConnection[DictRow],
    assistant_id: UUID,
    owner: str | None,
    fields: AssistantFields,
) -> Assistant | None:
    """Insert an assistant and its version 1; None if the id is taken (by anyone)."""
    assert fields.graph_id is not None
    cur = await conn.execute(
        INSERT_SQL,
        {
            "assistant_id": assistant_id,
            "graph_id": fields.graph_id,
            "owner": owner,
            "name": fields.name or fields.graph_id,
            "description": fields.description,
            "config": Jsonb(fields.config or {}),
            "context": Jsonb(fields.context or {}),
            "metadata": Jsonb(fields.metadata or {}),
        },
    )
    row = await cur.fetchone()
    return Assistant.from_row(row) if row else None


async def ensure_system(conn: AsyncConnection[DictRow], graph_id: str) -> None:
    """The graph's system assistant; idempotent across replicas starting together."""
    await create(
        conn,
        system_id(graph_id),
        None,
        AssistantFields(graph_id=graph_id, name=graph_id, metadata=SYSTEM_METADATA),
    )


async def get(conn: AsyncConnection[DictRow], assistant_id: UUID, owner: str) -> Assistant | None:
    cur = await conn.execute(GET_SQL, {"assistant_id": assistant_id, "owner": owner})
    row = await cur.fetchone()
    return Assistant.from_row(row) if row else None


async def update(
    conn: AsyncConnection[DictRow],
    assistant_id: UUID,
    owner: str,
    fields: AssistantFields,
    *,
    set_description: bool,
) -> Assistant | None:
    """A new version with ``fields`` replaced; None when the owner has no such assistant."""
    cur = await conn.execute(
        UPDATE_SQL,
        {
            "assistant_id": assistant_id,
            "owner": owner,
            "graph_id": fields.graph_id,
            "name": fields.name,
            "set_description": set_description,
            "description": fields.description,
            "config": Jsonb(fields.config) if fields.config is not None else None,
            "context": Jsonb(fields.context) if fields.context is not None else None,
            "metadata": Jsonb(fields.metadata) if fields.metadata is not None else None,
        },
    )
    row = await cur.fetchone()
    return Assistant.from_row(row) if row else None


async def set_latest(
    conn: AsyncConnection[DictRow], assistant_id: UUID, owner: str, version: int
) -> Assistant | None:
    cur = await conn.execute(
        SET_LATEST_SQL, {"assistant_id": assistant_id, "owner": owner, "version": version}
    )
    row = await cur.fetchone()
    return Assistant.from_row(row) if row else None


async def delete(conn: AsyncConnection[DictRow], assistant_id: UUID, owner: str) -> bool:
    cur = await conn.execute(DELETE_SQL, {"assistant_id": assistant_id, "owner": owner})
    return cur.rowcount > 0


async def versions(
    conn: AsyncConnection[DictRow],
    assistant_id: UUID,
    owner: str,
    *,
    metadata: dict[str, Any] | None = None,
    limit: int = 10,
    offset: int = 0,
) -> list[Assistant]:
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
    return [Assistant.from_row(row) for row in await cur.fetchall()]


def _where(flt: AssistantFilter) -> tuple[str, dict[str, Any]]:
    clauses = [VISIBLE_SQL]
    params: dict[str, Any] = {"owner": flt.owner}
    if flt.graph_id is not None:
        clauses.append("graph_id = %(graph_id)s")
        params["graph_id"] = flt.graph_id
    if flt.name is not None:
        # The Agent Server matches names by substring, case-insensitively.
        clauses.append("name ILIKE '%%' || %(name)s || '%%'")
        params["name"] = flt.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if flt.metadata:
        clauses.append("metadata @> %(metadata)s")
        params["metadata"] = Jsonb(flt.metadata)
    return " AND ".join(clauses), params


async def search(
    conn: AsyncConnection[DictRow],
    flt: AssistantFilter,
    *,
    sort_by: SortBy = SortBy.CREATED_AT,
    sort_order: SortOrder = SortOrder.DESC,
    limit: int = 10,
    offset: int = 0,
) -> list[Assistant]:
    where, params = _where(flt)
    # sort_by and sort_order are enum members, never client text.
    order = f"{sort_by.value} {sort_order.value.upper()}, assistant_id"
    sql = (
        f"SELECT {COLUMNS} FROM assistants WHERE {where} ORDER BY {order} "
        "LIMIT %(limit)s OFFSET %(offset)s"
    )
    cur = await conn.execute(sql.encode(), {**params, "limit": limit, "offset": offset})
    return [Assistant.from_row(row) for row in await cur.fetchall()]


async def count(conn: AsyncConnection[DictRow], flt: AssistantFilter) -> int:
    where, params = _where(flt)
    cur = await conn.execute(f"SELECT count(*) AS n FROM assistants WHERE {where}".encode(), params)
    row = await cur.fetchone()
    return int(row["n"]) if row else 0
