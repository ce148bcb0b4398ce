"""The ``store`` rule: long-term memory items past their TTL, swept by the reaper on a real
Postgres (items written by the service's own store)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.support import policy
from threadkeeper.reaper import stats
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.reaper.summary import Outcome
from threadkeeper.service.db import Pool
from threadkeeper.service.store import OwnerStore, StoreSettings, open_store

SWEEP = policy(store={"sweepExpired": True})
LABELS = {"namespace": "tests", "policy": "test-policy"}

# A test cannot wait minutes for a TTL: it ages the items it names instead.
AGE_SQL = """
UPDATE store SET expires_at = now() - interval '1 minute'
WHERE key = ANY(%s)
"""
KEYS_SQL = "SELECT key FROM store ORDER BY key"


async def _memories(pool: Pool, expired: Sequence[str], live: Sequence[str]) -> None:
    store = OwnerStore(open_store(pool, StoreSettings()), "ada")
    for key in (*expired, *live):
        await store.aput(("memories",), key, {"v": key}, ttl=60)
    await store.aput(("memories",), "forever", {"v": "no ttl"})
    async with pool.connection() as conn:
        await conn.execute(AGE_SQL, (list(expired),))


async def _keys(conn: AsyncConnection[DictRow]) -> list[str]:
    cur = await conn.execute(KEYS_SQL)
    return [row["key"] for row in await cur.fetchall()]


async def test_expired_items_are_swept_in_batches(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    await _memories(pool, expired=["e1", "e2", "e3"], live=["l1"])

    summary = await prune(conn, policy(store={"sweepExpired": True}, limits={"batchSize": 2}))

    assert summary.outcome is Outcome.SUCCEEDED
    assert summary.store_expired_items_deleted == 3
    assert "deleted 3 expired store items" in summary.message
    assert await _keys(conn) == ["forever", "l1"]


async def test_a_dry_run_counts_and_keeps(conn: AsyncConnection[DictRow], pool: Pool) -> None:
    await _memories(pool, expired=["e1", "e2"], live=["l1"])

    summary = await prune(conn, SWEEP, dry_run=True)

    assert summary.store_expired_items_deleted == 2
    assert "would delete 2 expired store items" in summary.message
    assert await _keys(conn) == ["e1", "e2", "forever", "l1"]


async def test_without_the_rule_nothing_of_the_store_is_touched(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    await _memories(pool, expired=["e1"], live=[])
    summary = await prune(conn, policy(orphans={"olderThan": "7d"}))
    assert summary.store_expired_items_deleted == 0
    assert "store" not in summary.message
    assert await _keys(conn) == ["e1", "forever"]


async def test_a_database_without_a_store_is_swept_of_nothing(
    conn: AsyncConnection[DictRow],
) -> None:
    await conn.execute("DROP TABLE store CASCADE")
    summary = await prune(conn, SWEEP)
    assert summary.outcome is Outcome.SUCCEEDED
    assert summary.store_expired_items_deleted == 0


async def test_metrics_count_swept_items_and_size_the_store(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    await _memories(pool, expired=["e1", "e2"], live=["l1"])
    registry = CollectorRegistry()
    metrics = ReaperMetrics(registry)

    metrics.observe_run(await prune(conn, SWEEP, dry_run=True))
    swept = "threadkeeper_store_expired_items_deleted_total"
    assert registry.get_sample_value(swept, LABELS) in (None, 0.0)  # a dry run deletes nothing
    metrics.observe_run(await prune(conn, SWEEP))
    assert registry.get_sample_value(swept, LABELS) == 2.0

    await conn.execute("ANALYZE store")
    metrics.observe_stats(await stats.collect(conn), **LABELS)
    assert registry.get_sample_value("threadkeeper_store_items", LABELS) == 2.0
    size = registry.get_sample_value("threadkeeper_store_table_bytes", {**LABELS, "table": "store"})
    assert size is not None and size > 0
