"""Fill a database with many checkpoint rows fast, in LangGraph's real layout.

One template thread talks through ten turns of the service's own graph (offline model, tools
included) with LangGraph's Postgres saver, in this process: 52 checkpoints, 10 blobs, 64 writes.
Its rows (``checkpoints``, ``checkpoint_blobs``, ``checkpoint_writes``) are then cloned in SQL,
``INSERT ... SELECT`` over a table of new thread ids, into as many threads as the target row
count needs, each with its ``threads`` row (owner ``local``, the owner of auth mode ``none``), so
the reaper and the service treat them as the live threads they look like. Within each batch of
threads, rows go in one template row at a time, so a thread's rows lie scattered over the heap
as when many conversations progress together. ``VACUUM (ANALYZE)`` last: planner statistics and
the visibility map, as a long-lived database has them. A million checkpoint rows (3 GB with the
other tables and indexes) take 45-50 s on an idle 2-core machine, about twice that on a busy one.

From SHARE_FROM rows on, a seeded database is kept as a template per server and size for the
rest of the process: benchmarks that want the same size get a file-level copy (~7 s for 1M)
instead of seeding again.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
import structlog
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from tests.perf.harness import Bench
from tests.support import postgres
from threadkeeper.service.agent.graph import GRAPH_ID, build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.db import connect

log = structlog.get_logger("bench.seed")

OWNER = "local"
# Plain talk, arithmetic (calculator) and the clock (current_time): every node of the graph.
TEXTS = (
    "Hi, I am Ada and I like teal",
    "what is 6*7?",
    "tell me something about the weather",
    "what time is it?",
    "and 12+30?",
)
DEFAULT_TURNS = 10

INSERT_THREAD_SQL = """
INSERT INTO threads (thread_id, owner, title, metadata, created_at, updated_at, last_message_at)
VALUES (%s, %s, %s, '{}', now() - interval '1 hour', now(), now())
"""

# Numbered in id order: each clone statement then inserts into the thread_id indexes in key
# order instead of descending them at random.
IDS_SQL = """
CREATE UNLOGGED TABLE seed_ids AS
SELECT row_number() OVER (ORDER BY id) AS g, id
FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, %s)) AS r
"""

# Spread over the last day, in creation order, like threads created over time.
CLONE_THREADS_SQL = """
INSERT INTO threads (thread_id, owner, title, metadata, status, created_at, updated_at,
                     last_message_at)
SELECT i.id, t.owner, t.title || ' #' || i.g, t.metadata, 'idle',
       now() - make_interval(secs => 86400.0 * (%(n)s - i.g + 1) / %(n)s) - interval '1 hour',
       now() - make_interval(secs => 86400.0 * (%(n)s - i.g + 1) / %(n)s),
       now() - make_interval(secs => 86400.0 * (%(n)s - i.g + 1) / %(n)s)
