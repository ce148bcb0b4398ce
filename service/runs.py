"""The ``runs`` table: every run of every thread, with its lease.

A run is executing only while its lease is live; the holder renews it. Claiming takes the
thread's row lock, so at most one run of a thread executes at any moment across replicas.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

ACTIVE_STATUSES = ("pending", "running")

COLUMNS_SQL = """
run_id, thread_id, assistant_id, status, attempt, lease_holder, lease_expires_at,
input, kwargs, metadata, multitask_strategy, error, created_at, updated_at, started_at, ended_at
"""

# Runs of the thread that still own it: waiting to start, or running under a live lease.
ACTIVE_SQL = """
SELECT run_id FROM runs
WHERE thread_id = %s
  AND (status = 'pending' OR (status = 'running' AND lease_expires_at > now()))
"""

# A running run whose lease ran out lost its replica; record why before anything else starts.
EXPIRE_STALE_SQL = """
UPDATE runs SET status = 'error', updated_at = now(), ended_at = now(), lease_holder = NULL,
    error = jsonb_build_object('error', 'LeaseExpired',
        'message', 'the replica ' || coalesce(lease_holder, '?') || ' stopped renewing its lease')
WHERE thread_id = %s AND status = 'running' AND lease_expires_at <= now()
"""

INSERT_RUNNING_SQL = f"""
INSERT INTO runs (run_id, thread_id, assistant_id, status, attempt, lease_holder,
                  lease_expires_at, input, kwargs, metadata, multitask_strategy, started_at)
VALUES (%(run_id)s, %(thread_id)s, %(assistant_id)s, 'running', 1, %(replica)s,
        now() + make_interval(secs => %(lease)s), %(input)s, %(kwargs)s, %(metadata)s,
        %(strategy)s, now())
RETURNING {COLUMNS_SQL}
"""

HEARTBEAT_SQL = """
UPDATE runs SET lease_expires_at = now() + make_interval(secs => %s), updated_at = now()
WHERE run_id = %s AND attempt = %s AND status = 'running' AND lease_expires_at > now()
RETURNING run_id
"""

FINISH_SQL = f"""
UPDATE runs SET status = %(status)s, error = %(error)s, updated_at = now(), ended_at = now(),
    lease_expires_at = NULL
WHERE run_id = %(run_id)s AND attempt = %(attempt)s AND status = 'running'
RETURNING {COLUMNS_SQL}
"""

FINISH_THREAD_SQL = """
UPDATE threads SET status = %(status)s, updated_at = now(),
    last_message_at = CASE WHEN %(spoke)s THEN now() ELSE last_message_at END
WHERE thread_id = %(thread_id)s
"""

MARK_THREAD_BUSY_SQL = "UPDATE threads SET status = 'busy', updated_at = now() WHERE thread_id = %s"

GET_SQL = f"""
SELECT {COLUMNS_SQL} FROM runs r
WHERE r.run_id = %s AND r.thread_id = %s
  AND EXISTS (SELECT 1 FROM threads t WHERE t.thread_id = r.thread_id AND t.owner = %s)
"""

LIST_SQL = f"""
SELECT {COLUMNS_SQL} FROM runs r
WHERE r.thread_id = %s AND (%s::text IS NULL OR r.status = %s)
ORDER BY r.created_at DESC, r.run_id DESC
LIMIT %s OFFSET %s
"""


async def active_run_ids(conn: AsyncConnection[DictRow], thread_id: UUID) -> list[UUID]:
    cur = await conn.execute(ACTIVE_SQL, (thread_id,))
    return [row["run_id"] for row in await cur.fetchall()]


async def expire_stale(conn: AsyncConnection[DictRow], thread_id: UUID) -> None:
    await conn.execute(EXPIRE_STALE_SQL, (thread_id,))


async def insert_running(
    conn: AsyncConnection[DictRow],
    *,
    run_id: UUID,
    thread_id: UUID,
    assistant_id: str,
    replica: str,
    lease_seconds: float,
    input: Any,
    kwargs: dict[str, Any],
    metadata: dict[str, Any],
    strategy: str,
) -> DictRow:
    """Insert a run already claimed by ``replica`` (attempt 1) and mark the thread busy."""
    cur = await conn.execute(
        INSERT_RUNNING_SQL,
        {
            "run_id": run_id,
            "thread_id": thread_id,
            "assistant_id": assistant_id,
            "replica": replica,
            "lease": lease_seconds,
            "input": Jsonb(input),
            "kwargs": Jsonb(kwargs),
            "metadata": Jsonb(metadata),
            "strategy": strategy,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    await conn.execute(MARK_THREAD_BUSY_SQL, (thread_id,))
    return row


async def heartbeat(
    conn: AsyncConnection[DictRow], run_id: UUID, attempt: int, lease_seconds: float
) -> bool:
    """Renew the lease; False when it was already lost (expired, taken over or deleted)."""
    cur = await conn.execute(HEARTBEAT_SQL, (lease_seconds, run_id, attempt))
    return await cur.fetchone() is not None


async def finish(
    conn: AsyncConnection[DictRow],
    *,
    run_id: UUID,
    attempt: int,
    thread_id: UUID,
    status: str,
    thread_status: str,
    error: dict[str, Any] | None = None,
    spoke: bool = True,
) -> DictRow | None:
    """Record the outcome of an attempt and the thread's new status, in one transaction.

    None when the attempt no longer owned the run (nothing is changed then).
    """
    async with conn.transaction():
        cur = await conn.execute(
            FINISH_SQL,
            {
                "status": status,
                "error": Jsonb(error) if error else None,
                "run_id": run_id,
                "attempt": attempt,
            },
        )
        row = await cur.fetchone()
        if row is not None:
            await conn.execute(
                FINISH_THREAD_SQL,
                {"status": thread_status, "spoke": spoke, "thread_id": thread_id},
            )
        return row


async def get(
    conn: AsyncConnection[DictRow], thread_id: UUID, run_id: UUID, owner: str
) -> DictRow | None:
    cur = await conn.execute(GET_SQL, (run_id, thread_id, owner))
    return await cur.fetchone()


async def list_for_thread(
    conn: AsyncConnection[DictRow],
    thread_id: UUID,
    *,
    status: str | None,
    limit: int,
    offset: int,
) -> list[DictRow]:
    cur = await conn.execute(LIST_SQL, (thread_id, status, status, limit, offset))
    return await cur.fetchall()
