"""Stream events of runs: written by the executing replica, read by clients on any replica.

``run_events`` is the source of truth for (re)joining a stream: events are numbered per run
(``seq``, the SSE ``id``), so ``Last-Event-ID`` resumes exactly after the last event a client
saw. Writes are batched for a few milliseconds (token streams produce many small events) and
fenced like checkpoint writes, so a replica that lost its run cannot add to its stream.

A batch commits without waiting for the WAL flush (``synchronous_commit`` off for that
transaction only): a follower hears of it at commit, so the disk's fsync time, and its tail
under load, stays off every event's path. The cost: a Postgres crash (not a replica crash) may
lose the events committed in the last fraction of a second. Those are always a suffix of the
run's stream, because every later synchronous commit (a checkpoint, the run's ending) flushes
the WAL before it, so what they described is either redone (the step had no checkpoint yet) or
in the checkpoint. Each attempt numbers its events from its own base, above anything an earlier
attempt can have numbered, so a client that saw a lost event still gets every later one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.service.db import Pool
from threadkeeper.service.domain import ENDED_RUN_STATUSES, RunEvent, RunStatus
from threadkeeper.service.lease import WRITE_FENCE_SQL
from threadkeeper.service.notify import (
    EVENTS_CHANNEL,
    NOTIFY_SQL,
    Hub,
    events_key,
    run_key,
    woken,
)
from threadkeeper.service.serialize import dumps

log = structlog.get_logger(__name__)

FLUSH_SECONDS = 0.01
MAX_BATCH = 256
READ_PAGE = 500

# Attempt n numbers its events from (n - 1) * ATTEMPT_SEQ_SPAN + 1: no attempt makes 2**32
# events, and the numbers need no read of what an earlier attempt left (nor trust in it).
ATTEMPT_SEQ_SPAN = 2**32

# Inserted only while the attempt holds its lease (same rule as checkpoint writes).
# One statement (autocommit makes it one transaction, so one round trip): the fenced insert,
# and the notification only if some row went in. set_config(..., true) lasts until the end of
# this transaction: its commit does not wait for the flush, and the pooled connection's later
# transactions commit synchronously as before.
INSERT_SQL = f"""
WITH inserted AS (
    INSERT INTO run_events (run_id, seq, event, data)
    SELECT %(run_id)s, e.seq, e.event, e.data
    FROM jsonb_to_recordset(%(events)s::jsonb) AS e(seq bigint, event text, data jsonb)
    WHERE EXISTS (
        SELECT 1 FROM runs
        WHERE run_id = %(run_id)s AND attempt = %(attempt)s AND {WRITE_FENCE_SQL}
        FOR SHARE
    )
    ON CONFLICT (run_id, seq) DO NOTHING
    RETURNING 1
)
SELECT pg_notify(%(channel)s, %(payload)s)::text AS notified,
       set_config('synchronous_commit', 'off', true) AS commit_mode
WHERE EXISTS (SELECT 1 FROM inserted)
"""

# An attempt's last events, inserted by the statement that ends the run (runs.FINISH_SQL, whose
# ``done`` CTE holds the run row only if the attempt still owned it): the ending's events and its
# final status commit together, and nothing is added for an attempt that lost the run.
ENDING_CTE = """ending AS (
    INSERT INTO run_events (run_id, seq, event, data)
    SELECT done.run_id, e.seq, e.event, e.data
    FROM done, jsonb_to_recordset(%(events)s::jsonb) AS e(seq bigint, event text, data jsonb)
    ON CONFLICT (run_id, seq) DO NOTHING
)"""

# ``data`` as the JSON text Postgres has: a follower sends it on as it is, so a token stream's
# events are not parsed and encoded again on every replica that serves them. (A JSON null
# written through jsonb_to_recordset is stored as SQL NULL.)
READ_SQL = """
SELECT seq, event, coalesce(data::text, 'null') AS data FROM run_events
WHERE run_id = %s AND seq > %s
ORDER BY seq
LIMIT %s
"""

RUN_STATUS_SQL = "SELECT status FROM runs WHERE run_id = %s"

# Numbered after every event stored and after every number the run's attempts may have used
# (as if by its next attempt), so an ending appended after a lost suffix is never skipped.
APPEND_SQL = f"""
INSERT INTO run_events (run_id, seq, event, data)
SELECT %(run_id)s,
       greatest(
           (SELECT coalesce(max(seq), 0) FROM run_events WHERE run_id = %(run_id)s),
           (SELECT attempt::bigint * {ATTEMPT_SEQ_SPAN} FROM runs WHERE run_id = %(run_id)s)
       ) + e.ord,
       e.event, e.data
