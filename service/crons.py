"""Crons: stored schedules that queue a run at each tick, on a thread or on a new one each time.

A schedule is a cron expression (five fields, or six with seconds last) read by ``croniter``,
in an IANA timezone (UTC when none). ``next_run_date`` is the one tick a cron waits for: firing
it and moving it on happen in one transaction, so a tick fires once whichever replica fires it,
and the next tick is the first after the moment of firing, so ticks missed while no replica ran
fire once, not once each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Self
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from threadkeeper.service.domain import OnCompletion, SortOrder
from threadkeeper.service.lease import unfinished_sql

UTC = ZoneInfo("UTC")


class SortBy(StrEnum):
    CRON_ID = "cron_id"
    ASSISTANT_ID = "assistant_id"
    THREAD_ID = "thread_id"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    NEXT_RUN_DATE = "next_run_date"
    END_TIME = "end_time"


class BadSchedule(ValueError):
    """A schedule or timezone no cron can keep."""


def zone(name: str | None) -> ZoneInfo:
    if name is None:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadSchedule(f"timezone {name!r} is not an IANA timezone") from exc


def check_schedule(schedule: str) -> str:
    if not croniter.is_valid(schedule):
        raise BadSchedule(f"schedule {schedule!r} is not a cron expression")
    return schedule


def next_tick(
    schedule: str, timezone: str | None, after: datetime, end_time: datetime | None
) -> datetime | None:
    """The first tick strictly after ``after``; None when it would fall after ``end_time``."""
    found: datetime = croniter(schedule, after.astimezone(zone(timezone))).get_next(datetime)
    if end_time is not None and found > end_time:
        return None
    return found


@dataclass(frozen=True)
class NewCron:
    cron_id: UUID
    owner: str
    thread_id: UUID | None
    assistant_id: str
    schedule: str
    timezone: str | None
    end_time: datetime | None
    payload: dict[str, Any]
    metadata: dict[str, Any]
    on_run_completed: OnCompletion | None
    enabled: bool


@dataclass(frozen=True)
class CronFilter:
    owner: str
    assistant_id: str | None = None
    thread_id: UUID | None = None
    enabled: bool | None = None
    metadata: dict[str, Any] | None = None


COLUMNS = """cron_id, owner, assistant_id, thread_id, on_run_completed, end_time, schedule,
    timezone, created_at, updated_at, payload, next_run_date, metadata, enabled"""


@dataclass(frozen=True)
class Cron:
    """A cron row (``COLUMNS``)."""

    cron_id: UUID
    owner: str
    assistant_id: str
    thread_id: UUID | None  # None: stateless, a new thread each tick
    on_run_completed: OnCompletion | None
    end_time: datetime | None
    schedule: str
    timezone: str | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any]
    next_run_date: datetime | None  # None: past its end time, it fires no more
    metadata: dict[str, Any]
    enabled: bool

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Self:
        """The record of a row with the record's columns (others, such as ``now``, are left)."""
        values = {f.name: row[f.name] for f in fields(cls)}
        completed = row["on_run_completed"]
        values["on_run_completed"] = None if completed is None else OnCompletion(completed)
        return cls(**values)


@dataclass(frozen=True)
class DueCron(Cron):
    """A cron whose tick is due, locked for firing, with Postgres's time of the look."""

    next_run_date: datetime  # the tick being fired
    now: datetime


@dataclass(frozen=True)
class SpentThread:
    """A stateless cron's thread whose run has ended, to delete."""

    thread_id: UUID
    owner: str

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Self:
        return cls(row["thread_id"], row["owner"])


NOW_SQL = "SELECT now() AS now"
COUNT_SQL = sql.SQL("SELECT count(*) AS n FROM crons WHERE {}")
INSERT_SQL = f"""
INSERT INTO crons (cron_id, owner, thread_id, assistant_id, schedule, timezone, end_time,
                   payload, metadata, on_run_completed, enabled, next_run_date)
VALUES (%(cron_id)s, %(owner)s, %(thread_id)s, %(assistant_id)s, %(schedule)s, %(timezone)s,
        %(end_time)s, %(payload)s, %(metadata)s, %(on_run_completed)s, %(enabled)s,
        %(next_run_date)s)
RETURNING {COLUMNS}
"""
GET_SQL = f"SELECT {COLUMNS} FROM crons WHERE cron_id = %s AND owner = %s"
LOCK_SQL = f"SELECT {COLUMNS} FROM crons WHERE cron_id = %s AND owner = %s FOR UPDATE"
UPDATE_SQL = f"""
UPDATE crons SET schedule = %(schedule)s, timezone = %(timezone)s, end_time = %(end_time)s,
    payload = %(payload)s, metadata = %(metadata)s, on_run_completed = %(on_run_completed)s,
    enabled = %(enabled)s, next_run_date = %(next_run_date)s, updated_at = now()
WHERE cron_id = %(cron_id)s
RETURNING {COLUMNS}
"""
DELETE_SQL = "DELETE FROM crons WHERE cron_id = %s AND owner = %s RETURNING cron_id"
# One due cron, locked; another replica firing one skips it rather than waiting. The lock
# re-reads the row, so a tick another replica fired meanwhile is no longer due.
DUE_SQL = f"""
SELECT {COLUMNS}, now() AS now FROM crons
WHERE enabled AND next_run_date <= now()
ORDER BY next_run_date
LIMIT 1
FOR UPDATE SKIP LOCKED
"""
ADVANCE_SQL = """
UPDATE crons SET next_run_date = %(next_run_date)s WHERE cron_id = %(cron_id)s
"""
REMEMBER_THREAD_SQL = "INSERT INTO cron_threads (thread_id, cron_id) VALUES (%s, %s)"
# Threads of ``delete`` crons whose run has ended (the run was queued with the thread).
SPENT_THREADS_SQL = f"""
SELECT ct.thread_id, t.owner FROM cron_threads ct JOIN threads t USING (thread_id)
WHERE NOT EXISTS (
    SELECT 1 FROM runs r WHERE r.thread_id = ct.thread_id AND {unfinished_sql("r")}
)
LIMIT %s
"""


