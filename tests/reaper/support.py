"""Helpers of the reaper tests: threads with controlled ages, runs with leases, row dumps."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.reaper.policy import API_VERSION, KIND, RetentionPolicy, parse_policy

OWNER = "reaper-test"


def policy_document(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "test-policy", "namespace": "tests"},
        "spec": {"database": {"secretRef": {"name": "threadkeeper-db"}}, **spec},
    }


def policy(**spec: Any) -> RetentionPolicy:
    return parse_policy(policy_document(**spec))


INSERT_THREAD_SQL = """
INSERT INTO threads (thread_id, owner, title, created_at, updated_at, last_message_at, archived_at)
VALUES (%(id)s, %(owner)s, 'test', now() - %(created)s::interval,
        now() - %(created)s::interval, now() - %(spoke)s::interval,
        now() - %(archived)s::interval)
"""


async def add_thread(
    conn: AsyncConnection[DictRow],
    *,
    spoke: timedelta | None = timedelta(0),
    archived: timedelta | None = None,
    created: timedelta | None = None,
) -> str:
    """A thread row whose last message / archiving lies ``spoke`` / ``archived`` in the past.

    ``spoke=None`` makes a thread nobody spoke in (last_message_at NULL).
    """
    thread_id = str(uuid.uuid4())
    if created is None:
        created = max(spoke or timedelta(0), archived or timedelta(0)) + timedelta(hours=1)
    await conn.execute(
        INSERT_THREAD_SQL,
        {"id": thread_id, "owner": OWNER, "created": created, "spoke": spoke, "archived": archived},
    )
    return thread_id


async def idle_conversations(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    count: int = 3,
) -> list[str]:
    """Threads nobody spoke in for 40 days, each with one turn of checkpoints."""
    threads = [await add_thread(conn, spoke=timedelta(days=40)) for _ in range(count)]
    for thread_id in threads:
        await chat(graph, thread_id, "hello")
    return threads


async def db_now(conn: AsyncConnection[DictRow]) -> datetime:
    cur = await conn.execute("SELECT now() AS now")
    row = await cur.fetchone()
    assert row is not None
    value: datetime = row["now"]
    return value


INSERT_RUN_SQL = """
INSERT INTO runs (run_id, thread_id, assistant_id, status, attempt, lease_holder,
                  lease_expires_at, started_at)
VALUES (%(run)s, %(thread)s, 'agent', %(status)s, 1, 'test-replica',
        now() + %(lease)s::interval, now())
"""


async def add_run(
    conn: AsyncConnection[DictRow],
    thread_id: str,
    status: str,
    lease: timedelta | None = None,
) -> UUID:
    """A run; ``lease`` positive = live for that long, negative = expired that long ago."""
    run_id = uuid.uuid4()
    await conn.execute(
        INSERT_RUN_SQL, {"run": run_id, "thread": thread_id, "status": status, "lease": lease}
    )
    return run_id


async def chat(graph: CompiledStateGraph, thread_id: str, *texts: str) -> None:  # type: ignore[type-arg]
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    for text in texts:
        await graph.ainvoke({"messages": [HumanMessage(text)]}, config)


ROW_COUNTS_SQL = """
SELECT
    (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s) AS checkpoints,
    (SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %(t)s) AS blobs,
    (SELECT count(*) FROM checkpoint_writes WHERE thread_id = %(t)s) AS writes,
    (SELECT count(*) FROM runs WHERE thread_id::text = %(t)s) AS runs,
    (SELECT count(*) FROM threads WHERE thread_id::text = %(t)s) AS threads
