"""Following every run of a thread as it happens (``GET /threads/{id}/stream``), from any replica.

A thread's runs execute one after another, so its stream is their streams in the order they
were queued: each run's events (read from ``run_events``, as a run's own stream reads them) up
to its ``end``, then the next run's. An event's id names its run and its number in that run
(``<run_id>:<seq>``), so ``Last-Event-ID`` resumes right after it, whichever replica serves the
rejoin. Without one, the stream starts at the thread's oldest unfinished run, or with the next
run queued if none is.

What a follower gets is its modes' (the Agent Server's): ``run_modes`` every event of every run;
``lifecycle`` only each run's start (its ``metadata``, once per attempt) and end (``metadata``
``{"status": "run_done"}``); ``state_update`` each ``POST /threads/{id}/state`` after the start,
read from the thread's checkpoints (an update is one with source ``update``), as a
``state_update`` event with the state it made. A stream that follows updates numbers its events
``<run part>;<checkpoint_id>``, so ``Last-Event-ID`` resumes both exactly. Updates come as they
are made, and every update made before a run is read comes before that run's start: a client
that updates the state and then starts a run sees them in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Self
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.service import events
from threadkeeper.service.db import Pool
from threadkeeper.service.domain import RunEvent
from threadkeeper.service.errors import InvalidInput
from threadkeeper.service.lease import unfinished_sql
from threadkeeper.service.notify import (
    ANY_EVENTS,
    ANY_RUN,
    EVENTS_CHANNEL,
    NOTIFY_SQL,
    Hub,
    woken,
)
from threadkeeper.service.serialize import dumps

# Where a new follower starts: the oldest unfinished run, or now.
START_SQL = f"""
SELECT coalesce(
    (SELECT min(created_at) FROM runs WHERE thread_id = %s AND {unfinished_sql()}),
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
# The thread's state updates (root namespace) after a checkpoint id; ids sort by time.
UPDATES_AFTER_SQL = """
SELECT checkpoint_id FROM checkpoints
WHERE thread_id = %(thread_id)s AND checkpoint_ns = '' AND metadata->>'source' = 'update'
  AND checkpoint_id > %(after)s
ORDER BY checkpoint_id
LIMIT 100
"""
LATEST_UPDATE_SQL = """
SELECT coalesce(max(checkpoint_id), '') AS latest FROM checkpoints
WHERE thread_id = %s AND checkpoint_ns = '' AND metadata->>'source' = 'update'
"""
NO_RUN = UUID(int=0)
# The end of a run, as a thread stream reports it (in a ``metadata`` event).
RUN_DONE = "run_done"
STATE_UPDATE_EVENT = "state_update"
RUN_PART_SINCE = "since="
UPDATE_SEPARATOR = ";"


class ThreadStreamMode(StrEnum):
    """What a thread stream carries (``stream_modes``, the SDK's ``stream_mode``)."""

    RUN_MODES = "run_modes"
    LIFECYCLE = "lifecycle"
    STATE_UPDATE = "state_update"


RUN_FOLLOWING = frozenset({ThreadStreamMode.RUN_MODES, ThreadStreamMode.LIFECYCLE})
# Describes one state update (a checkpoint id) as its event's data; None when it is gone.
Describe = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True)
class Position:
    """The last run a follower reached (by queue order) and the last event it saw of it."""

    created_at: datetime
    run_id: UUID
    seq: int

    @classmethod
    def queued(cls, row: Mapping[str, Any]) -> Self:
        """A run of ``RUNS_AFTER_SQL``, before its first event."""
        return cls(row["created_at"], row["run_id"], 0)


# Where an update's event stands in the runs: nowhere (``follow`` keeps the runs part).
NO_RUNS = Position(datetime.min, NO_RUN, 0)


@dataclass(frozen=True)
class Cursor:
    """Where a follower is: in the thread's runs, and in its state updates (the last update's
    checkpoint id, "" before any; None when it does not follow them)."""

    runs: Position
    update: str | None = None

    @property
    def id(self) -> str:
        if self.runs.run_id == NO_RUN:
            run_part = RUN_PART_SINCE + self.runs.created_at.isoformat()
        else:
            run_part = f"{self.runs.run_id}:{self.runs.seq}"
        if self.update is None:
            return run_part
        return run_part + UPDATE_SEPARATOR + self.update


@dataclass(frozen=True)
class ThreadEvent:
    """One event of the stream and the cursor right after it (its id)."""

    cursor: Cursor
    event: str
    raw: str  # the event's data, JSON

    @property
    def id(self) -> str:
        return self.cursor.id


def _bad_id() -> InvalidInput:
    return InvalidInput("Last-Event-ID must be an id this stream sent")


@dataclass(frozen=True)
class LastEventId:
    """A thread stream's ``Last-Event-ID``, parsed: the run and event reached (or the time the
    stream started, before any run), and the state update reached when it follows them."""

    reached: UUID | datetime
    seq: int
    update: str | None


