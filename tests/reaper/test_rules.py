"""Each retention rule against real conversations of the agent graph."""

from __future__ import annotations

from datetime import timedelta

from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.graphs import compiled
from tests.reaper.support import (
    add_run,
    add_thread,
    capture,
    chat,
    checkpoint_ids,
    policy,
    rows_of,
)
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.ids import id_time
from threadkeeper.reaper.summary import Outcome
from threadkeeper.service.db import Pool

DAY = timedelta(days=1)
GONE = {"checkpoints": 0, "blobs": 0, "writes": 0, "runs": 0, "threads": 0}


async def test_idle_threads_are_deleted_whole(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    stale = await add_thread(conn, spoke=40 * DAY)
    silent = await add_thread(conn, spoke=None, created=40 * DAY)
    fresh = await add_thread(conn, spoke=2 * DAY)
    young_silent = await add_thread(conn, spoke=None, created=DAY)
    archived_stale = await add_thread(conn, spoke=40 * DAY, archived=DAY)
    for thread_id in (stale, fresh, archived_stale):
        await chat(graph, thread_id, "hello", "what is 2+3")
    await add_run(conn, stale, "success")
    before_fresh = await rows_of(conn, fresh)

    summary = await prune(conn, policy(threads={"maxIdle": "30d"}))

    assert summary.outcome is Outcome.SUCCEEDED
    assert summary.threads_deleted.idle == 2
    assert summary.threads_deleted.total == 2
    assert await rows_of(conn, stale) == GONE
    assert await rows_of(conn, silent) == GONE
    assert await rows_of(conn, fresh) == before_fresh
    assert (await rows_of(conn, young_silent))["threads"] == 1
    # Archived threads answer to archivedFor only.
    assert (await rows_of(conn, archived_stale))["checkpoints"] > 0
    assert summary.runs_deleted == 1
    assert summary.checkpoints_deleted > 0 and summary.writes_deleted > 0
    assert summary.backlog == 0


async def test_archived_threads_are_deleted_after_archived_for(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    old = await add_thread(conn, spoke=10 * DAY, archived=8 * DAY)
    recent = await add_thread(conn, spoke=10 * DAY, archived=6 * DAY)
    live = await add_thread(conn, spoke=10 * DAY)
    for thread_id in (old, recent, live):
        await chat(graph, thread_id, "hi")

    summary = await prune(conn, policy(threads={"archivedFor": "7d"}))

    assert summary.threads_deleted.archived == 1
    assert summary.threads_deleted.idle == 0
    assert await rows_of(conn, old) == GONE
    assert (await rows_of(conn, recent))["checkpoints"] > 0
    assert (await rows_of(conn, live))["checkpoints"] > 0


async def test_history_depth_keeps_last_n_per_thread_and_they_load_as_before(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    deep = await add_thread(conn)
    shallow = await add_thread(conn)
    await chat(graph, deep, "hello", "what is 2+3", "what time is it", "bye")
    await chat(graph, shallow, "hi")
    before = await capture(conn, graph, deep)
    shallow_rows = await rows_of(conn, shallow)

    summary = await prune(conn, policy(checkpoints={"keepLast": 4}))

    after = await capture(conn, graph, deep)
    assert after.ids[""] == before.ids[""][:4]
    assert after.history == before.history[:4]
    for key, state in after.states.items():
        assert state == before.states[key]
    # A one-turn thread has no more than 4 checkpoints: nothing to do there.
    assert shallow_rows["checkpoints"] <= 4
    assert await rows_of(conn, shallow) == shallow_rows
    assert summary.threads_pruned == 1
    assert summary.checkpoints_deleted == len(before.ids[""]) - 4
    # The oldest kept checkpoint now stores the messages it used to rebuild from ancestors.
    assert summary.snapshots_written == 1


async def test_max_age_only_deletes_old_checkpoints_beyond_keep_last(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    thread_id = await add_thread(conn)
    await chat(graph, thread_id, "hello", "what is 2+3", "bye")
    ids = (await checkpoint_ids(conn, thread_id))[""]
    # "now" one week after the 6th newest checkpoint: it and everything newer is young.
    moment = id_time(ids[5])
    assert moment is not None
    rules = {"keepLast": 2, "maxAge": "7d"}

    summary = await prune(conn, policy(checkpoints=rules), now=moment + timedelta(days=7))

    assert (await checkpoint_ids(conn, thread_id))[""] == ids[:6]
    assert summary.checkpoints_deleted == len(ids) - 6


async def test_blobs_no_kept_checkpoint_references_are_collected(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    graph = compiled("parent", pool)  # "notes" is stored as a blob per version
    thread_id = await add_thread(conn)
    await chat(graph, thread_id, "hello", "bye")
    # What a rolled-back run leaves behind: a blob no checkpoint names.
    await conn.execute(
        "INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)"
        " VALUES (%s, '', 'notes', '999.5', 'msgpack', '\\x90')",
        (thread_id,),
    )
    await prune(conn, policy(checkpoints={"keepLast": 1}))
    cur = await conn.execute(UNREFERENCED_BLOBS_SQL, (thread_id,))
    assert await cur.fetchall() == []


UNREFERENCED_BLOBS_SQL = """
SELECT b.channel, b.version FROM checkpoint_blobs b
WHERE b.thread_id = %s AND NOT EXISTS (
    SELECT 1 FROM checkpoints c
    WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
      AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)
"""


async def test_nothing_is_pruned_twice(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    thread_id = await add_thread(conn)
    await chat(graph, thread_id, "hello", "bye")
    first = await prune(conn, policy(checkpoints={"keepLast": 2}))
    second = await prune(conn, policy(checkpoints={"keepLast": 2}))
    assert first.threads_pruned == 1
    assert second.threads_pruned == 0
    assert second.checkpoints_deleted == 0


async def test_a_pruned_thread_keeps_working(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    thread_id = await add_thread(conn)
    await chat(graph, thread_id, "my name is Ada", "what is 2+3")
    await prune(conn, policy(checkpoints={"keepLast": 1}))
    await chat(graph, thread_id, "bye")
    state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    messages = state.values["messages"]
    assert 'You first said: "my name is Ada"' in messages[-1].text
    assert "Turn 3." in messages[-1].text


async def test_orphans_are_deleted_once_old(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    orphan = "not-a-uuid-thread"
    orphan_uuid = "5b9f2f43-3a43-4bb0-9b52-bd0c7a1d7e6e"
    owned = await add_thread(conn)
    for thread_id in (orphan, orphan_uuid, owned):
        await chat(graph, thread_id, "hello")
    newest = max(max(ids) for ids in (await checkpoint_ids(conn, orphan_uuid)).values())
    moment = id_time(newest)
    assert moment is not None

    # Checkpoint ids that are not LangGraph's time-ordered ones tell no age: left alone.
    await conn.execute(
        "INSERT INTO checkpoints (thread_id, checkpoint_id, checkpoint) VALUES (%s, %s, '{}')",
        ("custom-ids", "0001"),
    )

    too_young = await prune(conn, policy(orphans={"olderThan": "30d"}), now=moment + 29 * DAY)
    assert too_young.threads_deleted.orphan == 0

    summary = await prune(conn, policy(orphans={"olderThan": "30d"}), now=moment + 31 * DAY)

    assert summary.threads_deleted.orphan == 2
    for thread_id in (orphan, orphan_uuid):
        assert await rows_of(conn, thread_id) == GONE
    assert (await rows_of(conn, owned))["checkpoints"] > 0
    assert (await rows_of(conn, "custom-ids"))["checkpoints"] == 1


async def test_subgraph_namespaces_go_with_their_root(
    conn: AsyncConnection[DictRow], pool: Pool
) -> None:
    graph = compiled("parent", pool)
    thread_id = await add_thread(conn)
    await chat(graph, thread_id, "hello", "what is 2+3", "bye")
    before = await capture(conn, graph, thread_id)
    assert len([ns for ns in before.ids if ns]) == 3

    await prune(conn, policy(checkpoints={"keepLast": 1}))

    after = await capture(conn, graph, thread_id)
    # Only the last turn's subgraph call started from a kept root checkpoint... and even that
    # one's root is older than the newest root checkpoint, so no call namespace survives.
    assert list(after.ids) == [""]
    assert after.ids[""] == before.ids[""][:1]
    assert after.states == {k: before.states[k] for k in after.states}
