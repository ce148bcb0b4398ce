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
from datetime import timedelta
from typing import Any

import kopf
import psycopg
import structlog

from reaper import kube, schedule, sizes, status
from reaper.context import Memory, OperatorContext
from reaper.db import DatabaseUnavailable, InvalidDatabaseUrl, connect
from reaper.engine import prune
from reaper.policy import PolicyError, parse_object
from reaper.status import Stalled, StallReason
from reaper.summary import Outcome, PruneSummary

log = structlog.get_logger(__name__)

# On top of maxDuration: the engine checks its budget between threads, so the last thread's
# transaction (bounded by statementTimeout) and the backlog count may run past it.
RUN_GRACE = timedelta(seconds=60)


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
    ctx: OperatorContext, body: kopf.Body, uid: str, namespace: str, name: str, memory: Memory
) -> tuple[PruneSummary | None, dict[str, Any] | None]:
    """:func:`_attempt`, with anything unexpected turned into Stalled (InternalError)."""
    try:
        return await _attempt(ctx, body, uid, namespace, memory)
    except Stalled:
        raise
    except Exception as exc:
        # Whatever else goes wrong must still reach the status, the Events and the metrics.
        log.exception("prune_crashed", namespace=namespace, policy=name)
        raise Stalled(StallReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}") from None


async def _run(
    ctx: OperatorContext,
    *,
    body: kopf.Body,
    uid: str,
    namespace: str,
    name: str,
    generation: int | None,
    conditions: Sequence[Mapping[str, Any]],
    decision: schedule.Decision,
) -> dict[str, Any]:
    """One prune of the policy; returns the status patch (never raises for expected errors)."""
    memory = ctx.memory_of(uid)
    now = ctx.clock()
    interval = schedule.interval_of(body.get("spec") or {})
    patch = status.observed(generation, decision.run_now_token)
    try:
        summary, tables = await _attempt_or_stall(ctx, body, uid, namespace, name, memory)
    except Stalled as stalled:
        log.warning(
            "policy_stalled",
            namespace=namespace,
            policy=name,
            reason=stalled.reason.value,
            message=stalled.message,
        )
        ctx.metrics.observe_failure(namespace=namespace, policy=name)
        ending = status.stalled(
            stalled,
            conditions=conditions,
            generation=generation,
            now=now,
            next_run=schedule.retry_time(now, interval),
        )
    else:
        if tables is not None:
            patch["tables"] = tables
        if summary is None:
            log.error("prune_timed_out", namespace=namespace, policy=name)
            ctx.metrics.observe_failure(namespace=namespace, policy=name)
            finished = ctx.clock()
            ending = status.timed_out(
                conditions=conditions,
                generation=generation,
                grace=RUN_GRACE,
                started=now,
                finished=finished,
                next_run=finished + interval,
            )
        else:
            ctx.metrics.observe_run(summary)
            memory.resume = summary.resume
            finished = ctx.clock()
            ending = status.ran(
                summary,
                conditions=conditions,
                generation=generation,
                why=decision.why,
                finished=finished,
                next_run=finished + interval,
            )
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
    decision = schedule.decide(
        now=ctx.clock(),
        generation=generation,
        annotations=meta.get("annotations") or {},
        status=current,
        interval=schedule.interval_of(spec),
    )
    if decision is None:
        tables = await sizes.between_runs(ctx, body, uid, namespace, name)
        return {} if tables is None else {"tables": tables}
    log.info("prune_due", namespace=namespace, policy=name, why=decision.why.value)
    written = await _run(
        ctx,
        body=body,
        uid=uid,
        namespace=namespace,
        name=name,
        generation=generation,
        conditions=list(current.get("conditions") or []),
        decision=decision,
    )
    memory.remember(written)
    ctx.heartbeat.run_finished(uid, status_patched="lastRunTime" in written)
    return written