def parse_event_id(raw: str) -> LastEventId:
    run_part, separator, update = raw.strip().partition(UPDATE_SEPARATOR)
    try:
        if run_part.startswith(RUN_PART_SINCE):
            since = datetime.fromisoformat(run_part.removeprefix(RUN_PART_SINCE))
            return LastEventId(since, 0, update)
        run, _, seq = run_part.partition(":")
        return LastEventId(UUID(run), max(int(seq), 0), update if separator else None)
    except ValueError as exc:
        raise _bad_id() from exc


async def _queued_at(conn: AsyncConnection[DictRow], thread_id: UUID, run_id: UUID) -> datetime:
    """When the thread's run was queued; a run of no such thread is bad input."""
    cur = await conn.execute(RUN_QUEUED_AT_SQL, (run_id, thread_id))
    row = await cur.fetchone()
    if row is None:
        raise InvalidInput(f"Last-Event-ID names no run of this thread: {run_id}")
    queued_at: datetime = row["created_at"]
    return queued_at


async def _since(conn: AsyncConnection[DictRow], thread_id: UUID) -> datetime:
    cur = await conn.execute(START_SQL, (thread_id,))
    row = await cur.fetchone()
    assert row is not None
    since: datetime = row["since"]
    return since


async def start(
    conn: AsyncConnection[DictRow],
    thread_id: UUID,
    last_event_id: str | None,
    modes: frozenset[ThreadStreamMode],
) -> Cursor:
    """Where a follower starts: right after ``last_event_id``, or at the live runs and the
    thread's latest state update."""
    following_updates = ThreadStreamMode.STATE_UPDATE in modes
    if last_event_id:
        last = parse_event_id(last_event_id)
        if isinstance(last.reached, datetime):
            runs = Position(last.reached, NO_RUN, 0)
        else:
            runs = Position(await _queued_at(conn, thread_id, last.reached), last.reached, last.seq)
        if last.update is not None or not following_updates:
            return Cursor(runs, last.update if following_updates else None)
        return Cursor(runs, await _latest_update(conn, thread_id))
    # Just before the oldest live run: the follower starts with it.
    runs = Position(await _since(conn, thread_id), NO_RUN, 0)
    return Cursor(runs, await _latest_update(conn, thread_id) if following_updates else None)


async def _latest_update(conn: AsyncConnection[DictRow], thread_id: UUID) -> str:
    cur = await conn.execute(LATEST_UPDATE_SQL, (str(thread_id),))
    row = await cur.fetchone()
    return str(row["latest"]) if row else ""


async def _updates_after(conn: AsyncConnection[DictRow], thread_id: UUID, after: str) -> list[str]:
    """The checkpoint ids of the thread's next state updates after ``after``."""
    cur = await conn.execute(UPDATES_AFTER_SQL, {"thread_id": str(thread_id), "after": after})
    return [str(row["checkpoint_id"]) for row in await cur.fetchall()]


async def _runs_after(
    conn: AsyncConnection[DictRow], thread_id: UUID, at: Position
) -> list[Position]:
    """The thread's next runs queued after ``at``, each before its first event."""
    cur = await conn.execute(
        RUNS_AFTER_SQL, {"thread_id": thread_id, "created_at": at.created_at, "run_id": at.run_id}
    )
    return [Position.queued(row) for row in await cur.fetchall()]


async def announce_update(conn: AsyncConnection[DictRow], thread_id: UUID) -> None:
    """Wake the thread's followers on every replica: its state was updated."""
    await conn.execute(NOTIFY_SQL, (EVENTS_CHANNEL, f"thread:{thread_id}"))


async def follow(
    pool: Pool,
    hub: Hub,
    thread_id: UUID,
    cursor: Cursor,
    modes: frozenset[ThreadStreamMode],
    describe: Describe,
    heartbeat: float,
    closing: asyncio.Event,
) -> AsyncIterator[ThreadEvent | None]:
    """The stream from ``cursor`` on, until ``closing``; None is a heartbeat."""
    sources: list[AsyncGenerator[ThreadEvent | None, None]] = []
    feed = None if cursor.update is None else UpdateFeed(pool, thread_id, cursor.update, describe)
    if modes & RUN_FOLLOWING:
        sources.append(_runs(pool, hub, thread_id, cursor.runs, modes, feed, heartbeat, closing))
    if feed is not None:
        sources.append(_updates(hub, feed, heartbeat, closing))
    async for item in _merged(sources):
        if item is None:
            yield None
            continue
        # Each source says where it got to; the id carries where all of them are.
        if isinstance(item, ThreadEvent):
            runs = item.cursor.runs if item.cursor.runs.run_id != NO_RUN else cursor.runs
            update = cursor.update if item.cursor.update is None else item.cursor.update
            cursor = Cursor(runs, update)
            yield replace(item, cursor=cursor)