"""


async def rows_of(conn: AsyncConnection[DictRow], thread_id: str) -> dict[str, int]:
    cur = await conn.execute(ROW_COUNTS_SQL, {"t": thread_id})
    row = await cur.fetchone()
    assert row is not None
    return {k: int(v) for k, v in row.items()}


DUMP_SQL = {
    "checkpoints": """
        SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
               checkpoint::text, metadata::text FROM checkpoints""",
    "checkpoint_blobs": """
        SELECT thread_id, checkpoint_ns, channel, version, type, md5(coalesce(blob, ''))
        FROM checkpoint_blobs""",
    "checkpoint_writes": """
        SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, md5(blob)
        FROM checkpoint_writes""",
    "runs": "SELECT run_id::text, thread_id::text, status FROM runs",
    "threads": "SELECT thread_id::text, last_message_at, archived_at FROM threads",
}


async def dump(
    conn: AsyncConnection[DictRow], thread_id: str | None = None
) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of the five tables (optionally of one thread), for before/after comparisons."""
    result: dict[str, set[tuple[Any, ...]]] = {}
    for table, statement in DUMP_SQL.items():
        cur = await conn.execute(statement)  # type: ignore[arg-type]
        rows = {tuple(r.values()) for r in await cur.fetchall()}
        if thread_id is not None:
            rows = {r for r in rows if r[0] == thread_id or r[1] == thread_id}
        result[table] = rows
    return result


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 30.0, what: str = "condition"
) -> None:
    """Poll an observable condition (not a sleep standing in for one) until true."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


WAITING_REAPER_SQL = """
SELECT pid, query FROM pg_stat_activity
WHERE application_name = 'threadkeeper-reaper' AND datname = current_database()
  AND wait_event_type = 'Lock'
"""

SESSION_ALIVE_SQL = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s) AS alive"


async def waiting_reaper(conn: AsyncConnection[DictRow]) -> tuple[int, str] | None:
    """Backend pid and statement of a reaper session blocked on a lock, if there is one."""
    cur = await conn.execute(WAITING_REAPER_SQL)
    row = await cur.fetchone()
    return (int(row["pid"]), str(row["query"])) if row else None


async def reaper_waits_on_lock(conn: AsyncConnection[DictRow]) -> bool:
    return await waiting_reaper(conn) is not None


async def session_alive(conn: AsyncConnection[DictRow], pid: int) -> bool:
    cur = await conn.execute(SESSION_ALIVE_SQL, (pid,))
    row = await cur.fetchone()
    return bool(row and row["alive"])


@dataclass(frozen=True)
class Loaded:
    values: Any
    next: tuple[str, ...]
    metadata: Any
    created_at: str | None


async def load(graph: CompiledStateGraph, thread_id: str, ns: str, checkpoint_id: str) -> Loaded:  # type: ignore[type-arg]
    configurable: dict[str, str] = {"thread_id": thread_id, "checkpoint_id": checkpoint_id}
    if ns:
        configurable["checkpoint_ns"] = ns
    state = await graph.aget_state({"configurable": configurable})
    return Loaded(state.values, tuple(state.next), state.metadata, state.created_at)


CHECKPOINT_IDS_SQL = """
SELECT checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_id = %s
ORDER BY checkpoint_ns, checkpoint_id DESC
"""


async def checkpoint_ids(conn: AsyncConnection[DictRow], thread_id: str) -> dict[str, list[str]]:
    """Checkpoint ids per namespace, newest first."""
    cur = await conn.execute(CHECKPOINT_IDS_SQL, (thread_id,))
    result: dict[str, list[str]] = {}
    for row in await cur.fetchall():
        result.setdefault(row["checkpoint_ns"], []).append(row["checkpoint_id"])
    return result


@dataclass(frozen=True)
class Captured:
    ids: dict[str, list[str]]
    history: list[str]
    states: dict[tuple[str, str], Loaded]


async def capture(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    thread_id: str,
) -> Captured:
    """How every checkpoint of the thread loads, and the root history order."""
    ids = await checkpoint_ids(conn, thread_id)
    states = {
        (ns, cid): await load(graph, thread_id, ns, cid) for ns, cids in ids.items() for cid in cids
    }
    history = [
        s.config["configurable"]["checkpoint_id"]
        async for s in graph.aget_state_history({"configurable": {"thread_id": thread_id}})
    ]
    return Captured(ids, history, states)
