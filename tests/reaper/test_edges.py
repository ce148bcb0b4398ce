"""The engine at its edges: ages past the earliest checkpoint time, archived threads still in
use, databases that refuse the reaper. Real Postgres, real conversations of the agent graph."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.support import (
    add_thread,
    chat,
    checkpoint_ids,
    idle_conversations,
    policy,
    rows_of,
)
from threadkeeper.reaper.db import connect
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.summary import Outcome

DAY = timedelta(days=1)
# A clock whose 100-year cutoff lies before the UUID epoch (1582-10-15): the cutoff id would
# wrap around to "after every checkpoint" if it were masked instead of saturated.
EARLY = datetime(1650, 1, 1, tzinfo=UTC)


async def test_an_age_before_the_uuid_epoch_deletes_no_checkpoint(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    thread_id = await add_thread(conn)
    await chat(graph, thread_id, "hello", "what is 2+3", "bye")
    before = await checkpoint_ids(conn, thread_id)

    rules = {"keepLast": 1, "maxAge": "36525d"}
    summary = await prune(conn, policy(checkpoints=rules), now=EARLY)

    assert summary.outcome is Outcome.SUCCEEDED
    assert summary.checkpoints_deleted == 0
    assert await checkpoint_ids(conn, thread_id) == before


async def test_an_orphan_age_before_the_uuid_epoch_deletes_no_orphan(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    orphan = "5b9f2f43-3a43-4bb0-9b52-bd0c7a1d7e6e"
    await chat(graph, orphan, "hello")
    before = await rows_of(conn, orphan)

    summary = await prune(conn, policy(orphans={"olderThan": "36525d"}), now=EARLY)

    assert summary.threads_deleted.orphan == 0
    assert await rows_of(conn, orphan) == before


async def test_archived_for_counts_from_the_last_message(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> None:
    """Archived 20 days ago but spoken in seconds ago: still in use, kept."""
    in_use = await add_thread(conn, archived=20 * DAY, spoke=timedelta(seconds=5))
    spoke_after_archiving = await add_thread(conn, archived=20 * DAY, spoke=6 * DAY)
    abandoned = await add_thread(conn, archived=20 * DAY, spoke=10 * DAY)
    never_spoken = await add_thread(conn, archived=20 * DAY, spoke=None)
    for thread_id in (in_use, spoke_after_archiving, abandoned):
        await chat(graph, thread_id, "hi")
    await conn.execute(
        "UPDATE threads SET last_message_at = now() - interval '5 seconds' WHERE thread_id = %s",
        (in_use,),
    )

    summary = await prune(conn, policy(threads={"archivedFor": "7d"}), dry_run=True)
    assert summary.threads_deleted.archived == 2
    summary = await prune(conn, policy(threads={"archivedFor": "7d"}))

    assert summary.threads_deleted.archived == 2
    assert (await rows_of(conn, in_use))["threads"] == 1
    assert (await rows_of(conn, spoke_after_archiving))["threads"] == 1
    assert (await rows_of(conn, abandoned))["threads"] == 0
    assert (await rows_of(conn, never_spoken))["threads"] == 0
    assert summary.backlog == 0


async def test_a_read_only_role_fails_the_run_once_with_the_reason(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    read_only_url: str,
) -> None:
    threads = await idle_conversations(conn, graph)
    reader = await connect(read_only_url)
    try:
        summary = await prune(reader, policy(threads={"maxIdle": "30d"}))
    finally:
        await reader.close()

    assert summary.outcome is Outcome.FAILED
    assert summary.message.startswith("interrupted: permission denied")
    assert "needs SELECT, UPDATE and DELETE on threads" in summary.message
    # Stopped at the first refusal instead of failing every thread in turn.
    assert summary.threads_failed == 0
    assert summary.threads_deleted.total == 0
    for thread_id in threads:
        assert (await rows_of(conn, thread_id))["threads"] == 1


@pytest.mark.parametrize(
    "rules",
    [
        {"threads": {"maxIdle": "30d", "archivedFor": "7d"}},
        {"checkpoints": {"keepLast": 1}},
        {"orphans": {"olderThan": "1d"}},
    ],
)
async def test_a_database_without_threadkeepers_tables_fails_the_run(
    empty_database_url: str, rules: dict[str, dict[str, object]]
) -> None:
    empty = await connect(empty_database_url)
    try:
        summary = await prune(empty, policy(**rules))
    finally:
        await empty.close()
    assert summary.outcome is Outcome.FAILED
    assert "not a threadkeeper database" in summary.message
    assert "does not exist" in summary.message
