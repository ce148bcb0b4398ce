"""The run lifecycle after a run is queued: cancel (interrupt or roll back), end a run that
executes nowhere (cancelled, or out of attempts), roll back what a run wrote, delete a thread
with its runs, and whether a thread is busy.

Routes and the run workers call these; they work on the stores (``runs``, ``events``,
``threads``) and never on the HTTP layer. Ending an attempt that executes here is the
executor's (``service.executor``), which calls ``rollback`` for a rolled-back run.
"""

from __future__ import annotations

from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.service import events, runs, threads
from threadkeeper.service.db import Pool
from threadkeeper.service.domain import (
    ACTIVE_RUN_STATUSES,
    CancelAction,
    RunEvent,
    RunStatus,
    ThreadStatus,
)


async def unfinished(conn: AsyncConnection[DictRow], thread_id: UUID) -> list[runs.UnfinishedRun]:
    """The thread's runs that have not ended, oldest first, each marked ``leased`` when it
    executes under a live lease (caller holds the thread lock)."""
    return await runs.unfinished(conn, thread_id)


async def is_busy(conn: AsyncConnection[DictRow], thread_id: UUID) -> bool:
    """Whether a run of the thread waits to be claimed or executes under a live lease."""
    return bool(await runs.active_run_ids(conn, thread_id))


async def end_idle(conn: AsyncConnection[DictRow], run: runs.Run, action: CancelAction) -> None:
    """End a cancelled run that executes nowhere (queued, or its replica died; caller holds the
    thread lock): its stream ends, and a rollback removes it with all it wrote."""
    await events.append(conn, run.run_id, [(RunEvent.END, None)])
    if action is CancelAction.ROLLBACK:
        await runs.rollback_checkpoints(conn, run.thread_id, run.run_id)
    await runs.end_idle(
        conn,
        run.run_id,
        status=RunStatus.INTERRUPTED,
        error=None,
        thread_status=ThreadStatus.IDLE,
    )
    if action is CancelAction.ROLLBACK:
        await runs.delete(conn, run.run_id)


async def give_up(conn: AsyncConnection[DictRow], run: runs.UnfinishedRun) -> None:
    """End a run whose attempts are used up (a row of ``unfinished``; caller holds the thread
    lock) with an error that says why."""
    if run.status == RunStatus.RUNNING:
        error = {
            "error": "LeaseExpired",
            "message": (
                f"gave up after {run.failures} failed attempts: the executing replica "
                f"({run.lease_holder}) stopped renewing its lease"
            ),
        }
    else:
        error = {
            "error": "AttemptsExhausted",
            "message": f"gave up after {run.failures} failed attempts",
        }
    await events.append(conn, run.run_id, [(RunEvent.ERROR, error), (RunEvent.END, None)])
    await runs.end_idle(
        conn, run.run_id, status=RunStatus.ERROR, error=error, thread_status=ThreadStatus.ERROR
    )


async def cancel(
    conn: AsyncConnection[DictRow], rows: list[runs.UnfinishedRun], action: CancelAction
) -> None:
    """Stop runs (rows of ``unfinished``; caller holds their thread lock): those executing
    nowhere end here, executing ones are told and end themselves."""
    executing = [r.run_id for r in rows if r.status == RunStatus.RUNNING and r.leased]
    for row in rows:
        if row.run_id not in executing:
            await end_idle(conn, row, action)
    if executing:
        await runs.request_cancel(conn, executing, action)


async def cancel_by_id(
    pool: Pool, run_ids: list[UUID], action: CancelAction
) -> list[runs.UnfinishedRun]:
    """Cancel runs wherever they execute, each under its thread's lock; returns those that
    were still active."""
    stopped: list[runs.UnfinishedRun] = []
    async with pool.connection() as conn:
        for run_id in run_ids:
            async with conn.transaction():
                row = await runs.get_by_id(conn, run_id)
                if row is None or row.status not in ACTIVE_RUN_STATUSES:
                    continue
                await threads.lock_any(conn, row.thread_id)
                rows = await unfinished(conn, row.thread_id)
                mine = [r for r in rows if r.run_id == run_id]
                if mine:
                    await cancel(conn, mine, action)
                    stopped.extend(mine)
    return stopped


async def rollback(pool: Pool, run: runs.Run) -> None:
    """Remove a run this attempt executed and everything it wrote; the thread is as before
    the run."""
    async with pool.connection() as conn, conn.transaction():
        await threads.lock_any(conn, run.thread_id)
        await runs.rollback_checkpoints(conn, run.thread_id, run.run_id)
        await runs.finish(
            conn,
            run_id=run.run_id,
            thread_id=run.thread_id,
            attempt=run.attempt,
            status=RunStatus.INTERRUPTED,
            thread_status=ThreadStatus.IDLE,
            spoke=False,
        )
        await runs.delete(conn, run.run_id)


async def delete_thread(conn: AsyncConnection[DictRow], thread_id: UUID, owner: str) -> bool:
    """Delete the owner's thread with its runs and checkpoints (in the caller's transaction);
    False when the owner has no such thread. Executing runs are told to stop, and deleting
    their rows fences out any write they still attempt, so nothing of the thread reappears."""
    if not await threads.lock(conn, thread_id, owner):
        return False
    await cancel(conn, await unfinished(conn, thread_id), CancelAction.INTERRUPT)
    await threads.delete_locked(conn, thread_id)
    return True
