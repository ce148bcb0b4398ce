"""Every replica's cron scheduler: fires the crons that are due, and deletes the threads of
stateless crons whose run has ended.

Firing a tick is one transaction: lock the due cron (replicas skip each other's locked rows),
queue its run (on a new thread for a stateless cron) under the thread's multitask rules, and
move ``next_run_date`` to the first tick after now. A replica dying midway rolls it all back, and
the tick stays due for the next look. Runs are queued ``pending``: the workers of any replica
claim them as they claim any run.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from pydantic import ValidationError

from threadkeeper.service import crons, lifecycle, runs, threads
from threadkeeper.service.crons import Cron, DueCron
from threadkeeper.service.domain import OnCompletion
from threadkeeper.service.errors import DomainError, ThreadBusy
from threadkeeper.service.schemas import RunCreate
from threadkeeper.service.services import Services
from threadkeeper.service.submit import RunRequest, make_room, new_run

log = structlog.get_logger(__name__)

# Ticks fired, and spent threads deleted, per transaction-at-a-time pass.
MAX_PER_PASS = 100


class Scheduler:
    def __init__(self, svc: Services, poll_seconds: float) -> None:
        self.svc = svc
        self.poll_seconds = poll_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="cron-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.pass_once()
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("cron_pass_failed", error=str(exc))
            except Exception:
                # Crons must keep firing on this replica whatever one pass ran into.
                log.exception("cron_pass_failed")
            await asyncio.sleep(self.poll_seconds)

    async def pass_once(self) -> int:
        """Fire what is due and clean up spent threads; the number of ticks fired."""
        fired = 0
        while fired < MAX_PER_PASS and await self._fire_one():
            fired += 1
        await self._delete_spent()
        return fired

    async def _fire_one(self) -> bool:
        async with self.svc.pool.connection() as conn, conn.transaction():
            due = await crons.lock_due(conn)
            if due is None:
                return False
            bound = structlog.contextvars.bound_contextvars(cron_id=str(due.cron_id))
            with bound:
                run_id = await self._queue(conn, due)
                upcoming = await crons.advance(conn, due)
                log.info(
                    "cron_fired",
                    tick=due.next_run_date.isoformat(),
                    run_id=str(run_id) if run_id else None,
                    next_run_date=upcoming.isoformat() if upcoming else None,
                )
            return True

    async def _queue(self, conn: AsyncConnection[DictRow], due: DueCron) -> uuid.UUID | None:
        """Queue the tick's run; None when it cannot run (the tick is spent all the same)."""
        owner = due.owner
        thread_id = due.thread_id or uuid.uuid4()
        try:
            body = RunCreate.model_validate(_run_body(due))
            new = await new_run(self.svc, RunRequest(owner, thread_id, body))
        except (ValidationError, DomainError) as exc:
            log.warning("cron_tick_refused", error=str(exc))
            return None
        if due.thread_id is None:
            await _new_thread(conn, due, thread_id)
        elif not await threads.lock(conn, thread_id, owner):
            return None
        try:
            await make_room(conn, new)
        except ThreadBusy:
            log.info("cron_tick_skipped", thread_id=str(thread_id), reason="thread busy")
            return None
        return (await runs.insert(conn, new)).run_id

    async def _delete_spent(self) -> None:
        async with self.svc.pool.connection() as conn:
            spent = await crons.spent_threads(conn, MAX_PER_PASS)
        for thread in spent:
            async with self.svc.pool.connection() as conn, conn.transaction():
                deleted = await lifecycle.delete_thread(conn, thread.thread_id, thread.owner)
            if deleted:
                log.info("cron_thread_deleted", thread_id=str(thread.thread_id))


def _run_body(due: Cron) -> dict[str, Any]:
    payload = dict(due.payload)
    payload["metadata"] = {**(payload.get("metadata") or {}), "cron_id": str(due.cron_id)}
    return payload


async def _new_thread(conn: AsyncConnection[DictRow], due: Cron, thread_id: uuid.UUID) -> None:
    """A stateless cron's thread for one run, locked; listed for deletion after it if asked."""
    await threads.insert(
        conn, thread_id=thread_id, owner=due.owner, metadata={"cron_id": str(due.cron_id)}
    )
    await threads.lock(conn, thread_id, due.owner)
    if due.on_run_completed == OnCompletion.DELETE:
        await crons.remember_thread(conn, thread_id, due.cron_id)
