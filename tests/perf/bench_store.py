"""Benchmark 13: the long-term memory store.

``put`` and ``search`` (a namespace prefix and a ``filter``) under 50 concurrent clients, against
a store of 100k items (100 namespaces of 1,000), side by side in one run:

- ours: a replica of the service, its store API over HTTP (``PUT /store/items``,
  ``POST /store/items/search``), each client with its own connection: owner scoping, the pool,
  JSON over HTTP, everything a caller goes through;
- stock: LangGraph's ``AsyncPostgresStore`` used directly in this process, on a pool of the
  same size as the replica's, each client a task calling ``aput`` / ``asearch``.

- the HTTP floor: ``GET /ok``, which does no work, through the same 50 clients and connections,
  so a reader can tell the store's share of ours from what any request costs on the host.

Each repetition measures all of them, in a rotating order, and the ratio is taken per
repetition. Both stores are seeded alike in SQL (the same prefixes, keys and values; ours under
the owner's label, found by one ``PUT``), then analysed. ``put`` rewrites random existing
items, ``search`` asks a random namespace for one of ten kinds (100 of its 1,000 items match,
10 returned).

Semantic search: ours in-process (``PooledPostgresStore`` under ``OwnerStore``), with
all-MiniLM-L6-v2 embedding each query (``threadkeeper.service.minilm``) over 10k items whose
vectors are seeded in SQL (random unit-ish vectors: the model would need minutes to embed 10k
texts, and the query's cost does not depend on what the stored vectors mean). The p99 is of
sequential queries, the embedding included; the details hold the plan of the store's own search
statement (``EXPLAIN``), and the row's goal is that it uses the HNSW index the store's ``index``
configuration creates.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg
import structlog
from langgraph.store.base import SearchOp
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.postgres.base import PLACEHOLDER, PostgresIndexConfig
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tests.perf import clients, servers
from tests.perf.harness import Bench, Row, alone, compare, interleave
from threadkeeper.service.db import connect, make_pool
from threadkeeper.service.migrations import migrate
from threadkeeper.service.minilm import DIMS, embed
from threadkeeper.service.settings import Settings
from threadkeeper.service.store import OwnerStore, StoreSettings, open_store

NAME = "13. store"

log = structlog.get_logger("bench.store")

CLIENTS = 50
NAMESPACES = 100
KINDS = 10
ITEMS_FULL, ITEMS_QUICK = 100_000, 5_000
OPS_PER_CLIENT_FULL, OPS_PER_CLIENT_QUICK = 40, 6
SEMANTIC_FULL, SEMANTIC_QUICK = 10_000, 3_000
QUERIES_FULL, QUERIES_QUICK = 200, 20
# The replica's default pool (THREADKEEPER_POOL_MAX_SIZE); the stock store gets the same.
POOL_SIZE = 20
GOAL_RATIO = 1.5
VECTOR_INDEX = "store_vectors_embedding_idx"

SEED_SQL = """
INSERT INTO store (prefix, key, value)
SELECT %(base)s || '.u' || (i %% %(spaces)s), 'k' || i,
       jsonb_build_object('n', i, 'kind', 'k' || (i / %(spaces)s %% %(kinds)s),
                          'text', 'memory number ' || i)
FROM generate_series(0, %(items)s - 1) AS i
ON CONFLICT DO NOTHING
"""
SEED_VECTORS_SQL = """
INSERT INTO store_vectors (prefix, key, field_name, embedding)
SELECT prefix, key, '$',
       (SELECT array_agg(random() - 0.5) FROM generate_series(1, %(dims)s) WHERE s.key IS NOT NULL)
           ::vector
