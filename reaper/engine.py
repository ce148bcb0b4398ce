"""One prune run of a RetentionPolicy against one database.

A run holds a session advisory lock (one pruner per database), then works thread by thread, each
in its own short transaction (``reaper.guard``): threads whose own ttl ran out, archived
threads, idle threads, history depth, orphans, in that order, until the policy's ``batchSize``
threads have been changed or ``maxDuration`` has passed. A dry run goes through exactly the same
statements and rolls each thread's transaction back, so what it reports is what a real run would
delete.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

import psycopg
import structlog
from langgraph.checkpoint.serde.base import SerializerProtocol
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.reaper import candidates, deletion, guard, history, store
from threadkeeper.reaper.delta import DEFAULT_REDUCERS, Reducer, Snapshotter
from threadkeeper.reaper.ids import cutoff_id
from threadkeeper.reaper.policy import RetentionPolicy
from threadkeeper.reaper.summary import (
    Outcome,
    PruneSummary,
    Reason,
    ResumeCursor,
    RowCounts,
    Tally,
    ThreadsDeleted,
)

log = structlog.get_logger(__name__)

# Fixed for every threadkeeper reaper: "tkreaper" in ASCII. Advisory locks are per database.
ADVISORY_LOCK_KEY = 0x746B_7265_6170_6572
TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(%s) AS locked"
UNLOCK_SQL = "SELECT pg_advisory_unlock(%s)"
NOW_SQL = "SELECT now() AS now"
# The caller's connection gets its own statement_timeout back afterwards.
GET_SESSION_TIMEOUT_SQL = "SELECT current_setting('statement_timeout') AS value"
SET_SESSION_TIMEOUT_SQL = "SELECT set_config('statement_timeout', %s, false)"

T = TypeVar("T")

# Errors every other thread would hit too: the role may not read or delete, or the database has
# no (or not threadkeeper's) tables. They end the run at once, reported as its failure, instead
# of failing each thread in turn.
FATAL_ERRORS: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
)
# When an age limit reaches back further than a datetime can: nothing is that old.
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _fatal_message(exc: psycopg.Error) -> str:
    detail = str(exc).strip().splitlines()[0]
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (
            f"permission denied: {detail}; the reaper's database role needs SELECT, UPDATE "
            "and DELETE on threads and runs, SELECT and DELETE on the checkpoint tables and "
            "INSERT on checkpoint_blobs"
        )
    return f"not a threadkeeper database: {detail}; run the service's migrations first"


@dataclass(frozen=True)
class Cutoffs:
    """Every age limit of the policy, resolved against one clock reading."""

    now: datetime
    idle_before: datetime | None
    archived_before: datetime | None
    checkpoint_id_before: str | None
    orphan_id_before: str | None
    store_idle_before: datetime | None = None

    @classmethod
    def of(cls, policy: RetentionPolicy, now: datetime) -> Cutoffs:
        spec = policy.spec

        def before(delta: timedelta | None) -> datetime | None:
            if delta is None:
                return None
            try:
                return now - delta
            except OverflowError:
                return _EARLIEST

        checkpoint_age = spec.checkpoints.max_age_delta if spec.checkpoints else None
        checkpoint_moment = before(checkpoint_age)
        orphan_moment = before(spec.orphans.older_than_delta) if spec.orphans else None
        return cls(
            now=now,
            idle_before=before(spec.threads.max_idle_delta) if spec.threads else None,
            archived_before=before(spec.threads.archived_for_delta) if spec.threads else None,
            checkpoint_id_before=cutoff_id(checkpoint_moment) if checkpoint_moment else None,
            orphan_id_before=cutoff_id(orphan_moment) if orphan_moment else None,
            store_idle_before=before(spec.store.max_idle_delta) if spec.store else None,
        )


class _BudgetSpent(Exception):
    """The run reached batchSize or maxDuration."""


class _Run:
    def __init__(
        self,
        conn: AsyncConnection[DictRow],
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        cutoffs: Cutoffs,
        resume: ResumeCursor,
        reducers: Mapping[str, Reducer],
        serde: SerializerProtocol | None,
    ) -> None:
        self.conn = conn
        self.policy = policy
        self.limits = policy.spec.limits
        self.statement_timeout = self.limits.statement_timeout_delta
        self.dry_run = dry_run
        self.cutoffs = cutoffs
        self.resume = resume
        self.snapshotter = Snapshotter(conn, reducers, serde)
        self.tally = Tally()
        self.started = time.monotonic()
        self.deadline = self.started + self.limits.max_duration_delta.total_seconds()
        self.stopped_by: str | None = None
        self.pending_due = 0
        # Threads this run deleted. A dry run must not prune their history afterwards (they
        # still exist, rolled back), or it would report more than a real run deletes.
        self.deleted: set[str] = set()

    # -- budget

    def _check_budget(self) -> None:
        if self.tally.acted_on >= self.limits.batch_size:
            self.stopped_by = f"batch size {self.limits.batch_size} reached"
            raise _BudgetSpent
        if time.monotonic() >= self.deadline:
            self.stopped_by = f"max duration {self.limits.max_duration} reached"
            raise _BudgetSpent

    # -- one thread

    async def _in_transaction(
        self,
        subject: str,
        work: Callable[[AsyncConnection[DictRow]], Awaitable[RowCounts | None]],
    ) -> RowCounts | None:
        """Run ``work`` in the thread's transaction; None when skipped, failed or not due."""
        try:
            async with guard.thread_transaction(
                self.conn,
                lock_timeout=self.limits.lock_timeout_delta,
                statement_timeout=self.limits.statement_timeout_delta,
                rollback=self.dry_run,
            ) as conn:
                return await work(conn)
        except guard.SkipThread as skip:
            self.tally.skipped.add(subject)
            log.info("thread_skipped", thread_id=subject, reason=skip.reason.value)
        except psycopg.OperationalError:
            raise
        except FATAL_ERRORS:
            raise
        except Exception:
            # One unreadable thread must not stop the others; the run reports Failed.
            self.tally.failed.add(subject)
            log.exception("thread_failed", thread_id=subject)
        return None

    def _lock_params(self, thread_id: UUID, reason: Reason) -> dict[str, object]:
        """What the reason's lock statement re-checks, as the candidate query saw it."""
        if reason is Reason.TTL:
            strategy = candidates.TtlStrategy.DELETE.value
            return {"thread_id": thread_id, "before": self.cutoffs.now, "strategy": strategy}
        before = self.cutoffs.idle_before if reason is Reason.IDLE else self.cutoffs.archived_before
        return {"thread_id": thread_id, "before": before}

    async def _delete_thread(self, thread_id: UUID, reason: Reason, lock_sql: str) -> None:
        params = self._lock_params(thread_id, reason)

        async def work(conn: AsyncConnection[DictRow]) -> RowCounts | None:
            if not await guard.lock_thread(conn, lock_sql, params):
                return None  # spoke, got unarchived or was deleted since it was listed
            await guard.refuse_live_runs(conn, thread_id)
            return await deletion.delete_thread(conn, thread_id)

        counts = await self._in_transaction(str(thread_id), work)
        if counts is not None and counts.threads:
            self.tally.rows.add(counts)
            self.tally.deleted_by_reason[reason] += 1
            self.deleted.add(str(thread_id))
            log.info("thread_deleted", thread_id=str(thread_id), reason=reason.value)

    async def _prune_history(self, thread_id: str) -> None:
        rules = self.policy.spec.checkpoints
        assert rules is not None

        async def work(conn: AsyncConnection[DictRow]) -> RowCounts | None:
            as_uuid = UUID(thread_id)
            if not await guard.lock_thread(conn, candidates.LOCK_ANY_SQL, {"thread_id": as_uuid}):
                return None
            await guard.refuse_live_runs(conn, as_uuid)
            await guard.fence_stale_runs(conn, as_uuid)
            return await history.prune_history(
                conn,
                thread_id,
                keep_last=rules.keep_last,
                cutoff_id=self.cutoffs.checkpoint_id_before,
                snapshotter=self.snapshotter,
            )

        counts = await self._in_transaction(thread_id, work)
        if counts is not None and counts.any_deleted:
            self.tally.rows.add(counts)
            self.tally.pruned += 1
            log.info(
                "thread_pruned",
                thread_id=thread_id,
                checkpoints=counts.checkpoints,
                snapshots=counts.snapshots,
            )

    async def _prune_expired(self, thread_id: UUID) -> None:
        """A thread whose ``keep_latest`` ttl ran out keeps its latest checkpoint only, and its
        ttl starts again."""
        params = {
            "thread_id": thread_id,
            "before": self.cutoffs.now,
            "strategy": candidates.TtlStrategy.KEEP_LATEST.value,
        }

        async def work(conn: AsyncConnection[DictRow]) -> RowCounts | None:
            if not await guard.lock_thread(conn, candidates.LOCK_EXPIRED_SQL, params):
                return None
            await guard.refuse_live_runs(conn, thread_id)
            await guard.fence_stale_runs(conn, thread_id)
            counts = await history.prune_history(
                conn, str(thread_id), keep_last=1, cutoff_id=None, snapshotter=self.snapshotter
            )
            await conn.execute(candidates.REARM_TTL_SQL, (thread_id,))
            return counts

        counts = await self._in_transaction(str(thread_id), work)
        if counts is not None and counts.any_deleted:
            self.tally.rows.add(counts)
            self.tally.pruned += 1
            log.info("thread_pruned", thread_id=str(thread_id), reason=Reason.TTL.value)

    async def _delete_orphan(self, thread_id: str) -> None:
        cutoff = self.cutoffs.orphan_id_before
        assert cutoff is not None

        async def work(conn: AsyncConnection[DictRow]) -> RowCounts | None:
            return await deletion.delete_orphan(
                conn, thread_id, candidates.as_uuid(thread_id), cutoff
            )

        counts = await self._in_transaction(thread_id, work)
        if counts is not None and counts.any_deleted:
            self.tally.rows.add(counts)
            self.tally.deleted_by_reason[Reason.ORPHAN] += 1
            log.info("orphan_deleted", thread_id=thread_id)

    # -- the rules

    async def _each(self, source: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        async with aclosing(source) as items:
            async for item in items:
                self._check_budget()
                yield item

    async def expire(self) -> None:
        """Threads whose own ttl ran out: with ``delete`` they go whole, with ``keep_latest``
        they keep their latest state. Every policy applies this rule: the thread asked."""
        delete = candidates.TtlStrategy.DELETE.value
        source = candidates.expired_threads(
            self.conn, self.cutoffs.now, delete, self.limits.batch_size
        )
        async for thread_id in self._each(source):
            await self._delete_thread(thread_id, Reason.TTL, candidates.LOCK_EXPIRED_SQL)
        keep_latest = candidates.TtlStrategy.KEEP_LATEST.value
        source = candidates.expired_threads(
            self.conn, self.cutoffs.now, keep_latest, self.limits.batch_size
        )
        async for thread_id in self._each(source):
            if str(thread_id) not in self.deleted:
                await self._prune_expired(thread_id)

    async def delete_archived(self) -> None:
        if self.cutoffs.archived_before is None:
            return
        source = candidates.archived_threads(
            self.conn, self.cutoffs.archived_before, self.limits.batch_size
        )
        async for thread_id in self._each(source):
            await self._delete_thread(thread_id, Reason.ARCHIVED, candidates.LOCK_ARCHIVED_SQL)

    async def delete_idle(self) -> None:
        if self.cutoffs.idle_before is None:
            return
        source = candidates.idle_threads(
            self.conn, self.cutoffs.idle_before, self.limits.batch_size
        )
        async for thread_id in self._each(source):
            await self._delete_thread(thread_id, Reason.IDLE, candidates.LOCK_IDLE_SQL)

    async def prune_histories(self) -> None:
        rules = self.policy.spec.checkpoints
        if rules is None:
            return
        pages = candidates.history_pages(
            self.conn,
            after=self.resume.history_after,
            page=self.limits.batch_size,
            keep_last=rules.keep_last,
            cutoff_id=self.cutoffs.checkpoint_id_before,
        )
        async with aclosing(pages) as sweep:
            async for page in sweep:
                due = [t for t in page.due if t not in self.deleted]
                for index, thread_id in enumerate(due):
                    try:
                        self._check_budget()
                    except _BudgetSpent:
                        self.pending_due += len(due) - index
                        raise
                    await self._prune_history(thread_id)
                    self.resume = self.resume.model_copy(update={"history_after": thread_id})
                self.resume = self.resume.model_copy(update={"history_after": page.last})
        self.resume = self.resume.model_copy(update={"history_after": None})

    async def delete_orphans(self) -> None:
        cutoff = self.cutoffs.orphan_id_before
        if cutoff is None:
            return
        pages = candidates.orphan_pages(
            self.conn,
            after=self.resume.orphans_after,
            page=self.limits.batch_size,
            cutoff_id=cutoff,
        )
        async with aclosing(pages) as sweep:
            async for page in sweep:
                for index, thread_id in enumerate(page.due):
                    try:
                        self._check_budget()
                    except _BudgetSpent:
                        self.pending_due += len(page.due) - index
                        raise
                    await self._delete_orphan(thread_id)
                    self.resume = self.resume.model_copy(update={"orphans_after": thread_id})
                self.resume = self.resume.model_copy(update={"orphans_after": page.last})
        self.resume = self.resume.model_copy(update={"orphans_after": None})

    async def sweep_store(self) -> None:
        """Long-term memory: expired items, then idle ones, then each namespace's excess."""
        rules = self.policy.spec.store
        if rules is None or not await store.has_store(self.conn):
            return
        if rules.sweep_expired:
            await self._sweep_expired()
        if self.cutoffs.store_idle_before is not None:
            await self._sweep_idle(self.cutoffs.store_idle_before)
        if rules.max_items_per_namespace is not None:
            await self._trim_namespaces(rules.max_items_per_namespace)

    async def _sweep_expired(self) -> None:
        while True:
            self._check_budget()
            swept = await store.sweep_expired(
                self.conn, batch=self.limits.batch_size, dry_run=self.dry_run
            )
            self.tally.store_expired += swept
            if swept < self.limits.batch_size or self.dry_run:
                return

    async def _sweep_idle(self, cutoff: datetime) -> None:
        # Page by key through the whole table: a dry run counts them all, a real run deletes
        # page by page (a page's deletes do not move the next page's start).
        after: tuple[str, str] | None = store.IDLE_START
        while after is not None:
            self._check_budget()
            page = await store.idle_page(
                self.conn,
                after=after,
                page=self.limits.batch_size,
                cutoff=cutoff,
                dry_run=self.dry_run,
            )
            self.tally.store_idle += page.count
            after = page.after

    async def _trim_namespaces(self, keep: int) -> None:
        over = await store.over_allowance(self.conn, keep=keep)
        if self.dry_run:
            self.tally.store_excess += sum(over.values())
            return
        for prefix, excess in over.items():
            while excess > 0:
                self._check_budget()
                batch = min(excess, self.limits.batch_size)
                trimmed = await store.trim_namespace(self.conn, prefix, keep=keep, batch=batch)
                self.tally.store_excess += trimmed
                excess -= trimmed
                if trimmed < batch:
                    # Rows a writer holds or has just rewritten: the next run looks again.
                    break

    async def execute(self) -> None:
        try:
            await self.expire()
            await self.sweep_store()
            await self.delete_archived()
            await self.delete_idle()
            await self.prune_histories()
            await self.delete_orphans()
        except _BudgetSpent:
            pass

    async def backlog(self) -> int:
        remaining = await candidates.deletion_backlog(
            self.conn, self.cutoffs.idle_before, self.cutoffs.archived_before, self.cutoffs.now
        )
        if self.dry_run:
            # Nothing was deleted, so the ones this run would have deleted still count.
            by_reason = self.tally.deleted_by_reason
            remaining -= by_reason[Reason.IDLE] + by_reason[Reason.ARCHIVED] + by_reason[Reason.TTL]
        return max(remaining, 0) + self.pending_due


@dataclass(frozen=True)
class _Start:
    dry_run: bool
    at: datetime
    monotonic: float


def _summary(
    policy: RetentionPolicy,
    start: _Start,
    *,
    outcome: Outcome,
    message: str,
    tally: Tally | None = None,
    backlog: int = 0,
    resume: ResumeCursor | None = None,
) -> PruneSummary:
    tally = tally or Tally()
    return PruneSummary(
        policy=policy.metadata.name,
        namespace=policy.metadata.namespace,
        dry_run=start.dry_run,
        outcome=outcome,
        message=message,
        started_at=start.at,
        duration_seconds=round(time.monotonic() - start.monotonic, 3),
        threads_deleted=ThreadsDeleted(
            idle=tally.deleted_by_reason[Reason.IDLE],
            archived=tally.deleted_by_reason[Reason.ARCHIVED],
            orphan=tally.deleted_by_reason[Reason.ORPHAN],
            ttl=tally.deleted_by_reason[Reason.TTL],
        ),
        threads_pruned=tally.pruned,
        threads_skipped=len(tally.skipped),
        threads_failed=len(tally.failed),
        checkpoints_deleted=tally.rows.checkpoints,
        blobs_deleted=tally.rows.blobs,
        writes_deleted=tally.rows.writes,
        runs_deleted=tally.rows.runs,
        snapshots_written=tally.rows.snapshots,
        store_expired_items_deleted=tally.store_expired,
        store_idle_items_deleted=tally.store_idle,
        store_excess_items_deleted=tally.store_excess,
        backlog=backlog,
        resume=resume or ResumeCursor(),
    )


def _message(run: _Run) -> str:
    tally = run.tally
    verb = "would delete" if run.dry_run else "deleted"
    parts = [
        f"{verb} {sum(tally.deleted_by_reason.values())} threads and "
        f"{tally.rows.checkpoints} checkpoints ({tally.pruned} threads pruned)"
    ]
    parts.extend(_store_message(run, verb))
    if tally.skipped:
        parts.append(f"{len(tally.skipped)} threads skipped (busy)")
    if tally.failed:
        parts.append(f"{len(tally.failed)} threads failed, see the reaper log")
    if run.stopped_by:
        parts.append(f"stopped early: {run.stopped_by}; the next run continues")
    return "; ".join(parts)


def _store_message(run: _Run, verb: str) -> list[str]:
    rules, tally = run.policy.spec.store, run.tally
    if rules is None:
        return []
    parts = []
    if rules.sweep_expired:
        parts.append(f"{verb} {tally.store_expired} expired store items")
    if rules.max_idle:
        parts.append(f"{verb} {tally.store_idle} store items idle for {rules.max_idle}")
    if rules.max_items_per_namespace is not None:
        parts.append(
            f"{verb} {tally.store_excess} store items beyond "
            f"{rules.max_items_per_namespace} per namespace"
        )
    return parts


async def prune(
    conn: AsyncConnection[DictRow],
    policy: RetentionPolicy,
    *,
    dry_run: bool | None = None,
    now: datetime | None = None,
    resume: ResumeCursor | None = None,
    reducers: Mapping[str, Reducer] = DEFAULT_REDUCERS,
    serde: SerializerProtocol | None = None,
) -> PruneSummary:
    """Apply ``policy`` once on ``conn`` (an autocommit connection with dict rows).

    ``dry_run`` overrides ``spec.dryRun``. ``now`` replaces the database clock for every age
    (leases are always judged by the database clock). ``resume`` continues the sweeps of a
    previous run (its ``summary.resume``). ``reducers`` name the reducer of each DeltaChannel;
    ``serde`` must match the service's checkpoint serializer.
    """
    started = time.monotonic()
    cur = await conn.execute(NOW_SQL)
    row = await cur.fetchone()
    assert row is not None
    db_now: datetime = row["now"]
    dry = policy.spec.dry_run if dry_run is None else dry_run
    start = _Start(dry, db_now, started)

    if policy.spec.suspend:
        return _summary(policy, start, outcome=Outcome.SKIPPED, message="policy is suspended")
    cur = await conn.execute(TRY_LOCK_SQL, (ADVISORY_LOCK_KEY,))
    row = await cur.fetchone()
    if row is None or not row["locked"]:
        skipped = _summary(
            policy,
            start,
            outcome=Outcome.SKIPPED,
            message="locked: another prune is running on this database",
        )
        # The operator logs that a run was due; this says how it ended, in the pod's own log.
        log.info("prune_skipped", **skipped.to_json())
        return skipped
    run = _Run(
        conn,
        policy,
        dry_run=dry,
        cutoffs=Cutoffs.of(policy, now or db_now),
        resume=resume or ResumeCursor(),
        reducers=reducers,
        serde=serde,
    )
    broken: str | None = None
    backlog = 0
    cur = await conn.execute(GET_SESSION_TIMEOUT_SQL)
    row = await cur.fetchone()
    previous_timeout = row["value"] if row else "0"
    try:
        # Also bounds the candidate queries, which run outside the per-thread transactions.
        timeout = guard.milliseconds(run.statement_timeout)
        await conn.execute(SET_SESSION_TIMEOUT_SQL, (timeout,))
        await run.execute()
        backlog = await run.backlog()
    except psycopg.OperationalError as exc:
        # Lost connection or a candidate query over statementTimeout: report what was done.
        broken = str(exc).strip()
        log.error("prune_interrupted", error=broken)
    except FATAL_ERRORS as exc:
        broken = _fatal_message(exc)
        log.error("prune_refused", error=broken)
    finally:
        with suppress(psycopg.Error):
            await conn.execute(SET_SESSION_TIMEOUT_SQL, (previous_timeout,))
            await conn.execute(UNLOCK_SQL, (ADVISORY_LOCK_KEY,))
    message = _message(run)
    if broken:
        message = f"interrupted: {broken}; {message}"
    summary = _summary(
        policy,
        start,
        outcome=Outcome.FAILED if run.tally.failed or broken else Outcome.SUCCEEDED,
        message=message,
        tally=run.tally,
        backlog=backlog,
        resume=run.resume,
    )
    log.info("prune_finished", **summary.to_json())
    return summary
