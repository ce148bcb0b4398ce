"""The one-statement load's plan does not depend on the planner's statistics.

A new deployment's tables have never been analyzed (autovacuum gets to them later, or, with
autovacuum off, never). The planner then guesses sizes, and a join against a thread's rows may
become a scan of all of them for every step of the history walk: the load's cost grows with
the conversation. The load is written so that every read of LangGraph's tables is a probe by
key from the row that needs it, whatever the statistics say; here the rows it examines on a
never-analyzed database are compared with the same load once the database is analyzed.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from threadkeeper.service import checkpoint_load
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.checkpointer import FencedPostgresSaver, history_channels
from threadkeeper.service.db import Pool

TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
NEVER_ANALYZED = """
SELECT count(*) FROM pg_class
WHERE relname = ANY(%s) AND reltuples < 0
"""
EXPLAIN = b"EXPLAIN (ANALYZE, FORMAT JSON) "
# The load as a server-side prepared statement, as the service's pooled connections run it.
PARAMETERS = {
    "thread_id": "$1",
    "checkpoint_ns": "$2",
    "checkpoint_id": "$3",
    "channels": "$4",
    "held": "$5",
}
PREPARE = "PREPARE load(text, text, text, text[], text[]) AS "
EXECUTE = "EXECUTE load(%s, '', NULL, %s, '{}')"


async def _talk(pool: Pool, thread_id: str, turns: int) -> None:
    builder = build_graph(OfflineChatModel())
    graph = builder.compile(checkpointer=FencedPostgresSaver(pool))
    for turn in range(1, turns + 1):
        message = {"role": "user", "content": f"turn {turn}: what is {turn}*3"}
        await graph.ainvoke({"messages": [message]}, {"configurable": {"thread_id": thread_id}})


def _examined(node: dict[str, Any]) -> int:
    """Rows the plan read from LangGraph's tables or threw away joining them, all loops."""
    loops = int(node.get("Actual Loops", 1))
    total = int(node.get("Rows Removed by Join Filter", 0)) * loops
    if node.get("Relation Name") in TABLES:
        kept = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        total += int(kept * loops)
    return total + sum(_examined(child) for child in node.get("Plans", []))


def _channels() -> list[str]:
    return list(history_channels(build_graph(OfflineChatModel()).compile()))


def _load_cost(conn: psycopg.Connection[Any], thread_id: str) -> int:
    params = {
        "thread_id": thread_id,
        "checkpoint_ns": "",
        "checkpoint_id": None,
        "channels": _channels(),
        "held": [],
    }
    row = conn.execute(EXPLAIN + checkpoint_load.load_sql(False), params).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    return _examined(plan)


def _prepare_generic(conn: psycopg.Connection[Any]) -> None:
    """The load prepared on ``conn``, its generic plan made (and kept) at the first execute."""
    statement = checkpoint_load.load_sql(False).decode()
    for name, placeholder in PARAMETERS.items():
        statement = statement.replace(f"%({name})s", placeholder)
    conn.execute(b"SET plan_cache_mode = force_generic_plan")
    conn.execute((PREPARE + statement).encode())


def _prepared_cost(conn: psycopg.Connection[Any], thread_id: str) -> int:
    # EXECUTE's arguments are bound here: the server cannot type parameters inside EXPLAIN.
    cur = psycopg.ClientCursor(conn)
    row = cur.execute((EXPLAIN.decode() + EXECUTE).encode(), (thread_id, _channels())).fetchone()
    assert row is not None
    return _examined(row[0][0]["Plan"])


def _autovacuum_off(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)".encode())


async def test_the_load_examines_as_few_rows_unanalyzed_as_analyzed(
    database_url: str, pool: Pool
) -> None:
    _autovacuum_off(database_url)
    # Other threads, so that analyzed statistics favour probes by key over scans.
    for _ in range(3):
        await _talk(pool, str(uuid.uuid4()), turns=5)
    long = str(uuid.uuid4())
    # Fewer turns than a snapshot takes: the walk goes back to the first checkpoint.
    await _talk(pool, long, turns=30)

    with psycopg.connect(database_url, autocommit=True) as conn:
        never = conn.execute(NEVER_ANALYZED, (list(TABLES),)).fetchone()
        assert never == (len(TABLES),), "the tables were analyzed before the first load"
        unanalyzed = _load_cost(conn, long)
        conn.execute(b"ANALYZE " + ", ".join(TABLES).encode())
        never = conn.execute(NEVER_ANALYZED, (list(TABLES),)).fetchone()
        assert never == (0,)
        analyzed = _load_cost(conn, long)
    assert analyzed > 0
    assert unanalyzed <= analyzed, (unanalyzed, analyzed)


async def test_a_generic_plan_made_on_tiny_tables_stays_a_probe_by_key(
    database_url: str, pool: Pool
) -> None:
    """A pooled connection prepares the load during a thread's first turns and keeps that
    generic plan while the thread grows: it must examine no more rows than a plan made once the
    tables are analyzed."""
    _autovacuum_off(database_url)
    thread_id = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as early:
        await _talk(pool, thread_id, turns=2)
        _prepare_generic(early)
        _prepared_cost(early, thread_id)
        await _talk(pool, thread_id, turns=28)
        kept = _prepared_cost(early, thread_id)
    with psycopg.connect(database_url, autocommit=True) as late:
        late.execute(b"ANALYZE " + ", ".join(TABLES).encode())
        _prepare_generic(late)
        analyzed = _prepared_cost(late, thread_id)
    assert analyzed > 0
    assert kept <= analyzed, (kept, analyzed)
