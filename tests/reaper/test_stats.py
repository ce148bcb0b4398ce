"""Catalog-based sizes, thread state counts, Prometheus metrics, and the no-count(*) rule."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime, timedelta

import pytest
from langgraph.graph.state import CompiledStateGraph
from prometheus_client import REGISTRY, CollectorRegistry
from psycopg import AsyncConnection
from psycopg.rows import DictRow

import threadkeeper.reaper
from tests.reaper.support import add_thread, chat, policy
from threadkeeper.reaper import candidates, deletion, delta, engine, guard, history, stats
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.reaper.summary import Outcome, PruneSummary, ThreadsDeleted

DAY = timedelta(days=1)


async def test_stats_come_from_the_catalog(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    for spoke in (DAY, 2 * DAY):
        await chat(graph, await add_thread(conn, spoke=spoke), "hello")
    await add_thread(conn, spoke=40 * DAY)
    await add_thread(conn, spoke=None, created=40 * DAY)
    await add_thread(conn, archived=DAY)
    await conn.execute("ANALYZE")

    found = await stats.collect(conn, max_idle=timedelta(days=30))

    assert list(found.tables) == list(stats.TABLES)
    cur = await conn.execute("SELECT count(*) AS n FROM checkpoints")
    exact = await cur.fetchone()
    assert exact is not None
    assert found.tables["checkpoints"].rows_estimate == exact["n"]
    assert found.tables["threads"].rows_estimate == 5
    assert all(t.bytes > 0 for t in found.tables.values())
    assert found.threads == {"active": 2, "archived": 1, "idle_expired": 2}
    assert (await stats.thread_states(conn))["active"] == 4
    assert found.to_json()["tables"]["threads"] == {
        "bytes": found.tables["threads"].bytes,
        "rowsEstimate": 5,
    }


async def test_many_live_threads_come_from_the_estimate(
    conn: AsyncConnection[DictRow], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the exact limit, live threads are the estimate minus the exactly counted rest."""
    monkeypatch.setattr(stats, "ACTIVE_EXACT_LIMIT", 2)
    for _ in range(6):
        await add_thread(conn, spoke=DAY)
    await add_thread(conn, archived=DAY)
    await add_thread(conn, spoke=40 * DAY)
    await conn.execute("ANALYZE threads")

    found = await stats.collect(conn, max_idle=timedelta(days=30))

    assert found.tables["threads"].rows_estimate == 8
    assert found.threads == {"active": 6, "archived": 1, "idle_expired": 1}
    # With no estimate to fall back on, the count stops one past the limit.
    assert (await stats.thread_states(conn))["active"] == 3


def test_no_unbounded_count_in_the_reaper() -> None:
    """Every count(*) the reaper runs is over a LIMITed index range of threads."""
    counted = 0
    for module in (candidates, deletion, delta, engine, guard, history, stats):
        for name, value in vars(module).items():
            if not (name.endswith("_SQL") and isinstance(value, str)):
                continue
            for match in re.finditer(r"count\(\*\) FROM \((.*?)\) AS", value, re.S):
                counted += 1
                subquery = match.group(1)
                assert subquery.strip().startswith("SELECT 1 FROM threads"), (name, subquery)
                assert re.search(r"LIMIT %\((active_)?cap\)s\s*$", subquery), name
            assert value.count("count(") == len(re.findall(r"count\(\*\) FROM \(", value)), name
    assert counted >= 5


def test_reaper_never_imports_the_service() -> None:
    package = inspect.getfile(threadkeeper.reaper).rsplit("/", 1)[0]
    import pathlib

    for path in pathlib.Path(package).glob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+service\b", source, re.M), path