FROM store s WHERE prefix = %(prefix)s
"""
PROBE_SQL = "SELECT prefix FROM store WHERE key = 'probe'"
QUERIES = (
    "what does the user like to do outdoors",
    "favourite food",
    "when is the next meeting",
    "the user's name",
    "travel plans for the summer",
)


def p99(samples: list[float]) -> float:
    if len(samples) < 2:
        raise ValueError(f"too few samples for a p99: {len(samples)}")
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


async def seed(url: str, base: str, items: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            SEED_SQL, {"base": base, "items": items, "spaces": NAMESPACES, "kinds": KINDS}
        )
        await conn.execute("ANALYZE store")


def _matches(items: int) -> int:
    """What a search returns: a namespace's items of one kind, at most its limit of 10."""
    return min(10, items // (NAMESPACES * KINDS))


def _namespace(rng: random.Random) -> list[str]:
    return ["bench", f"u{rng.randrange(NAMESPACES)}"]


def _put_args(rng: random.Random, items: int) -> tuple[list[str], str, dict[str, Any]]:
    n = rng.randrange(items)
    # The key's namespace as seeded, so every put rewrites an existing item.
    namespace = ["bench", f"u{n % NAMESPACES}"]
    # Its kind as seeded too: what a search finds stays the same.
    kind = f"k{n // NAMESPACES % KINDS}"
    return namespace, f"k{n}", {"n": n, "kind": kind, "text": f"rewritten {rng.random()}"}


def _search_args(rng: random.Random) -> tuple[list[str], dict[str, Any]]:
    return _namespace(rng), {"kind": f"k{rng.randrange(KINDS)}"}


async def _clients(ops: int, op: Callable[[int, random.Random], Awaitable[None]]) -> float:
    """``CLIENTS`` callers, ``ops`` calls each, back to back; the p99 latency in ms."""
    latencies: list[float] = []

    async def caller(index: int) -> None:
        rng = random.Random(index * 7919 + int(time.time()))
        for _ in range(ops):
            began = time.perf_counter()
            await op(index, rng)
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(caller(i) for i in range(CLIENTS)))
    return p99(latencies) * 1000


class Ours:
    def __init__(self, url: str, https: list[httpx.AsyncClient], items: int) -> None:
        self.url = url
        self.https = https
        self.items = items

    async def put(self, index: int, rng: random.Random) -> None:
        namespace, key, value = _put_args(rng, self.items)
        r = await self.https[index].put(
            f"{self.url}/store/items", json={"namespace": namespace, "key": key, "value": value}
        )
        if r.status_code != 204:
            raise RuntimeError(f"PUT /store/items: {r.status_code} {r.text[:300]}")

    async def ok(self, index: int, rng: random.Random) -> None:
        """The floor under every call: a request that does nothing (``GET /ok``)."""
        r = await self.https[index].get(f"{self.url}/ok")
        if r.status_code != 200:
            raise RuntimeError(f"GET /ok: {r.status_code} {r.text[:300]}")

    async def search(self, index: int, rng: random.Random) -> None:
        namespace, filter_ = _search_args(rng)
        body = {"namespace_prefix": namespace, "filter": filter_, "limit": 10}
        r = await self.https[index].post(f"{self.url}/store/items/search", json=body)
        if r.status_code != 200 or len(r.json()["items"]) != _matches(self.items):
            raise RuntimeError(f"POST /store/items/search: {r.status_code} {r.text[:300]}")


class Stock:
    def __init__(self, store: AsyncPostgresStore, items: int) -> None:
        self.store = store
        self.items = items

    async def put(self, index: int, rng: random.Random) -> None:
        namespace, key, value = _put_args(rng, self.items)
        await self.store.aput(tuple(namespace), key, value)

    async def search(self, index: int, rng: random.Random) -> None:
        namespace, filter_ = _search_args(rng)
        found = await self.store.asearch(tuple(namespace), filter=filter_, limit=10)
        if len(found) != _matches(self.items):
            raise RuntimeError(f"the stock store found {len(found)} items")


class InProcess(Stock):
    """Ours without HTTP: the service's store (a pool connection per call, owner-scoped) called
    in this process, as the stock one is. Tells the store's own cost from the API's."""

    def __init__(self, store: OwnerStore, items: int) -> None:
        self.store = store  # type: ignore[assignment]
        self.items = items


