"""The run queue's consumer: every replica claims runs it has capacity for.

Runs wait in Postgres (``pending``). A replica claims one under the thread's row lock, only if
it is the oldest unfinished run of its thread and no live lease holds the thread; a run whose
lease expired (its replica died) is claimed the same way and resumed from its last checkpoint.
Replicas learn about new work through NOTIFY and also look every ``poll_seconds``, which is how
expired leases are found. With a per-owner cap, an owner's runs beyond it wait while other
owners' runs are claimed, on every replica alike (the count is in Postgres).
"""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID

import psycopg
import structlog

from threadkeeper.service import events, lifecycle, runs, stateless
from threadkeeper.service.db import Pool
from threadkeeper.service.domain import RunStatus
from threadkeeper.service.executor import Attempt, Executor
from threadkeeper.service.notify import ANY_RUN, Hub

log = structlog.get_logger(__name__)

SWEEP_EVERY = 60.0


class Worker:
    def __init__(
        self,
        *,
        pool: Pool,
        hub: Hub,
        executor: Executor,
        capacity: int,
        lease_seconds: float,
        max_attempts: int,
        poll_seconds: float,
        event_retention_seconds: float,
        owner_cap: int = 0,
        temporary_thread_seconds: float = 60.0,
    ) -> None:
        self.pool = pool
        self.hub = hub
        self.executor = executor
        self.capacity = capacity
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self.event_retention_seconds = event_retention_seconds
        self.owner_cap = owner_cap
        self.temporary_thread_seconds = temporary_thread_seconds
        self.claiming = True
        # Slots promised to runs being claimed inside a submitting transaction.
        self.reserved = 0
        # Set when this replica was full while there may have been work for it: a slot freed
        # here then wakes the loop (other replicas' run endings do not, unless a run waits).
        self.starved = False
        executor.on_slot_freed = self._slot_freed
        self._task: asyncio.Task[None] | None = None

    @property
    def free(self) -> int:
        return self.capacity - self.executor.busy - self.reserved if self.claiming else 0

    def reserve(self) -> bool:
        """Hold a slot for a run about to be claimed where it is queued (see submit)."""
        if self.free <= 0:
            return False
        self.reserved += 1
        return True

    def release(self) -> None:
        self.reserved -= 1

    def claim_terms(self) -> runs.ClaimTerms:
        return runs.ClaimTerms(self.executor.replica, self.lease_seconds, self.owner_cap)

    def start_reserved(self, row: runs.QueuedRun) -> Attempt | None:
        """Start a run queued with ``claim_terms``; None if it was left pending (its owner had
        no room), for a worker to claim later."""
        self.release()
        if row.status != RunStatus.RUNNING:
            return None
        return self.executor.start(row, row.owner)

    async def start(self) -> None:
        if self.capacity > 0:
            self._task = asyncio.create_task(self._loop(), name="run-worker")

    def _slot_freed(self) -> None:
        # With a cap, the owner whose run ended here may have runs waiting for room.
        if (self.starved or self.owner_cap > 0) and self.free > 0:
            self.starved = False
            self.hub.wake(ANY_RUN)

    def stop_claiming(self) -> None:
        self.claiming = False

    async def stop(self, drain_seconds: float) -> None:
        self.stop_claiming()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.executor.drain(drain_seconds)

    async def try_start(self, run_id: UUID, thread_id: UUID) -> Attempt | None:
        """Claim and start this run here if this replica has room (the request's fast path)."""
        if self.free <= 0:
            return None
        row = await self._claim(run_id, thread_id)
        return self.executor.start(row, row.owner) if row is not None else None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_EVERY
        # Temporary threads are looked for at half their grace: one outlives its run by at most
        # one and a half graces while any replica is up.
        half_grace = max(self.temporary_thread_seconds / 2, self.poll_seconds)
        temporary_every = min(SWEEP_EVERY, half_grace)
        next_temporary = loop.time()
        while True:
            wakeup = self.hub.arm(ANY_RUN)
            try:
                if self.free > 0:
                    await self._claim_some()
                else:
                    self.starved = True
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_EVERY
                    await events.sweep(self.pool, self.event_retention_seconds)
                if loop.time() >= next_temporary:
                    next_temporary = loop.time() + temporary_every
                    await stateless.sweep(self.pool, self.temporary_thread_seconds)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_seconds):
                        await wakeup.wait()
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("worker_claim_failed", error=str(exc))
                await asyncio.sleep(self.poll_seconds)
            finally:
                self.hub.disarm(wakeup, ANY_RUN)

    async def _claim_some(self) -> None:
        async with self.pool.connection() as conn:
            found = await runs.candidates(
                conn, limit=max(self.free * 4, 8), owner_cap=self.owner_cap
            )
        for candidate in found:
            if self.free <= 0:
                self.starved = True
                return
            row = await self._claim(candidate.run_id, candidate.thread_id)
            if row is not None:
                self.executor.start(row, row.owner)

    async def _claim(self, run_id: UUID, thread_id: UUID) -> runs.QueuedRun | None:
        async with self.pool.connection() as conn, conn.transaction():
            if not await runs.lock_thread_or_skip(conn, thread_id):
                return None
            head = await runs.head_of_thread(conn, thread_id)
            if head is None or head.run_id != run_id:
                return None
            if head.cancel_action is not None:
                await lifecycle.end_idle(conn, head, head.cancel_action)
                return None
            if not head.due:
                return None  # after_seconds have not passed yet
            if head.failures >= self.max_attempts:
                await lifecycle.give_up(conn, head)
                log.warning("run_abandoned", run_id=str(head.run_id), failed_attempts=head.failures)
                return None
            row = await runs.claim(
                conn, run_id, self.executor.replica, self.lease_seconds, self.owner_cap
            )
            if row is not None and head.status == RunStatus.RUNNING:
                log.info(
                    "run_resuming",
                    run_id=str(run_id),
                    previous=head.lease_holder,
                    failed_attempts=row.failed_attempts,
                )
            return row