def _params(new: NewCron, next_run_date: datetime | None) -> dict[str, Any]:
    return {
        "cron_id": new.cron_id,
        "owner": new.owner,
        "thread_id": new.thread_id,
        "assistant_id": new.assistant_id,
        "schedule": new.schedule,
        "timezone": new.timezone,
        "end_time": new.end_time,
        "payload": Jsonb(new.payload),
        "metadata": Jsonb(new.metadata),
        "on_run_completed": new.on_run_completed,
        "enabled": new.enabled,
        "next_run_date": next_run_date,
    }


async def db_now(conn: AsyncConnection[DictRow]) -> datetime:
    cur = await conn.execute(NOW_SQL)
    row = await cur.fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


def _maybe(row: Mapping[str, Any] | None) -> Cron | None:
    return None if row is None else Cron.of(row)


async def _store(conn: AsyncConnection[DictRow], query: str, cron: NewCron) -> Cron:
    """Write the cron with its next tick after now."""
    upcoming = next_tick(cron.schedule, cron.timezone, await db_now(conn), cron.end_time)
    cur = await conn.execute(query, _params(cron, upcoming))
    row = await cur.fetchone()
    assert row is not None
    return Cron.of(row)


async def insert(conn: AsyncConnection[DictRow], new: NewCron) -> Cron:
    return await _store(conn, INSERT_SQL, new)


async def get(conn: AsyncConnection[DictRow], cron_id: UUID, owner: str) -> Cron | None:
    cur = await conn.execute(GET_SQL, (cron_id, owner))
    return _maybe(await cur.fetchone())


async def lock(conn: AsyncConnection[DictRow], cron_id: UUID, owner: str) -> Cron | None:
    cur = await conn.execute(LOCK_SQL, (cron_id, owner))
    return _maybe(await cur.fetchone())


async def replace(conn: AsyncConnection[DictRow], changed: NewCron) -> Cron:
    """Store the cron's new contents (the caller holds its lock); its next tick follows them."""
    return await _store(conn, UPDATE_SQL, changed)


async def delete(conn: AsyncConnection[DictRow], cron_id: UUID, owner: str) -> bool:
    cur = await conn.execute(DELETE_SQL, (cron_id, owner))
    return await cur.fetchone() is not None


def _where(flt: CronFilter) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = [sql.SQL("owner = %s")]
    args: list[Any] = [flt.owner]
    if flt.assistant_id is not None:
        clauses.append(sql.SQL("assistant_id = %s"))
        args.append(flt.assistant_id)
    if flt.thread_id is not None:
        clauses.append(sql.SQL("thread_id = %s"))
        args.append(flt.thread_id)
    if flt.enabled is not None:
        clauses.append(sql.SQL("enabled = %s"))
        args.append(flt.enabled)
    if flt.metadata:
        clauses.append(sql.SQL("metadata @> %s"))
        args.append(Jsonb(flt.metadata))
    return sql.SQL(" AND ").join(clauses), args


async def search(
    conn: AsyncConnection[DictRow],
    flt: CronFilter,
    *,
    sort_by: SortBy,
    sort_order: SortOrder,
    limit: int,
    offset: int,
) -> list[Cron]:
    where, args = _where(flt)
    order = sql.SQL(sort_order.sql)
    query = sql.SQL(
        "SELECT {columns} FROM crons WHERE {where} ORDER BY {sort} {order}, cron_id "
        "LIMIT %s OFFSET %s"
    ).format(
        columns=sql.SQL(COLUMNS),
        where=where,
        sort=sql.Identifier(sort_by.value),
        order=order,
    )
    cur = await conn.execute(query, [*args, limit, offset])
    return [Cron.of(row) for row in await cur.fetchall()]


async def count(conn: AsyncConnection[DictRow], flt: CronFilter) -> int:
    where, args = _where(flt)
    cur = await conn.execute(COUNT_SQL.format(where), args)
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def lock_due(conn: AsyncConnection[DictRow]) -> DueCron | None:
    """The most overdue cron, locked for firing (in the caller's transaction); None: none due."""
    cur = await conn.execute(DUE_SQL)
    row = await cur.fetchone()
    return None if row is None else DueCron.of(row)


async def advance(conn: AsyncConnection[DictRow], due: DueCron) -> datetime | None:
    """Move a fired cron to its first tick after now (Postgres's now): missed ticks are not
    made up one by one. None: the cron has reached its end time."""
    upcoming = next_tick(due.schedule, due.timezone, due.now, due.end_time)
    await conn.execute(ADVANCE_SQL, {"cron_id": due.cron_id, "next_run_date": upcoming})
    return upcoming


async def remember_thread(conn: AsyncConnection[DictRow], thread_id: UUID, cron_id: UUID) -> None:
    await conn.execute(REMEMBER_THREAD_SQL, (thread_id, cron_id))


async def spent_threads(conn: AsyncConnection[DictRow], limit: int) -> list[SpentThread]:
    cur = await conn.execute(SPENT_THREADS_SQL, (limit,))
    return [SpentThread.of(row) for row in await cur.fetchall()]