async def _owner(database_url: str) -> str:
    """Whose items the replica's callers write (auth none: one owner), from the probe's label."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(PROBE_SQL)
        row = await cur.fetchone()
    assert row is not None
    label = str(row[0]).split(".")[0]
    return bytes.fromhex(label.removeprefix("o")).decode()


async def _owner_base(service_url: str, database_url: str) -> str:
    """The prefix ours stores ``("bench",)`` under: the owner's label, then ``bench``."""
    async with clients.client() as http:
        r = await http.put(
            f"{service_url}/store/items",
            json={"namespace": ["bench"], "key": "probe", "value": {"probe": True}},
        )
        if r.status_code != 204:
            raise RuntimeError(f"probe PUT: {r.status_code} {r.text[:300]}")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(PROBE_SQL)
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("the probe item is not in the store table")
    return str(row[0])


async def load_and_search(bench: Bench) -> list[Row]:
    items = bench.size(ITEMS_FULL, ITEMS_QUICK)
    ops = bench.size(OPS_PER_CLIENT_FULL, OPS_PER_CLIENT_QUICK)
    with bench.database() as ours_url, bench.database(migrated=False) as stock_url:
        stock_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            stock_url,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
            open=False,
        )
        await stock_pool.open(wait=True)
        try:
            stock = AsyncPostgresStore(stock_pool)  # type: ignore[arg-type]
            await stock.setup()
            await seed(stock_url, "bench", items)
            service = servers.ours(ours_url, bench.work, name="ours-store")
            with service.start():
                await seed(ours_url, await _owner_base(service.url, ours_url), items)
                owner = await _owner(ours_url)
                ours_pool = make_pool(ours_url, Settings(database_url=ours_url))
                await ours_pool.open(wait=True)
                async with clients.callers(CLIENTS) as https:
                    ours = Ours(service.url, https, items)
                    runner = Stock(stock, items)
                    local = InProcess(
                        OwnerStore(open_store(ours_pool, StoreSettings()), owner), items
                    )
                    # Untimed: connections, pools and caches warm up on all three.
                    for warm in (ours, runner, local):
                        await _clients(2, warm.search)
                    puts = await interleave(
                        bench.repetitions,
                        {
                            "ours": lambda _: _clients(ops, ours.put),
                            "stock": lambda _: _clients(ops, runner.put),
                            "in-process": lambda _: _clients(ops, local.put),
                            "http floor": lambda _: _clients(ops, ours.ok),
                        },
                    )
                    searches = await interleave(
                        bench.repetitions,
                        {
                            "ours": lambda _: _clients(ops, ours.search),
                            "stock": lambda _: _clients(ops, runner.search),
                            "in-process": lambda _: _clients(ops, local.search),
                        },
                    )
                await ours_pool.close()
        finally:
            await stock_pool.close()
    details = {"items": items, "clients": CLIENTS, "calls_per_client": ops, "pool": POOL_SIZE}
    return [
        compare(
            NAME, "put p99, 50 clients", "ms", puts["ours"], "stock AsyncPostgresStore",
            puts["stock"], goal=f"<= {GOAL_RATIO}x", goal_check=lambda r: r <= GOAL_RATIO,
            details=details,
        ),
        compare(
            NAME, "put p99, 50 clients, over the HTTP floor", "ms", puts["ours"],
            "GET /ok p99, the same clients", puts["http floor"], details=details,
        ),
        compare(
            NAME, "search (filter) p99, 50 clients", "ms", searches["ours"],
            "stock AsyncPostgresStore", searches["stock"], goal=f"<= {GOAL_RATIO}x",
            goal_check=lambda r: r <= GOAL_RATIO, details=details,
        ),
        compare(
            NAME, "put p99, 50 callers, ours in-process", "ms", puts["in-process"],
            "stock AsyncPostgresStore", puts["stock"], goal=f"<= {GOAL_RATIO}x",
            goal_check=lambda r: r <= GOAL_RATIO, details=details,
        ),
        compare(
            NAME, "search (filter) p99, 50 callers, ours in-process", "ms",
            searches["in-process"], "stock AsyncPostgresStore", searches["stock"],
            goal=f"<= {GOAL_RATIO}x", goal_check=lambda r: r <= GOAL_RATIO, details=details,
        ),
    ]  # fmt: skip