FROM ROWS FROM (jsonb_to_recordset(%(events)s::jsonb) AS (event text, data jsonb))
     WITH ORDINALITY AS e(event, data, ord)
"""

SWEEP_SQL = """
DELETE FROM run_events
WHERE ctid IN (
    SELECT ctid FROM run_events
    WHERE created_at < now() - make_interval(secs => %s)
    LIMIT 10000
)
"""


@dataclass(frozen=True)
class Event:
    seq: int
    event: str
    raw: str  # the event's data, JSON

    @property
    def data(self) -> Any:
        return orjson.loads(self.raw)


def first_seq(attempt: int) -> int:
    """The number of an attempt's first event (a first attempt's stream starts at 1)."""
    return (attempt - 1) * ATTEMPT_SEQ_SPAN + 1


class EventWriter:
    """Numbers and persists the events of one run attempt, in small batches."""

    def __init__(
        self,
        pool: Pool,
        run_id: UUID,
        attempt: int,
        start_seq: int,
        *,
        live: bool = True,
        on_unwritten: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.pool = pool
        self.run_id = run_id
        self.attempt = attempt
        self.seq = start_seq
        # Not live: nobody follows the run as it goes, so everything is written when it ends.
        self.live = live
        # Told how many events a failed write lost (a metric): followers miss them, and the
        # stream goes on after the gap.
        self.on_unwritten = on_unwritten
        self._buffer: list[dict[str, Any]] = []
        self._wakeup = asyncio.Event()
        self._closed = False
        self._handing_over = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        pool: Pool,
        run_id: UUID,
        attempt: int,
        *,
        live: bool = True,
        on_unwritten: Callable[[int], None] = lambda count: None,
    ) -> EventWriter:
        writer = cls(
            pool, run_id, attempt, first_seq(attempt) - 1, live=live, on_unwritten=on_unwritten
        )
        writer._task = asyncio.create_task(writer._flusher(), name=f"events-{run_id}")
        return writer

    def emit(self, event: str, data: Any) -> None:
        self.seq += 1
        # Encoded now: the graph may change the object after emitting it.
        encoded = orjson.Fragment(dumps(data))
        self._buffer.append({"seq": self.seq, "event": event, "data": encoded})
        if len(self._buffer) >= MAX_BATCH or (self.live and len(self._buffer) == 1):
            self._wakeup.set()

    async def close(self) -> None:
        """Flush what is buffered and stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def hand_over(self) -> str:
        """Stop without writing what is still buffered; return it for the statement that ends
        the run (see ENDING_CTE). Writes under way finish first, so events commit in order;
        none starts after this is called, so ``end`` never commits before the ending."""
        self._handing_over = True
        await self.close()
        rest, self._buffer = self._buffer, []
        return orjson.dumps(rest).decode()

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        last_write = -FLUSH_SECONDS
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._handing_over:
                return
            if not self._closed:
                # Events emitted in the same tick join the batch. A token burst gathers for
                # what is left of the flush interval since the previous write, which caps a run
                # at one statement per interval without delaying an event that comes alone.
                # A full batch, a close or a hand-over cuts the gathering short.
                await asyncio.sleep(0)
                remaining = FLUSH_SECONDS - (loop.time() - last_write)
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await self._wakeup.wait()
                if self._handing_over:
                    # What gathered, the run's ``end`` among it, goes in the ending: written
                    # here it would tell followers the run is over before its last
                    # checkpoints and status commit.
                    return
            last_write = loop.time()
            batch, self._buffer = self._buffer, []
            if batch:
                try:
                    await self._write(batch)
                except Exception as exc:
                    log.warning(
                        "events_write_failed",
                        run_id=str(self.run_id),
                        error=str(exc) or type(exc).__name__,
                        count=len(batch),
                    )
                    self.on_unwritten(len(batch))
            if self._closed and not self._buffer:
                return

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                INSERT_SQL,
                {
                    "run_id": self.run_id,
                    "attempt": self.attempt,
                    "events": orjson.dumps(batch).decode(),
                    "channel": EVENTS_CHANNEL,
                    "payload": str(self.run_id),
                },
            )