def _summary(**overrides: object) -> PruneSummary:
    values: dict[str, object] = {
        "policy": "nightly",
        "namespace": "agents",
        "dry_run": False,
        "outcome": Outcome.SUCCEEDED,
        "message": "ok",
        "started_at": datetime(2026, 1, 1, tzinfo=UTC),
        "duration_seconds": 0.4,
        "threads_deleted": ThreadsDeleted(idle=2, archived=1, orphan=1),
        "checkpoints_deleted": 30,
        "blobs_deleted": 7,
        "writes_deleted": 40,
        "runs_deleted": 3,
        "backlog": 5,
    }
    values.update(overrides)
    return PruneSummary(**values)  # type: ignore[arg-type]


def test_metrics_follow_the_runs() -> None:
    registry = CollectorRegistry()
    metrics = ReaperMetrics(registry)
    ReaperMetrics(CollectorRegistry())  # a second instance on its own registry is fine
    key = {"namespace": "agents", "policy": "nightly"}

    metrics.observe_run(_summary())
    metrics.observe_run(_summary(dry_run=True))
    metrics.observe_run(_summary(outcome=Outcome.SKIPPED, message="locked"))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {**key, **labels})

    assert value("threadkeeper_prune_deleted_rows_total", table="checkpoints") == 30
    assert value("threadkeeper_prune_deleted_rows_total", table="checkpoint_blobs") == 7
    assert value("threadkeeper_prune_deleted_rows_total", table="checkpoint_writes") == 40
    assert value("threadkeeper_prune_deleted_rows_total", table="runs") == 3
    assert value("threadkeeper_prune_deleted_rows_total", table="threads") == 3
    assert value("threadkeeper_prune_threads_deleted_total", reason="orphan") == 1
    assert value("threadkeeper_prune_threads_deleted_total", reason="idle") == 2
    assert value("threadkeeper_prune_runs_total", outcome="Succeeded") == 2
    assert value("threadkeeper_prune_runs_total", outcome="Skipped") == 1
    assert value("threadkeeper_prune_duration_seconds_count") == 2
    assert value("threadkeeper_prune_backlog_threads") == 5
    assert (
        value("threadkeeper_prune_last_success_timestamp_seconds")
        == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    )
    assert REGISTRY.get_sample_value("threadkeeper_prune_backlog_threads", key) is None


def test_table_metrics() -> None:
    registry = CollectorRegistry()
    metrics = ReaperMetrics(registry)
    found = stats.DatabaseStats(
        tables={"checkpoints": stats.TableStats(8192, 12), "threads": stats.TableStats(4096, 3)},
        threads={"active": 2, "archived": 1, "idle_expired": 0},
    )
    metrics.observe_stats(found, namespace="agents", policy="nightly")
    key = {"namespace": "agents", "policy": "nightly"}
    assert (
        registry.get_sample_value(
            "threadkeeper_checkpoint_table_bytes", {**key, "table": "checkpoints"}
        )
        == 8192
    )
    assert (
        registry.get_sample_value(
            "threadkeeper_checkpoint_table_rows_estimate", {**key, "table": "threads"}
        )
        == 3
    )
    assert registry.get_sample_value("threadkeeper_threads", {**key, "state": "archived"}) == 1
    labels = {
        name for family in registry.collect() for sample in family.samples for name in sample.labels
    }
    assert labels <= {"namespace", "policy", "table", "state", "reason", "outcome", "le"}


async def test_a_run_feeds_the_metrics(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    await chat(graph, await add_thread(conn, spoke=40 * DAY), "hello")
    registry = CollectorRegistry()
    metrics = ReaperMetrics(registry)
    summary = await prune(conn, policy(threads={"maxIdle": "30d"}))
    metrics.observe_run(summary)
    metrics.observe_stats(await stats.collect(conn), namespace="tests", policy="test-policy")
    key = {"namespace": "tests", "policy": "test-policy"}
    assert (
        registry.get_sample_value(
            "threadkeeper_prune_threads_deleted_total", {**key, "reason": "idle"}
        )
        == 1
    )
    assert registry.get_sample_value(
        "threadkeeper_checkpoint_table_bytes", {**key, "table": "checkpoint_writes"}
    )
