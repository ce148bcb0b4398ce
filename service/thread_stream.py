"""Following every run of a thread as it happens (``GET /threads/{id}/stream``), from any replica.

A thread's runs execute one after another, so its stream is their streams in the order they
were queued: each run's events (read from ``run_events``, as a run's own stream reads them) up
to its ``end``, then the next run's. An event's id names its run and its number in that run
(``<run_id>:<seq>``), so ``Last-Event-ID`` resumes right after it, whichever replica serves the
rejoin. Without one, the stream starts at the thread's oldest unfinished run, or with the next
run queued if none is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.service import events
from threadkeeper.service.db import Pool
from threadkeeper.service.errors import InvalidInput
from threadkeeper.service.notify import ANY_EVENTS, ANY_RUN, Hub

# Where a new follower starts: the oldest unfinished run, or now.
START_SQL = """
SELECT coalesce(
    (SELECT min(created_at) FROM runs
     WHERE thread_id = %s AND status IN ('pending', 'running')),
    now()
) AS since
"""
RUN_QUEUED_AT_SQL = "SELECT created_at FROM runs WHERE run_id = %s AND thread_id = %s"
RUNS_AFTER_SQL = """
SELECT run_id, created_at FROM runs
WHERE thread_id = %(thread_id)s AND (created_at, run_id) > (%(created_at)s, %(run_id)s)
ORDER BY created_at, run_id
LIMIT 100
"""
# A run's own ``end`` is not the thread stream's: the stream goes on with the thread's next run.
RUN_ONLY = frozenset({"end"})
NO_RUN = UUID(int=0)


@dataclass(frozen=True)
class Position:
    """The last run a follower reached (by queue order) and the last event it saw of it."""

    created_at: datetime
    run_id: UUID
    seq: int


@dataclass(frozen=True)
class ThreadEvent:
    run_id: UUID
    event: events.Event

    @property
    def id(self) -> str:
        return f"{self.run_id}:{self.event.seq}"


def parse_event_id(raw: str) -> tuple[UUID, int]:
    """A thread stream's ``Last-Event-ID``: ``<run_id>:<seq>``."""
    run, _, seq = raw.strip().partition(":")
    try:
        return UUID(run), max(int(seq), 0)
    except ValueError as exc:
        raise InvalidInput("Last-Event-ID must be <run_id>:<number>, as sent") from exc


async def start(
    conn: AsyncConnection[DictRow], thread_id: UUID, last_event_id: str | None
) -> Position:
    """Where a follower starts: right after ``last_event_id``, or at the live runs."""
    if last_event_id:
        run_id, seq = parse_event_id(last_event_id)
        cur = await conn.execute(RUN_QUEUED_AT_SQL, (run_id, thread_id))
        row = await cur.fetchone()
        if row is None:
            raise InvalidInput(f"Last-Event-ID names no run of this thread: {run_id}")
        return Position(row["created_at"], run_id, seq)
    cur = await conn.execute(START_SQL, (thread_id,))
    row = await cur.fetchone()
    assert row is not None
    # Just before the oldest live run: the follower starts with it.
    return Position(row["since"], NO_RUN, 0)


async def follow(
    pool: Pool,
    hub: Hub,
    thread_id: UUID,
    position: Position,
    heartbeat: float,
    closing: asyncio.Event,
) -> AsyncIterator[ThreadEvent | None]:
    """The thread's runs' events from ``position`` on, until ``closing``; None is a heartbeat."""
    if position.run_id != NO_RUN:
        async for item in _run(pool, hub, position.run_id, position.seq, heartbeat, closing):
            yield item
    while not closing.is_set():
        # Armed before reading: a run queued (or its first event written) meanwhile wakes us.
        wakeup = hub.arm(ANY_RUN, ANY_EVENTS)
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    RUNS_AFTER_SQL,
                    {
                        "thread_id": thread_id,
                        "created_at": position.created_at,
                        "run_id": position.run_id,
                    },
                )
                queued = await cur.fetchall()
            for row in queued:
                async for item in _run(pool, hub, row["run_id"], 0, heartbeat, closing):
                    yield item
                position = Position(row["created_at"], row["run_id"], 0)
            if queued:
                continue
            if not await _woken(wakeup, closing, heartbeat):
                yield None
        finally:
            hub.disarm(wakeup, ANY_RUN, ANY_EVENTS)


async def _run(
    pool: Pool, hub: Hub, run_id: UUID, after: int, heartbeat: float, closing: asyncio.Event
) -> AsyncIterator[ThreadEvent | None]:
    async for event in events.follow(pool, hub, run_id, after, heartbeat, closing):
        if event is None:
            yield None
        elif event.event not in RUN_ONLY:
            yield ThreadEvent(run_id, event)


async def _woken(wakeup: asyncio.Event, closing: asyncio.Event, seconds: float) -> bool:
    """Wait for a notification or the replica closing; False when ``seconds`` passed first."""
    waits = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(closing.wait())]
    done, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return bool(done)
