"""A thread stream's two sources, its runs and its state updates, keep the order a client made
them in: an update made before a run was queued comes before that run's start."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg

from tests.support.runs import run_with_events
from threadkeeper.service import thread_stream
from threadkeeper.service.db import Pool
from threadkeeper.service.notify import Hub
from threadkeeper.service.thread_stream import (
    NO_RUN,
    STATE_UPDATE_EVENT,
    Cursor,
    Position,
    ThreadEvent,
    ThreadStreamMode,
)

MODES = frozenset({ThreadStreamMode.LIFECYCLE, ThreadStreamMode.STATE_UPDATE})
UPDATE_ID = "1f0a0000-0000-6000-8000-000000000001"


async def _an_update_then_a_run(url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A thread whose state was updated (a checkpoint with source ``update``), then a run that
    started and ended."""
    thread_id = uuid.uuid4()
    events = "(%s, 1, 'metadata', '{}'), (%s, 2, 'end', 'null')"
    run_id = await run_with_events(url, "success", events, thread_id=thread_id)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as w:
        await w.execute(
            "INSERT INTO checkpoints (thread_id, checkpoint_id, checkpoint, metadata)"
            " VALUES (%s, %s, '{}', '{\"source\": \"update\"}')",
            (str(thread_id), UPDATE_ID),
        )
    return thread_id, run_id


async def _first(items: AsyncIterator[ThreadEvent | None], n: int) -> list[ThreadEvent]:
    """The first ``n`` events (no heartbeat comes: nothing waits that long)."""
    got: list[ThreadEvent] = []
    async with asyncio.timeout(30):
        async for item in items:
            assert item is not None
            got.append(item)
            if len(got) == n:
                return got
    raise AssertionError(f"the stream ended after {got}")


async def _described(checkpoint_id: str) -> Any:
    return {"checkpoint_id": checkpoint_id}


# From before the run and the update: both are the follower's to see.
SINCE_LONG_AGO = Cursor(Position(datetime(2000, 1, 1, tzinfo=UTC), NO_RUN, 0), "")


async def test_the_runs_source_sends_the_updates_made_before_a_run_first(
    database_url: str, pool: Pool
) -> None:
    """Regression: the two sources were merged as they came, so a follower woken by a new run
    could read its start before the other source had read the update made before it. The runs
    source alone now gets there too: before a run it sends every update made so far."""
    thread_id, run_id = await _an_update_then_a_run(database_url)
    feed = thread_stream.UpdateFeed(pool, thread_id, "", _described)
    closing = asyncio.Event()
    runs = thread_stream._runs(
        pool, Hub(database_url), thread_id, SINCE_LONG_AGO.runs, MODES, feed, 3600.0, closing
    )
    got = await _first(runs, 3)
    await runs.aclose()
    assert [item.event for item in got] == [STATE_UPDATE_EVENT, "metadata", "metadata"]
    assert got[0].cursor.update == UPDATE_ID
    assert '"run_done"' in got[2].raw and str(run_id) in got[2].raw

    # The feed is spent: the updates source, following on, sends the update no second time.
    assert [event async for event in feed.drain()] == []


async def test_a_follower_gets_each_update_once_and_before_the_next_run(
    database_url: str, pool: Pool
) -> None:
    """Both sources together, through ``follow``: whichever reads the update, it is sent once,
    before the start of the run queued after it."""
    thread_id, run_id = await _an_update_then_a_run(database_url)
    closing = asyncio.Event()
    stream = thread_stream.follow(
        pool, Hub(database_url), thread_id, SINCE_LONG_AGO, MODES, _described, 3600.0, closing
    )
    got = await _first(stream, 3)
    await stream.aclose()  # type: ignore[attr-defined]
    assert [item.event for item in got] == [STATE_UPDATE_EVENT, "metadata", "metadata"]
    # The ids carry both positions: the last names the run's end and the update.
    assert got[-1].id == f"{run_id}:2;{UPDATE_ID}"
    assert (got[0].event, got[0].raw) == (STATE_UPDATE_EVENT, f'{{"checkpoint_id":"{UPDATE_ID}"}}')
