"""One tick of one RetentionPolicy: whether it is due, the prune run, and the status it leaves.

Owns the run itself: parse the spec, read the database URL from the Secret, connect, run
``reaper.engine.prune`` (async psycopg: it awaits, never blocks the loop) within its budget,
measure the tables, and turn every way that can end into a status patch, an Event and a
metric. The engine stops itself at ``limits.maxDuration`` between threads; an
``asyncio.timeout`` of maxDuration plus :data:`RUN_GRACE` also cuts a run stuck inside one
statement (closing the connection drops the advisory lock with the session). Every failure,
whether the run could not start (Stalled), was cut by its timeout or reported Failed threads,
counts in ``threadkeeper_prune_runs_total{outcome="Failed"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import kopf
import psycopg
import structlog

from threadkeeper.reaper import kube, schedule, sizes, status
from threadkeeper.reaper.context import Memory, OperatorContext
from threadkeeper.reaper.db import DatabaseUnavailable, InvalidDatabaseUrl, connect
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.policy import PolicyError, parse_object
from threadkeeper.reaper.status import Stalled, StallReason
from threadkeeper.reaper.summary import Outcome, PruneSummary

log = structlog.get_logger(__name__)

# On top of maxDuration: the engine checks its budget between threads, so the last thread's
# transaction (bounded by statementTimeout) and the backlog count may run past it.
RUN_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class _Due:
    """A run about to start, and what each of its endings needs to know."""

    uid: str
    namespace: str
    name: str
    generation: int | None
    conditions: Sequence[Mapping[str, Any]]
    decision: schedule.Decision
    interval: timedelta
    started: datetime


async def _attempt(
    ctx: OperatorContext, body: kopf.Body, uid: str, namespace: str, memory: Memory
) -> tuple[PruneSummary | None, dict[str, Any] | None]:
    """Parse, read the Secret, connect, prune and measure: the summary (None: timed out) and
    the table sizes; Stalled for what stops the policy."""
    try:
        policy = parse_object(body)
    except PolicyError as exc:
        raise Stalled(StallReason.INVALID_SPEC, str(exc)) from None
    name = policy.metadata.name
    ref = policy.spec.database.secret_ref
    url = await ctx.secrets.read(namespace, ref.name, ref.key)
    budget = policy.spec.limits.max_duration_delta + RUN_GRACE
    ctx.heartbeat.run_started(uid, budget.total_seconds())
    try:
        conn = await connect(url)
    except DatabaseUnavailable as exc:
        raise Stalled(
            StallReason.DATABASE_UNREACHABLE, f"cannot connect to the database: {exc}"
        ) from None
    except InvalidDatabaseUrl as exc:
        raise Stalled(
            StallReason.INVALID_DATABASE_URL, f"Secret {ref.name} key {ref.key!r}: {exc}"
        ) from None
    tables: dict[str, Any] | None = None
    try:
        try:
            async with asyncio.timeout(budget.total_seconds()):
                summary = await prune(conn, policy, resume=memory.resume)
        except TimeoutError:
            summary = None
        if summary is not None and summary.outcome is not Outcome.SKIPPED:
            tables = await sizes.after_run(ctx, conn, policy, namespace, name)
            memory.stats_at = ctx.clock()
    except psycopg.OperationalError as exc:
        raise Stalled(
            StallReason.DATABASE_UNREACHABLE, f"the database connection broke: {exc}"
        ) from None
    finally:
        await conn.close()
    return summary, tables


async def _attempt_or_stall(
    ctx: OperatorContext, body: kopf.Body, due: _Due, memory: Memory
) -> tuple[PruneSummary | None, dict[str, Any] | None]:
    """:func:`_attempt`, with anything unexpected turned into Stalled (InternalError)."""
    try:
        return await _attempt(ctx, body, due.uid, due.namespace, memory)
    except Stalled:
        raise
    except Exception as exc:
        # Whatever else goes wrong must still reach the status, the Events and the metrics.
        log.exception("prune_crashed", namespace=due.namespace, policy=due.name)
        raise Stalled(StallReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}") from None


def _stalled(ctx: OperatorContext, due: _Due, stall: Stalled) -> status.Ending:
    log.warning(
        "policy_stalled",
        namespace=due.namespace,
        policy=due.name,
        reason=stall.reason.value,
        message=stall.message,
    )
    ctx.metrics.observe_failure(namespace=due.namespace, policy=due.name)
    return status.stalled(
        stall,
        conditions=due.conditions,
        generation=due.generation,
        now=due.started,
        next_run=schedule.retry_time(due.started, due.interval, ctx.retry_after),
    )


def _timed_out(ctx: OperatorContext, due: _Due) -> status.Ending:
    log.error("prune_timed_out", namespace=due.namespace, policy=due.name)
    ctx.metrics.observe_failure(namespace=due.namespace, policy=due.name)
    finished = ctx.clock()
    return status.timed_out(
        conditions=due.conditions,
        generation=due.generation,
        grace=RUN_GRACE,
        started=due.started,
        finished=finished,
        next_run=finished + due.interval,
    )


def _ran(ctx: OperatorContext, due: _Due, summary: PruneSummary, memory: Memory) -> status.Ending:
    ctx.metrics.observe_run(summary)
    memory.resume = summary.resume
    finished = ctx.clock()
    next_run = finished + due.interval
    if summary.outcome is Outcome.SKIPPED:
        # Another prune holds the database: another reaper pod, or the session of a killed one
        # that Postgres has not dropped yet. Its work may be left undone: try again soon.
        next_run = schedule.retry_time(finished, due.interval, ctx.retry_after)
    return status.ran(
        summary,
        conditions=due.conditions,
        generation=due.generation,
        why=due.decision.why,
        finished=finished,
        next_run=next_run,
    )


async def _run(ctx: OperatorContext, body: kopf.Body, due: _Due) -> dict[str, Any]:
    """One prune of the policy; returns the status patch (never raises for expected errors)."""
    memory = ctx.memory_of(due.uid)
    patch = status.observed(due.generation, due.decision.run_now_token)
    try:
        summary, tables = await _attempt_or_stall(ctx, body, due, memory)
    except Stalled as stall:
        ending = _stalled(ctx, due, stall)
    else:
        if tables is not None:
            patch["tables"] = tables
        ending = _timed_out(ctx, due) if summary is None else _ran(ctx, due, summary, memory)
    kube.post(body, ending.event)
    patch.update(ending.status)
    return patch


async def tick(
    ctx: OperatorContext,
    *,
    body: kopf.Body,
    meta: Mapping[str, Any],
    current_status: Mapping[str, Any],
    uid: str,
    namespace: str,
    name: str,
) -> dict[str, Any]:
    """What one timer tick writes to the policy's status (empty: nothing)."""
    if uid not in ctx.live:
        # Deleted between the filter's check and this tick: nothing to do, ever again.
        log.info("tick_after_deletion", namespace=namespace, policy=name)
        return {}
    ctx.heartbeat.ticked(uid)
    memory = ctx.memory_of(uid)
    current = {**dict(current_status), **memory.written}
    spec = body.get("spec") or {}
    generation = meta.get("generation")
    if spec.get("suspend"):
        if current.get("observedGeneration") == generation:
            return {}
        written = status.suspended(generation)
        memory.written.update(written)
        return written
    interval = schedule.interval_of(spec)
    decision = schedule.decide(
        now=ctx.clock(),
        generation=generation,
        annotations=meta.get("annotations") or {},
        status=current,
        interval=interval,
    )
    if decision is None:
        tables = await sizes.between_runs(ctx, body, uid, namespace, name)
        return {} if tables is None else {"tables": tables}
    log.info("prune_due", namespace=namespace, policy=name, why=decision.why.value)
    due = _Due(
        uid=uid,
        namespace=namespace,
        name=name,
        generation=generation,
        conditions=list(current.get("conditions") or []),
        decision=decision,
        interval=interval,
        started=ctx.clock(),
    )
    written = await _run(ctx, body, due)
    memory.remember(written)
    ctx.heartbeat.run_finished(uid, status_patched="lastRunTime" in written)
    return written