FROM seed_ids i CROSS JOIN threads t
WHERE t.thread_id = %(template)s
"""

# One statement per template row, each inserting that row for every clone (see the module doc).
TEMPLATE_ROWS_SQL = {
    "checkpoints": "SELECT checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_id = %s "
    "ORDER BY checkpoint_id, checkpoint_ns",
    "checkpoint_blobs": "SELECT checkpoint_ns, channel, version FROM checkpoint_blobs "
    "WHERE thread_id = %s ORDER BY version, channel, checkpoint_ns",
    "checkpoint_writes": "SELECT checkpoint_ns, checkpoint_id, task_id, idx FROM checkpoint_writes "
    "WHERE thread_id = %s ORDER BY checkpoint_id, task_id, idx, checkpoint_ns",
}

CLONE_SQL = {
    "checkpoints": """
    INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
                             type, checkpoint, metadata)
    SELECT i.id::text, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.type,
           c.checkpoint,
           CASE WHEN c.metadata ? 'thread_id'
                THEN jsonb_set(c.metadata, '{thread_id}', to_jsonb(i.id::text))
                ELSE c.metadata END
    FROM checkpoints c CROSS JOIN seed_ids i
    WHERE i.g BETWEEN %s AND %s
      AND c.thread_id = %s AND c.checkpoint_ns = %s AND c.checkpoint_id = %s
    """,
    "checkpoint_blobs": """
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT i.id::text, b.checkpoint_ns, b.channel, b.version, b.type, b.blob
    FROM checkpoint_blobs b CROSS JOIN seed_ids i
    WHERE i.g BETWEEN %s AND %s
      AND b.thread_id = %s AND b.checkpoint_ns = %s AND b.channel = %s AND b.version = %s
    """,
    "checkpoint_writes": """
    INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx,
                                   channel, type, blob, task_path)
    SELECT i.id::text, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel, w.type,
           w.blob, w.task_path
    FROM checkpoint_writes w CROSS JOIN seed_ids i
    WHERE i.g BETWEEN %s AND %s
      AND w.thread_id = %s AND w.checkpoint_ns = %s AND w.checkpoint_id = %s
      AND w.task_id = %s AND w.idx = %s
    """,
}

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
# Threads cloned together. Within a batch rows go in one template row at a time (scattered over
# the heap); batch by batch, each statement only touches the index pages of its batch's id
# range, which stay cached, instead of a pass over the whole of each index per template row.
BATCH_THREADS = 1000


@dataclass(frozen=True)
class Seeded:
    """What a seeded database holds (exact: template rows times threads)."""

    threads: int
    checkpoints: int
    blobs: int
    writes: int
    per_thread: int
    seconds: float

    def details(self) -> dict[str, int | float]:
        return {
            "threads": self.threads,
            "checkpoints": self.checkpoints,
            "blobs": self.blobs,
            "writes": self.writes,
            "checkpoints_per_thread": self.per_thread,
            "seed_seconds": round(self.seconds, 1),
        }


async def _template(conn: AsyncConnection[DictRow], turns: int) -> str:
    """One thread with ``turns`` real turns of the service graph; returns its id."""
    thread_id = str(uuid.uuid4())
    await conn.execute(INSERT_THREAD_SQL, (thread_id, OWNER, TEXTS[0]))
    graph = build_graph(OfflineChatModel()).compile(
        checkpointer=AsyncPostgresSaver(conn), name=GRAPH_ID
    )
    for turn in range(turns):
        # As the service's executor configures each run.
        config: RunnableConfig = {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": ""},
            "metadata": {"run_id": str(uuid.uuid4()), "assistant_id": GRAPH_ID},
        }
        text = TEXTS[turn % len(TEXTS)]
        await graph.ainvoke({"messages": [HumanMessage(text)]}, config)
    return thread_id


async def _clone(
    url: str, table: str, template: str, keys: list[tuple[object, ...]], clones: int
) -> None:
    statement = CLONE_SQL[table]
    conn = await connect(url)
    try:
        for lo in range(1, clones + 1, BATCH_THREADS):
            hi = min(lo + BATCH_THREADS - 1, clones)
            for key in keys:
                await conn.execute(statement, (lo, hi, template, *key))  # type: ignore[arg-type]
    finally:
        await conn.close()


async def _vacuum(url: str, table: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    finally:
        await conn.close()


async def seed(url: str, checkpoints: int, *, turns: int = DEFAULT_TURNS) -> Seeded:
    """Fill the (migrated, empty) database at ``url`` with at least ``checkpoints`` rows."""
    began = time.perf_counter()
    conn = await connect(url)
    try:
        template = await _template(conn, turns)
        phases: dict[str, float] = {"template": time.perf_counter() - began}
        counts: dict[str, int] = {}
        keys: dict[str, list[tuple[object, ...]]] = {}
        for table in TABLES:
            cur = await conn.execute(TEMPLATE_ROWS_SQL[table], (template,))  # type: ignore[arg-type]
            keys[table] = [tuple(r.values()) for r in await cur.fetchall()]
            counts[table] = len(keys[table])
        per_thread = counts["checkpoints"]
        threads = max(math.ceil(checkpoints / per_thread), 1)
        clones = threads - 1
        if clones:
            await conn.execute(IDS_SQL, (clones,))
            await conn.execute(CLONE_THREADS_SQL, {"n": clones, "template": template})
            started = time.perf_counter()
            # One connection per table: two backends fill the two big tables side by side.
            await asyncio.gather(
                *(_clone(url, table, template, keys[table], clones) for table in TABLES)
            )
            phases["clone"] = time.perf_counter() - started
            await conn.execute("DROP TABLE seed_ids")
        started = time.perf_counter()
        await asyncio.gather(*(_vacuum(url, table) for table in ("threads", *TABLES)))
        phases["vacuum"] = time.perf_counter() - started
    finally:
        await conn.close()
    seeded = Seeded(
        threads=threads,
        checkpoints=per_thread * threads,
        blobs=counts["checkpoint_blobs"] * threads,
        writes=counts["checkpoint_writes"] * threads,
        per_thread=per_thread,
        seconds=time.perf_counter() - began,
    )
    log.info("seeded", **seeded.details(), phases={k: round(v, 1) for k, v in phases.items()})
    return seeded


# -- templates shared by the benchmarks of one process ---------------------------------------

SHARE_FROM = 100_000
_TEMPLATES: dict[tuple[str, int], tuple[str, Seeded]] = {}


def _drop_templates() -> None:
    for (server_url, _), (name, _) in list(_TEMPLATES.items()):
        try:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        except psycopg.Error:
            pass  # the embedded server may be gone already, with its databases
    _TEMPLATES.clear()


atexit.register(_drop_templates)


async def _admin(server_url: str, statement: sql.Composed) -> None:
    conn = await psycopg.AsyncConnection.connect(server_url, autocommit=True)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def seeded_database(bench: Bench, checkpoints: int) -> AsyncIterator[tuple[str, Seeded]]:
    """A fresh database with at least ``checkpoints`` checkpoint rows (dropped afterwards).

    From SHARE_FROM rows on, the first call for a size seeds a template database and later
    calls in this process copy it; smaller ones are seeded afresh (faster than a copy).
    """
    if checkpoints < SHARE_FROM:
        with bench.database() as url:
            yield url, await seed(url, checkpoints)
        return
    key = (bench.server_url, checkpoints)
    if key not in _TEMPLATES:
        name = f"seed_{checkpoints}_{uuid.uuid4().hex[:8]}"
        await _admin(
            bench.server_url,
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(postgres.TEMPLATE_DB)
            ),
        )
        try:
            seeded = await seed(postgres.with_database(bench.server_url, name), checkpoints)
        except BaseException:
            await _admin(
                bench.server_url,
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
            )
            raise
        _TEMPLATES[key] = (name, seeded)
    template, seeded = _TEMPLATES[key]
    copy = f"t_{uuid.uuid4().hex[:16]}"
    began = time.perf_counter()
    # FILE_COPY: a checkpoint and a copy of the files, much faster than WAL-logging every page.
    await _admin(
        bench.server_url,
        sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(copy), sql.Identifier(template)
        ),
    )
    log.info("seed_copied", checkpoints=seeded.checkpoints, seconds=time.perf_counter() - began)
    try:
        yield postgres.with_database(bench.server_url, copy), seeded
    finally:
        await _admin(
            bench.server_url,
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)),
        )
