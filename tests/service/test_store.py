"""The store on the service's pool, and owner scoping (``OwnerStore``), on a real Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, LiteralString

import psycopg
import pytest
from langgraph.store.base import BaseStore, GetOp, InvalidNamespaceError, Item, PutOp, SearchOp
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.postgres.base import PostgresIndexConfig

from threadkeeper.service.db import Pool
from threadkeeper.service.migrations import migrate
from threadkeeper.service.store import OwnerStore, StoreSettings, open_store, owner_label


@pytest.fixture
async def store(pool: Pool) -> AsyncPostgresStore:
    return open_store(pool, StoreSettings())


async def test_owners_see_only_their_own_items(store: AsyncPostgresStore) -> None:
    ada, bob = OwnerStore(store, "ada@example.com"), OwnerStore(store, "bob")
    await ada.aput(("memories", "profile"), "name", {"name": "Ada"})
    await bob.aput(("memories", "profile"), "name", {"name": "Bob"})
    await bob.aput(("notes",), "n1", {"text": "bob's"})

    mine = await ada.aget(("memories", "profile"), "name")
    assert mine is not None and mine.value == {"name": "Ada"}
    assert mine.namespace == ("memories", "profile")  # no trace of the owner
    assert await ada.aget(("notes",), "n1") is None
    assert [i.value for i in await ada.asearch(())] == [{"name": "Ada"}]
    assert await ada.alist_namespaces() == [("memories", "profile")]
    assert sorted(await bob.alist_namespaces()) == [("memories", "profile"), ("notes",)]
    assert await bob.alist_namespaces(max_depth=1) == [("memories",), ("notes",)]
    assert await bob.alist_namespaces(suffix=("profile",)) == [("memories", "profile")]

    await ada.adelete(("notes",), "n1")  # another owner's item: nothing to delete
    assert await bob.aget(("notes",), "n1") is not None


async def test_items_live_under_the_owner_label(store: AsyncPostgresStore) -> None:
    """An owner with '.' in it stays one label; the raw store shows where items live."""
    await OwnerStore(store, "a.b").aput(("x",), "k", {"v": 1})
    item = await store.aget((owner_label("a.b"), "x"), "k")
    assert item is not None and item.value == {"v": 1}
    assert await store.alist_namespaces() == [(owner_label("a.b"), "x")]


async def test_owner_labels_do_not_prefix_each_other(store: AsyncPostgresStore) -> None:
    # "a"'s label is a string prefix of "ab"'s; the store matches whole segments.
    assert owner_label("ab").startswith(owner_label("a"))
    await OwnerStore(store, "ab").aput(("x",), "k", {"v": 1})
    assert await OwnerStore(store, "a").asearch(()) == []
    assert await OwnerStore(store, "a").alist_namespaces() == []


async def test_ops_given_to_batch_directly_are_validated(store: AsyncPostgresStore) -> None:
    ada = OwnerStore(store, "ada")
    with pytest.raises(InvalidNamespaceError):
        await ada.abatch([PutOp(("a.b",), "k", {"v": 1})])
    [found] = await ada.abatch([GetOp(("a",), "k")])
    assert found is None


async def test_calls_on_the_pool_run_concurrently(pool: Pool, store: AsyncPostgresStore) -> None:
    """A put blocked on a row lock does not hold up a get: the service's store hands each
    call to ``abatch`` (its own pooled connection), not to the one queue the stock store's
    ``aget``/``aput`` go through (see the next test); owner scoping keeps that."""
    label = owner_label("ada")
    free = await _get_while_a_put_waits(pool, store, (label, "n"), f"{label}.n", wait=10)
    assert free is not None and free.value == {"v": 2}
    ada = OwnerStore(store, "ada")
    free = await _get_while_a_put_waits(pool, ada, ("n",), f"{label}.n", wait=10)
    assert free is not None and free.value == {"v": 2}


async def test_the_stock_store_serialises_its_calls(pool: Pool) -> None:
    """Why ``PooledPostgresStore`` bypasses the stock ``aget``/``aput``: they queue every
    call behind one background task, so one slow call holds up all the others. Should
    LangGraph change that, this fails and ``PooledPostgresStore`` can go."""
    with pytest.raises(TimeoutError):
        await _get_while_a_put_waits(pool, AsyncPostgresStore(pool), ("n",), "n", wait=2)


async def _get_while_a_put_waits(
    pool: Pool, store: BaseStore, ns: tuple[str, ...], stored_as: str, *, wait: float
) -> Item | None:
    """Get one item of ``ns`` while a put of another waits for a row lock held here
    (``stored_as``: the namespace as the store's table holds it)."""
    await store.aput(ns, "locked", {"v": 1})
    await store.aput(ns, "free", {"v": 2})
    async with pool.connection() as holder:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM store WHERE prefix = %s AND key = 'locked' FOR UPDATE",
                (stored_as,),
            )
            blocked = asyncio.create_task(store.aput(ns, "locked", {"v": 3}))
            try:
                await _until_a_row(pool, WAITING_SQL)
                return await asyncio.wait_for(store.aget(ns, "free"), timeout=wait)
            finally:
                await holder.execute("SELECT 1")  # the lock goes with the transaction
        await blocked
        after = await store.aget(ns, "locked")
        assert after is not None and after.value == {"v": 3}


async def _until_a_row(pool: Pool, sql: LiteralString) -> None:
    """Until ``sql`` finds a row (polling the database: nothing notifies of what it waits for)."""
    async with asyncio.timeout(10), pool.connection() as conn:
        while True:
            cur = await conn.execute(sql)
            if await cur.fetchone():
                return
            await asyncio.sleep(0.02)


