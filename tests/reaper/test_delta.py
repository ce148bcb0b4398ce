"""DeltaChannel threads: keepLast stays exact, and kept checkpoints load as before."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.graphs import compiled, concat
from tests.reaper.support import add_thread, capture, chat, policy
from threadkeeper.reaper.delta import DEFAULT_REDUCERS
from threadkeeper.reaper.engine import prune
from threadkeeper.service.checkpointer import FencedPostgresSaver
from threadkeeper.service.db import Pool

SNAPSHOTS_SQL = """
SELECT count(*) AS n FROM checkpoints
WHERE thread_id = %s AND checkpoint -> 'channel_values' -> 'messages' = 'true'::jsonb
"""


async def test_keep_last_3_keeps_exactly_3_across_a_snapshot(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    graph = compiled("agent", pool)
    thread_id = await add_thread(conn)
    # 36 turns write messages more than 100 times: LangGraph itself snapshots once mid-thread.
    await chat(graph, thread_id, *[f"turn {i}: what is {i}+1" for i in range(36)])
    cur = await conn.execute(SNAPSHOTS_SQL, (thread_id,))
    assert (await cur.fetchone()) == {"n": 1}
    with pytest.raises(NotImplementedError):
        await FencedPostgresSaver(pool).aprune([thread_id])
    before = await capture(conn, graph, thread_id)

    summary = await prune(conn, policy(checkpoints={"keepLast": 3}))

    after = await capture(conn, graph, thread_id)
    assert after.ids == {"": before.ids[""][:3]}
    assert after.history == before.history[:3]
    for key, state in after.states.items():
        assert state == before.states[key]
    assert len(after.states[("", before.ids[""][0])].values["messages"]) > 100
    assert summary.snapshots_written == 1
    cur = await conn.execute(SNAPSHOTS_SQL, (thread_id,))
    assert (await cur.fetchone()) == {"n": 1}


async def _ledger_thread(conn: AsyncConnection[DictRow], pool: Pool) -> tuple[Any, str]:
    graph = compiled("ledger", pool)
    thread_id = await add_thread(conn)
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    for i in range(5):
        await graph.ainvoke({"ledger": [f"input {i}"]}, config)
    return graph, thread_id


async def test_a_channel_with_unknown_reducer_keeps_its_chain(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    graph, thread_id = await _ledger_thread(conn, pool)
    before = await capture(conn, graph, thread_id)

    summary = await prune(conn, policy(checkpoints={"keepLast": 2}))

    after = await capture(conn, graph, thread_id)
    # The chain back to the thread's first (snapshot) checkpoint stays: correctness first.
    assert after.ids == before.ids
    assert summary.snapshots_written == 0
    assert after.states == before.states


async def test_a_configured_reducer_makes_keep_last_exact(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    graph, thread_id = await _ledger_thread(conn, pool)
    before = await capture(conn, graph, thread_id)

    summary = await prune(
        conn,
        policy(checkpoints={"keepLast": 2}),
        reducers={**DEFAULT_REDUCERS, "ledger": concat},  # type: ignore[dict-item]
    )

    after = await capture(conn, graph, thread_id)
    assert after.ids == {"": before.ids[""][:2]}
    assert summary.snapshots_written == 1
    for key, state in after.states.items():
        assert state == before.states[key]
    assert after.states[("", before.ids[""][0])].values["ledger"][-1] == "entry 9"
