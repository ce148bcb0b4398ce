"""``POST /threads/prune``: the reaper's prune engine, for the caller's threads it names.

``delete`` removes a thread whole; ``keep_latest`` keeps its latest checkpoint (what the reaper's
history rule does with ``keepLast: 1``). Each thread is pruned in its own transaction under the
thread lock, and one with an unfinished run (queued, or executing) is left alone, as the reaper
leaves it: a prune never races a run.
"""

from __future__ import annotations

from uuid import UUID

import structlog
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.reaper.delta import DEFAULT_REDUCERS, Snapshotter
from threadkeeper.reaper.history import prune_history
from threadkeeper.service import runs, threads
from threadkeeper.service.db import Pool
from threadkeeper.service.threads import TtlStrategy

log = structlog.get_logger(__name__)


async def _prune_locked(
    conn: AsyncConnection[DictRow], thread_id: UUID, strategy: TtlStrategy
) -> None:
    if strategy is TtlStrategy.DELETE:
        await threads.delete_locked(conn, thread_id)
        return
    snapshotter = Snapshotter(conn, DEFAULT_REDUCERS, None)
    await prune_history(conn, str(thread_id), keep_last=1, cutoff_id=None, snapshotter=snapshotter)


async def prune(pool: Pool, owner: str, thread_ids: list[UUID], strategy: TtlStrategy) -> int:
    """Prune the owner's threads among ``thread_ids``; how many were. Other owners' ids, and
    missing ones, are passed over as if they did not exist."""
    pruned = 0
    for thread_id in dict.fromkeys(thread_ids):
        async with pool.connection() as conn, conn.transaction():
            if not await threads.lock(conn, thread_id, owner):
                continue
            if await runs.unfinished(conn, thread_id):
                log.info("prune_skipped_busy_thread", thread_id=str(thread_id))
                continue
            await _prune_locked(conn, thread_id, strategy)
        pruned += 1
        log.info("thread_pruned", thread_id=str(thread_id), strategy=strategy.value)
    return pruned