WAITING_SQL = """
SELECT 1 FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%store%'
"""


async def test_an_expired_item_is_not_served_before_it_is_swept(
    pool: Pool, store: AsyncPostgresStore
) -> None:
    ada = OwnerStore(store, "ada")
    await ada.aput(("n",), "brief", {"v": 1}, ttl=0.001)  # minutes: 60 ms
    await ada.aput(("n",), "kept", {"v": 2})
    await _until_a_row(pool, EXPIRED_SQL)
    assert await ada.aget(("n",), "brief") is None
    assert [i.key for i in await ada.asearch(("n",))] == ["kept"]
    async with pool.connection() as conn:  # still there: sweeping is the reaper's
        assert (await (await conn.execute("SELECT count(*) AS n FROM store")).fetchone()) == {
            "n": 2
        }


EXPIRED_SQL = "SELECT 1 FROM store WHERE key = 'brief' AND expires_at < now()"


# Items written in one transaction share its start time.
COMMITS_SQL = "SELECT count(DISTINCT updated_at) AS n FROM store WHERE prefix LIKE %s"


async def test_puts_arriving_together_share_commits(pool: Pool, store: AsyncPostgresStore) -> None:
    """Fifty puts at once: every one written, in fewer transactions than puts (the ones that
    arrive while every put slot is busy go together)."""
    ada = OwnerStore(store, "ada")
    await asyncio.gather(*(ada.aput(("burst",), f"k{n}", {"n": n}) for n in range(50)))
    found = await ada.asearch(("burst",), limit=100)
    assert sorted(item.value["n"] for item in found) == list(range(50))
    async with pool.connection() as conn:
        cur = await conn.execute(COMMITS_SQL, (f"{owner_label('ada')}.burst%",))
        row = await cur.fetchone()
    assert row is not None and row["n"] < 50


async def test_a_failing_put_fails_alone(pool: Pool) -> None:
    """An embedding that cannot be made fails its own put, not the others written with it."""

    def embed(texts: Sequence[str]) -> list[list[float]]:
        if any("boom" in text for text in texts):
            raise RuntimeError("the embedding service is down")
        return [[1.0, 0.0, 0.0] for _ in texts]

    index: PostgresIndexConfig = {"dims": 3, "embed": embed, "fields": ["text"]}
    async with pool.connection() as conn:
        await migrate(conn, store_index=index)
    ada = OwnerStore(open_store(pool, StoreSettings(index=index)), "ada")
    texts = [f"memory {n}" for n in range(30)] + ["boom"]
    outcomes = await asyncio.gather(
        *(ada.aput(("mixed",), text, {"text": text}) for text in texts), return_exceptions=True
    )
    failed = [text for text, outcome in zip(texts, outcomes, strict=True) if outcome is not None]
    assert failed == ["boom"]
    assert isinstance(outcomes[-1], RuntimeError)
    found = await ada.asearch(("mixed",), limit=100)
    assert len(found) == 30


class StoreStatements:
    """The store statements sent while a test runs, each with whether its connection was in
    pipeline mode (recorded at the cursor, which every statement goes through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[bool] = []
        original = psycopg.AsyncCursor.execute

        async def recorded(cur: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            if "store" in str(query):
                status = cur.connection.pgconn.pipeline_status
                self.sent.append(status != psycopg.pq.PipelineStatus.OFF)
            return await original(cur, query, params, **kwargs)

        monkeypatch.setattr(psycopg.AsyncCursor, "execute", recorded)


async def test_a_single_read_is_one_statement_without_a_pipeline(
    store: AsyncPostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph reading its memory every turn pays one plain statement for it, not a pipeline
    around one statement; batches of several ops still get the stock pipeline."""
    ada = OwnerStore(store, "ada")
    await ada.aput(("memories", "profile"), "name", {"name": "Ada"})
    await ada.aput(("notes",), "n1", {"text": "tea"})
    statements = StoreStatements(monkeypatch)

    found = await ada.aget(("memories", "profile"), "name")
    assert found is not None and found.value == {"name": "Ada"}
    assert [i.key for i in await ada.asearch(("notes",))] == ["n1"]
    assert sorted(await ada.alist_namespaces()) == [("memories", "profile"), ("notes",)]
    assert statements.sent == [False, False, False]

    statements.sent.clear()
    name, notes = await ada.abatch([GetOp(("memories", "profile"), "name"), SearchOp(("notes",))])
    assert isinstance(name, Item) and name.value == {"name": "Ada"}
    assert isinstance(notes, list) and [i.key for i in notes] == ["n1"]
    assert statements.sent == [True, True]


async def test_a_single_get_still_refreshes_the_ttl(pool: Pool, store: AsyncPostgresStore) -> None:
    ada = OwnerStore(store, "ada")
    await ada.aput(("n",), "k", {"v": 1}, ttl=60)  # minutes
    async with pool.connection() as conn:
        await conn.execute("UPDATE store SET expires_at = now() + interval '1 minute'")
        assert await ada.aget(("n",), "k", refresh_ttl=False) is not None
        assert await (await conn.execute(LEFT_SQL)).fetchone() == {"minutes": 1}
        assert await ada.aget(("n",), "k") is not None  # refresh_on_read defaults to on
        assert await (await conn.execute(LEFT_SQL)).fetchone() == {"minutes": 60}


# The minutes left before the item expires, rounded to the nearest minute.
LEFT_SQL = "SELECT round(extract(epoch FROM expires_at - now()) / 60) :: int AS minutes FROM store"
