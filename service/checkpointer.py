"""The checkpoint saver the service runs graphs with.

Two differences from the stock ``AsyncPostgresSaver``, both keeping LangGraph's table layout:

* No instance-wide ``asyncio.Lock``. The stock saver takes one around every database call even
  on a pool (langgraph#7259), so one replica would use one connection at a time. Here each call
  borrows its own pooled connection.
* Fencing. A saver built for a run attempt writes each checkpoint inside a transaction that first
  checks, with a row lock, that this attempt still holds a live lease on the run. A replica that
  lost its lease (paused, partitioned, or its run was deleted) fails that check and can never
  interleave with its successor or resurrect a deleted thread (langgraph#7206).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncCursor
from psycopg.rows import DictRow, dict_row

from service.db import Pool

# FOR SHARE: concurrent writes of one attempt pass together, while a lease takeover or a delete
# (both UPDATE/DELETE the row) waits for an in-flight write to commit, and vice versa.
CHECK_LEASE_SQL = """
SELECT 1 FROM runs
WHERE run_id = %s AND attempt = %s AND status = 'running'
  AND lease_expires_at > clock_timestamp()
FOR SHARE
"""


log = structlog.get_logger(__name__)


class LeaseLostError(RuntimeError):
    """This run attempt no longer owns its run; it must stop without writing."""


@dataclass(frozen=True)
class Fence:
    """Identifies the run attempt whose lease guards every write."""

    run_id: UUID
    attempt: int


class FencedPostgresSaver(AsyncPostgresSaver):
    """``AsyncPostgresSaver`` on a pool, without the global lock, optionally fenced."""

    def __init__(self, pool: Pool, fence: Fence | None = None) -> None:
        super().__init__(pool)
        self.pool = pool
        self.fence = fence

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await super().aput_writes(config, writes, task_id, task_path)
        # Audit trail of completed tasks: a task id saved twice would mean a node that had
        # finished ran again (the failover tests count these).
        log.debug("task_writes_saved", task_id=task_id, task_path=task_path)

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        async with self.pool.connection() as conn:
            if pipeline and self.fence is not None:
                async with (
                    conn.transaction(),
                    conn.cursor(binary=True, row_factory=dict_row) as cur,
                ):
                    await cur.execute(CHECK_LEASE_SQL, (self.fence.run_id, self.fence.attempt))
                    if await cur.fetchone() is None:
                        raise LeaseLostError(
                            f"run {self.fence.run_id} attempt {self.fence.attempt} lost its lease"
                        )
                    async with conn.pipeline():
                        yield cur
            elif pipeline:
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            else:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
