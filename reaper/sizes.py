"""Table sizes of a policy's database, for ``status.tables`` and the size metrics.

Owns when sizes are measured: after every run that ran (on the run's connection), and between
runs at most every ``stats_interval`` from the timer's tick (on a connection of their own,
bounded by the policy's statementTimeout). A failure here never stops a policy: the next run
reports the cause through the conditions, and the sizes can wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import psycopg
import structlog

from threadkeeper.reaper import stats
from threadkeeper.reaper.context import OperatorContext
from threadkeeper.reaper.db import DatabaseUnavailable, InvalidDatabaseUrl, connect
from threadkeeper.reaper.policy import PolicyError, RetentionPolicy, parse_object
from threadkeeper.reaper.status import Stalled

log = structlog.get_logger(__name__)


async def _measure(
    ctx: OperatorContext, conn: Any, policy: RetentionPolicy, namespace: str, name: str
) -> dict[str, Any]:
    threads = policy.spec.threads
    collected = await stats.collect(conn, max_idle=threads.max_idle_delta if threads else None)
    ctx.metrics.observe_stats(collected, namespace=namespace, policy=name)
    tables: dict[str, Any] = collected.to_json()["tables"]
    return tables


async def after_run(
    ctx: OperatorContext, conn: Any, policy: RetentionPolicy, namespace: str, name: str
) -> dict[str, Any] | None:
    """Table sizes after a run; None when the database refuses (the run reported why)."""
    try:
        return await _measure(ctx, conn, policy, namespace, name)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        log.info("stats_failed", namespace=namespace, policy=name, error=type(exc).__name__)
        return None


async def _measure_alone(
    ctx: OperatorContext, body: Mapping[str, Any], namespace: str, name: str
) -> dict[str, Any]:
    policy = parse_object(body)
    ref = policy.spec.database.secret_ref
    url = await ctx.secrets.read(namespace, ref.name, ref.key)
    conn = await connect(url)
    try:
        async with asyncio.timeout(policy.spec.limits.statement_timeout_delta.total_seconds()):
            return await _measure(ctx, conn, policy, namespace, name)
    finally:
        await conn.close()


async def between_runs(
    ctx: OperatorContext, body: Mapping[str, Any], uid: str, namespace: str, name: str
) -> dict[str, Any] | None:
    """Table sizes between runs, at most every stats_interval; None when not due or failed."""
    memory = ctx.memory_of(uid)
    now = ctx.clock()
    if memory.stats_at is not None and (now - memory.stats_at).total_seconds() < ctx.stats_interval:
        return None
    memory.stats_at = now
    try:
        return await _measure_alone(ctx, body, namespace, name)
    except (
        PolicyError,
        Stalled,
        DatabaseUnavailable,
        InvalidDatabaseUrl,
        psycopg.Error,
        TimeoutError,
    ) as exc:
        # The next run reports these through the conditions; sizes can wait.
        log.info("stats_refresh_failed", namespace=namespace, policy=name, error=type(exc).__name__)
        return None
