"""Property: after a history prune, every kept checkpoint loads exactly as before.

Random conversations (tool calls included) of the service's agent graph (DeltaChannel messages)
and of a parent graph calling it as a subgraph (a DeltaChannel snapshotting every 3 updates and a
blob-stored ``operator.add`` channel), with forks (``update_state`` on an older checkpoint) and
plain state updates, pruned with a random ``keepLast`` and maybe a ``maxAge`` cut.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.graphs import LAST_NODE, compiled
from tests.reaper.support import add_thread, capture, chat, checkpoint_ids, policy
from threadkeeper.reaper.candidates import history_pages
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.ids import cutoff_id, id_time
from threadkeeper.service.db import Pool

TEXTS = ["hello", "what is 2+3", "what time is it", "compute 6*7 and the time", "bye"]

say = st.tuples(st.just("say"), st.sampled_from(TEXTS), st.just(0))
fork = st.tuples(st.just("fork"), st.sampled_from(TEXTS), st.integers(0, 30))
update = st.tuples(st.just("update"), st.sampled_from(TEXTS), st.just(0))
actions = st.lists(st.one_of(say, say, fork, update), min_size=1, max_size=5)

CLEAN_SQL = "TRUNCATE threads, runs, checkpoints, checkpoint_blobs, checkpoint_writes CASCADE"

CALL_ROOTS_SQL = """
SELECT DISTINCT checkpoint_ns, metadata -> 'parents' ->> '' AS root
FROM checkpoints WHERE thread_id = %s AND checkpoint_ns <> ''
"""

UNREFERENCED_BLOBS_SQL = """
SELECT count(*) AS n FROM checkpoint_blobs b
WHERE b.thread_id = %(t)s AND NOT EXISTS (
    SELECT 1 FROM checkpoints c
    WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
      AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)
"""

STRAY_WRITES_SQL = """
SELECT count(*) AS n FROM checkpoint_writes w
WHERE w.thread_id = %(t)s AND NOT EXISTS (
    SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id
      AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id)
"""


async def _act(graph: Any, thread_id: str, kind: str, plan: list[tuple[str, str, int]]) -> None:
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    for action, text, back in plan:
        if action == "say":
            await chat(graph, thread_id, text)
            continue
        history = [s.config async for s in graph.aget_state_history(config)]
        if not history:
            await chat(graph, thread_id, text)
            continue
        target = history[back % len(history)] if action == "fork" else history[0]
        await graph.aupdate_state(
            target, {"messages": [HumanMessage(text)]}, as_node=LAST_NODE[kind]
        )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["agent", "parent"]),
    plan=actions,
    keep_last=st.integers(1, 4),
    age_cut=st.one_of(st.none(), st.integers(0, 40)),
)
async def test_kept_checkpoints_load_exactly_as_before(
    conn: AsyncConnection[DictRow],
    pool: Pool,
    kind: str,
    plan: list[tuple[str, str, int]],
    keep_last: int,
    age_cut: int | None,
) -> None:
    graph = compiled(kind, pool)
    try:
        thread_id = await add_thread(conn)
        await chat(graph, thread_id, "hello")
        await _act(graph, thread_id, kind, plan)
        before = await capture(conn, graph, thread_id)

        rules: dict[str, Any] = {"keepLast": keep_last}
        now = None
        root_ids = before.ids[""]
        cutoff = None
        if age_cut is not None:
            # Put the age limit right at one of the root checkpoints.
            moment = id_time(root_ids[age_cut % len(root_ids)])
            assert moment is not None
            rules["maxAge"] = "1d"
            now = moment + timedelta(days=1)
            cutoff = cutoff_id(moment)
        expected_root = set(root_ids[:keep_last]) | {i for i in root_ids if cutoff and i >= cutoff}

        pages = [
            p
            async for p in history_pages(
                conn, after=None, page=100, keep_last=keep_last, cutoff_id=cutoff
            )
        ]
        probe_due = thread_id in {t for p in pages for t in p.due}

        summary = await prune(conn, policy(checkpoints=rules), now=now)

        after = await capture(conn, graph, thread_id)
        # The probe and the prune agree on whether anything was due.
        assert probe_due == (summary.checkpoints_deleted > 0)
        # keepLast is exact: no DeltaChannel chain was kept beyond it.
        assert set(after.ids[""]) == expected_root
        for ns, ids in after.ids.items():
            for cid in ids:
                assert after.states[(ns, cid)] == before.states[(ns, cid)], (ns, cid)
        assert after.history == [c for c in before.history if c in set(after.ids[""])]
        # Surviving subgraph calls started from a kept root checkpoint.
        cur = await conn.execute(CALL_ROOTS_SQL, (thread_id,))
        for row in await cur.fetchall():
            assert row["root"] in expected_root, row
        for leftovers in (STRAY_WRITES_SQL, UNREFERENCED_BLOBS_SQL):
            if summary.checkpoints_deleted:
                cur = await conn.execute(leftovers, {"t": thread_id})
                assert (await cur.fetchone()) == {"n": 0}, leftovers
        # A second run finds nothing more to do.
        again = await prune(conn, policy(checkpoints=rules), now=now)
        assert again.checkpoints_deleted == 0
        assert await checkpoint_ids(conn, thread_id) == after.ids
    finally:
        await conn.execute(CLEAN_SQL)
