"""Runs rows for tests that need one in a given state, made with the service's own SQL."""

from __future__ import annotations

import uuid
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from service import runs, threads


async def running_run(
    conn: AsyncConnection[DictRow],
    *,
    owner: str = "alice",
    replica: str = "test-replica",
    lease_seconds: float = 30.0,
) -> tuple[UUID, UUID]:
    """A new thread and a run of it claimed by ``replica`` (attempt 1, live lease)."""
    thread_id = uuid.uuid4()
    await threads.insert(conn, thread_id=thread_id, owner=owner, metadata={})
    new = runs.NewRun(
        run_id=uuid.uuid4(),
        thread_id=thread_id,
        assistant_id="agent",
        input=None,
        kwargs={},
        metadata={},
        strategy="enqueue",
    )
    await runs.insert(conn, new, claim_for=(replica, lease_seconds))
    return thread_id, new.run_id