async def _merged(sources: list[AsyncGenerator[Any, None]]) -> AsyncIterator[Any]:
    """The items of every source as they come, until all end; a source's failure is raised."""
    if len(sources) == 1:
        async with contextlib.aclosing(sources[0]) as only:
            async for item in only:
                yield item
        return
    # One item at a time per source: a slow client holds the sources back, not memory.
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=len(sources))

    async def pump(source: AsyncGenerator[Any, None]) -> None:
        async with contextlib.aclosing(source):
            try:
                async for item in source:
                    await queue.put((False, item))
            except Exception as exc:
                await queue.put((True, exc))
                return
        await queue.put((True, None))

    tasks = [asyncio.create_task(pump(source)) for source in sources]
    try:
        running = len(tasks)
        while running:
            done, item = await queue.get()
            if not done:
                yield item
            elif isinstance(item, Exception):
                raise item
            else:
                running -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class UpdateFeed:
    """The thread's state updates after a checkpoint, read by whichever source gets there first:
    the updates source as they are made, and the runs source before each run it starts, so an
    update made before a run was queued is never sent after that run's start. One reader at a
    time, holding the feed until its events are taken, so the two never send updates out of
    order or twice."""

    def __init__(self, pool: Pool, thread_id: UUID, after: str, describe: Describe) -> None:
        self._pool = pool
        self._thread_id = thread_id
        self._after = after
        self._describe = describe
        self._lock = asyncio.Lock()

    async def drain(self) -> AsyncGenerator[ThreadEvent, None]:
        """Every update made so far after the last one sent, as ``state_update`` events."""
        async with self._lock:
            while True:
                async with self._pool.connection() as conn:
                    updates = await _updates_after(conn, self._thread_id, self._after)
                if not updates:
                    return
                for checkpoint_id in updates:
                    self._after = checkpoint_id
                    data = await self._describe(checkpoint_id)
                    if data is not None:
                        raw = dumps(data).decode()
                        yield ThreadEvent(Cursor(NO_RUNS, checkpoint_id), STATE_UPDATE_EVENT, raw)


async def _updates(
    hub: Hub, feed: UpdateFeed, heartbeat: float, closing: asyncio.Event
) -> AsyncGenerator[ThreadEvent | None, None]:
    """The thread's state updates as they are made."""
    while not closing.is_set():
        wakeup = hub.arm(ANY_EVENTS)
        try:
            async with contextlib.aclosing(feed.drain()) as updates:
                async for update in updates:
                    yield update
            if not await woken(wakeup, closing, heartbeat):
                yield None
        finally:
            hub.disarm(wakeup, ANY_EVENTS)


async def _runs(
    pool: Pool,
    hub: Hub,
    thread_id: UUID,
    position: Position,
    modes: frozenset[ThreadStreamMode],
    feed: UpdateFeed | None,
    heartbeat: float,
    closing: asyncio.Event,
) -> AsyncGenerator[ThreadEvent | None, None]:
    """The thread's runs' events from ``position`` on, as ``modes`` show them; with a feed,
    the updates made before each run starts come before it."""
    if position.run_id != NO_RUN:
        async for item in _run(pool, hub, position, modes, heartbeat, closing):
            yield item
    while not closing.is_set():
        # Armed before reading: a run queued (or its first event written) meanwhile wakes us.
        wakeup = hub.arm(ANY_RUN, ANY_EVENTS)
        try:
            async with pool.connection() as conn:
                queued = await _runs_after(conn, thread_id, position)
            for position in queued:
                if feed is not None:
                    async with contextlib.aclosing(feed.drain()) as updates:
                        async for update in updates:
                            yield update
                async for item in _run(pool, hub, position, modes, heartbeat, closing):
                    yield item
            if queued:
                continue
            if not await woken(wakeup, closing, heartbeat):
                yield None
        finally:
            hub.disarm(wakeup, ANY_RUN, ANY_EVENTS)


async def _run(
    pool: Pool,
    hub: Hub,
    position: Position,
    modes: frozenset[ThreadStreamMode],
    heartbeat: float,
    closing: asyncio.Event,
) -> AsyncIterator[ThreadEvent | None]:
    """One run's events after ``position`` as ``modes`` show them."""
    run_id = position.run_id
    async for event in events.follow(pool, hub, run_id, position.seq, heartbeat, closing):
        if event is None:
            yield None
            continue
        at = Cursor(replace(position, seq=event.seq))
        # A run's own ``end`` is not the thread stream's, which goes on with the next run.
        if event.event == RunEvent.END:
            if ThreadStreamMode.LIFECYCLE in modes:
                done = {"status": RUN_DONE, "run_id": str(run_id)}
                yield ThreadEvent(at, RunEvent.METADATA, dumps(done).decode())
        elif ThreadStreamMode.RUN_MODES in modes or event.event == RunEvent.METADATA:
            yield ThreadEvent(at, event.event, event.raw)