def _plan_uses(plan: Any, index: str) -> bool:
    return index in json.dumps(plan)


def _plan_nodes(node: Any) -> list[str]:
    """The plan's nodes, depth first: ``Index Scan (store_vectors_embedding_idx)``."""
    if isinstance(node, list):
        return [n for item in node for n in _plan_nodes(item)]
    if not isinstance(node, dict):
        return []
    if "Plan" in node:
        return _plan_nodes(node["Plan"])
    name = str(node.get("Node Type"))
    if "Index Name" in node:
        name += f" ({node['Index Name']})"
    elif "Relation Name" in node:
        name += f" ({node['Relation Name']})"
    return [name, *_plan_nodes(node.get("Plans", []))]


async def semantic(bench: Bench) -> Row:
    items = bench.size(SEMANTIC_FULL, SEMANTIC_QUICK)
    queries = bench.size(QUERIES_FULL, QUERIES_QUICK)
    index: PostgresIndexConfig = {"dims": DIMS, "embed": embed, "fields": ["text"]}
    with bench.database() as url:
        conn = await connect(url)
        try:
            await migrate(conn, store_index=index)
        finally:
            await conn.close()
        pool = make_pool(url, Settings(database_url=url, pool_max_size=4))
        await pool.open(wait=True)
        try:
            inner = open_store(pool, StoreSettings(index=index))
            store = OwnerStore(inner, "bench")
            await store.aput(("mem",), "probe", {"text": "I like hiking in the mountains"})
            async with pool.connection() as c:
                cur = await c.execute(PROBE_SQL)
                row = await cur.fetchone()
                assert row is not None
                prefix = str(row["prefix"])
                await c.execute(SEED_SQL.replace("'.u' || (i %% %(spaces)s)", "''"), {
                    "base": prefix, "items": items, "spaces": NAMESPACES, "kinds": KINDS,
                })  # fmt: skip
                await c.execute(SEED_VECTORS_SQL, {"dims": DIMS, "prefix": prefix})
                await c.execute("ANALYZE store")
                await c.execute("ANALYZE store_vectors")
            embed(["warm up"])
            latencies = []
            for n in range(queries):
                began = time.perf_counter()
                found = await store.asearch(("mem",), query=QUERIES[n % len(QUERIES)], limit=10)
                latencies.append(time.perf_counter() - began)
                if len(found) != 10:
                    raise RuntimeError(f"a semantic search found {len(found)} items, not 10")
            plan = await _explain(inner, pool, prefix)
        finally:
            await pool.close()
    used = _plan_uses(plan, VECTOR_INDEX)
    log.info("semantic_plan", index_used=used)
    return alone(
        NAME, f"semantic search p99, {items} items (embedding included)", "ms",
        [p99(latencies) * 1000], goal=f"plan uses {VECTOR_INDEX}",
        goal_check=lambda _: used,
        details={"items": items, "queries": queries, "index_used": used,
                 "plan": _plan_nodes(plan),
                 "p50_ms": round(statistics.median(latencies) * 1000, 1)},
    )  # fmt: skip


async def _explain(store: AsyncPostgresStore, pool: Any, prefix: str) -> Any:
    """The plan of the store's own statement for a semantic search under ``prefix``."""
    op = SearchOp(namespace_prefix=tuple(prefix.split(".")), query="favourite food", limit=10)
    queries, _ = store._prepare_batch_search_queries([(0, op)])
    sql, params = queries[0]
    vector = str(embed(["favourite food"])[0])
    bound = [vector if p is PLACEHOLDER else p for p in params]
    async with pool.connection() as conn:
        cur = await conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", bound)
        row = await cur.fetchone()
    return row["QUERY PLAN"] if row else None


async def run(bench: Bench) -> list[Row]:
    rows = await load_and_search(bench)
    rows.append(await semantic(bench))
    return rows