async def append(
    conn: AsyncConnection[DictRow], run_id: UUID, items: list[tuple[str, Any]]
) -> None:
    """Append events for a run no attempt is executing (the caller holds the thread lock)."""
    payload = [{"event": e, "data": orjson.Fragment(dumps(d))} for e, d in items]
    await conn.execute(APPEND_SQL, {"run_id": run_id, "events": orjson.dumps(payload).decode()})
    await conn.execute(NOTIFY_SQL, (EVENTS_CHANNEL, str(run_id)))


async def read_after(conn: AsyncConnection[DictRow], run_id: UUID, after: int) -> list[Event]:
    cur = await conn.execute(READ_SQL, (run_id, after, READ_PAGE))
    return [Event(r["seq"], r["event"], r["data"]) for r in await cur.fetchall()]


async def follow(
    pool: Pool, hub: Hub, run_id: UUID, after: int, heartbeat: float, closing: asyncio.Event
) -> AsyncIterator[Event | None]:
    """Events of the run after ``after`` until its ``end`` event; ``None`` means heartbeat.

    Works on any replica: it reads the table and sleeps until a notification (or the heartbeat
    interval) says to look again. A database outage is waited out (with heartbeats): the run
    goes on, or is resumed, once the database is back. It ends early, without ``end``, only when
    ``closing`` is set (the replica stops serving); the caller then cuts the connection, and
    the client resumes elsewhere with ``Last-Event-ID``.
    """
    keys = (events_key(run_id), run_key(run_id))
    while not closing.is_set():
        wakeup = hub.arm(*keys)
        try:
            try:
                over, events = await _look(pool, run_id, after)
            except psycopg.OperationalError as exc:
                log.warning("follow_database_unavailable", run_id=str(run_id), error=str(exc))
                # Not known to have ended: looked at again once the database is back.
                over, events = False, []
            for event in events:
                after = event.seq
                yield event
                if event.event == RunEvent.END:
                    return
            if events:
                continue
            if over:
                # Deleted, or ended: every ending writes its events before its status, so
                # nothing more will come.
                return
            if not await woken(wakeup, closing, heartbeat):
                yield None
        finally:
            hub.disarm(wakeup, *keys)


async def _look(pool: Pool, run_id: UUID, after: int) -> tuple[bool, list[Event]]:
    """Whether the run is over (deleted, or ended) and its events after ``after``."""
    async with pool.connection() as conn:
        # Status first: an ending writes its events before its status, so a final status seen
        # here means the read below has every event. Read the other way round, a run that
        # ended between the two reads looked finished with its last events (``end`` among
        # them) never read, and the stream closed without them.
        cur = await conn.execute(RUN_STATUS_SQL, (run_id,))
        row = await cur.fetchone()
        over = row is None or RunStatus(row["status"]) in ENDED_RUN_STATUSES
        return over, await read_after(conn, run_id, after)


async def sweep(pool: Pool, retention_seconds: float) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(SWEEP_SQL, (retention_seconds,))
        return cur.rowcount
