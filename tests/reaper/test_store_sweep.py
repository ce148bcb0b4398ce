"""The ``store`` rule: long-term memory items past their TTL, swept by the reaper on a real
Postgres (items written by the service's own store)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.support import policy
from threadkeeper.reaper import stats
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.reaper.summary import Outcome
from threadkeeper.service.db import Pool, connect
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


# Items written as the service writes them, then dated back (a test cannot wait days).
BACKDATE_SQL = """
UPDATE store SET updated_at = now() - %(age)s::interval
WHERE key = %(key)s
"""
# A read with refresh_ttl sets expires_at to now + ttl_minutes: the item was read just now.
READ_NOW_SQL = """
UPDATE store SET expires_at = now() + make_interval(mins => ttl_minutes)
WHERE key = %(key)s
"""


def _owners(pool: Pool, *owners: str) -> list[OwnerStore]:
    store = open_store(pool, StoreSettings())
    return [OwnerStore(store, owner) for owner in owners]


async def _backdate(conn: AsyncConnection[DictRow], **ages: str) -> None:
    for key, age in ages.items():
        await conn.execute(BACKDATE_SQL, {"key": key, "age": age})


async def test_idle_items_are_deleted_page_by_page(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    ada, bob = _owners(pool, "ada", "bob")
    for key in ("a1", "a2", "a3", "a4"):
        await ada.aput(("memories",), key, {"v": key})
    await ada.aput(("memories",), "read", {"v": "read lately"}, ttl=60)
    await bob.aput(("notes",), "b1", {"v": "bob"})
    await _backdate(conn, a1="3 days", a3="3 days", b1="3 days", read="3 days", a4="1 hour")
    await conn.execute(READ_NOW_SQL, {"key": "read"})
    rule = policy(store={"maxIdle": "2d"}, limits={"batchSize": 2})

    dry = await prune(conn, rule, dry_run=True)
    assert dry.store_idle_items_deleted == 3
    assert "would delete 3 store items idle for 2d" in dry.message
    assert await _keys(conn) == ["a1", "a2", "a3", "a4", "b1", "read"]

    summary = await prune(conn, rule)
    assert summary.outcome is Outcome.SUCCEEDED
    assert summary.store_idle_items_deleted == 3
    assert summary.last_run_status()["storeIdleItemsDeleted"] == 3
    assert await _keys(conn) == ["a2", "a4", "read"]


async def test_each_namespace_keeps_its_most_recently_written_items(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    ada, bob = _owners(pool, "ada", "bob")
    for key in ("n1", "n2", "n3", "n4", "n5"):
        await ada.aput(("memories",), key, {"v": key})
    await ada.aput(("profile",), "p1", {"v": "one namespace, under its allowance"})
    await bob.aput(("memories",), "b1", {"v": "another owner's namespace"})
    await bob.aput(("memories",), "b2", {"v": "another owner's namespace"})
    await _backdate(conn, n1="5 hours", n2="4 hours", n3="3 hours", n4="2 hours", n5="1 hour")
    rule = policy(store={"maxItemsPerNamespace": 2}, limits={"batchSize": 2})

    dry = await prune(conn, rule, dry_run=True)
    assert dry.store_excess_items_deleted == 3
    assert "would delete 3 store items beyond 2 per namespace" in dry.message
    assert len(await _keys(conn)) == 8

    summary = await prune(conn, rule)
    assert summary.store_excess_items_deleted == 3
    assert await _keys(conn) == ["b1", "b2", "n4", "n5", "p1"]


@pytest.mark.parametrize(
    ("rules", "left"),
    [({"maxIdle": "12h"}, ["n1"]), ({"maxItemsPerNamespace": 1}, ["n1", "n3"])],
    ids=["maxIdle", "maxItemsPerNamespace"],
)
async def test_an_item_a_writer_holds_is_left_for_the_next_run(
    conn: AsyncConnection[DictRow],
    pool: Pool,
    database_url: str,
    rules: dict[str, Any],
    left: list[str],
) -> None:
    """A put in flight on the oldest item (its row locked, not yet committed) is not waited
    for and not undone: the item stays with the writer's value, the run deletes the rest."""
    ada = OwnerStore(open_store(pool, StoreSettings()), "ada")
    for key in ("n1", "n2", "n3"):
        await ada.aput(("memories",), key, {"v": key})
    await _backdate(conn, n1="3 days", n2="2 days", n3="1 day")
    writer = await connect(database_url)
    try:
        await writer.set_autocommit(False)
        await writer.execute(REWRITE_SQL)
        summary = await prune(conn, policy(store=rules))
        assert summary.outcome is Outcome.SUCCEEDED
        deleted = summary.store_excess_items_deleted + summary.store_idle_items_deleted
        assert deleted == 3 - len(left)
        await writer.commit()
    finally:
        await writer.close()
    assert await _keys(conn) == left
    item = await ada.aget(("memories",), "n1")
    assert item is not None and item.value == {"v": "rewritten"}


REWRITE_SQL = """
UPDATE store SET value = '{"v": "rewritten"}', updated_at = now() WHERE key = 'n1'
"""


async def test_metrics_count_idle_and_excess_deletes(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    ada = OwnerStore(open_store(pool, StoreSettings()), "ada")
    for key in ("n1", "n2", "n3", "n4"):
        await ada.aput(("memories",), key, {"v": key})
    await _backdate(conn, n1="3 days", n2="2 hours", n3="1 hour")
    registry = CollectorRegistry()
    metrics = ReaperMetrics(registry)

    metrics.observe_run(
        await prune(conn, policy(store={"maxIdle": "1d", "maxItemsPerNamespace": 2}))
    )

    assert registry.get_sample_value("threadkeeper_store_idle_items_deleted_total", LABELS) == 1
    assert registry.get_sample_value("threadkeeper_store_excess_items_deleted_total", LABELS) == 1
    assert await _keys(conn) == ["n3", "n4"]
