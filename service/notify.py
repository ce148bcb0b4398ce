"""Postgres LISTEN/NOTIFY, fanned out to waiters inside one replica.

Replicas tell each other that a run was queued, finished or asked to stop, and that new stream
events exist, through ``NOTIFY``. Each replica keeps one listening connection and wakes the local
coroutines waiting on a key. Notifications only say "look again": every waiter re-reads the
database, so a lost notification (reconnect, restart) costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from enum import StrEnum

import psycopg
import structlog
from psycopg import AsyncConnection, sql

log = structlog.get_logger(__name__)

RUNS_CHANNEL = "threadkeeper_runs"
EVENTS_CHANNEL = "threadkeeper_events"
CHANNELS = (RUNS_CHANNEL, EVENTS_CHANNEL)


class RunNotice(StrEnum):
    """What a notification on the runs channel (``<notice>:<run_id>``) says of its run."""

    NEW = "new"  # queued, or handed back
    NEXT = "next"  # ended with another run of its thread queued behind it
    DONE = "done"  # ended with nothing behind it
    CANCEL = "cancel"  # asked to stop


# Waiting on this key wakes when there may be a run to claim; a run that ended with nothing
# behind it or a cancel request wakes only the waiters of that run.
ANY_RUN = "run:*"
CLAIMABLE = frozenset({RunNotice.NEW, RunNotice.NEXT})
# Waiting on this key wakes when any run has new stream events (a thread's followers look for
# its runs' first events: a run claimed as it is queued announces nothing else).
ANY_EVENTS = "events:*"

NOTIFY_SQL = "SELECT pg_notify(%s, %s)"


def run_key(run_id: object) -> str:
    return f"run:{run_id}"


def events_key(run_id: object) -> str:
    return f"events:{run_id}"


async def woken(wakeup: asyncio.Event, closing: asyncio.Event, seconds: float) -> bool:
    """Wait for ``wakeup`` (a notification) or ``closing`` (the replica stops serving); False
    when ``seconds`` passed first."""
    waits = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(closing.wait())]
    done, pending = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return bool(done)


class Hub:
    """Local waiters keyed by run; woken by notifications from any replica."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def arm(self, *keys: str) -> asyncio.Event:
        """An event set by the next notification for any of ``keys``.

        Arm before reading the database, then wait: a notification that lands between the two
        is not lost.
        """
        event = asyncio.Event()
        for key in keys:
            self._waiters[key].add(event)
        return event

    def disarm(self, event: asyncio.Event, *keys: str) -> None:
        for key in keys:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]

    async def wait(self, seconds: float, *keys: str) -> bool:
        event = self.arm(*keys)
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.disarm(event, *keys)

    def wake(self, key: str) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    def wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            self.wake(events_key(payload))
            self.wake(ANY_EVENTS)
        else:
            what, _, run_id = payload.partition(":")
            self.wake(run_key(run_id))
            if what in CLAIMABLE:
                self.wake(ANY_RUN)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="notify-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await AsyncConnection.connect(self.url, autocommit=True)
                async with conn:
                    for channel in CHANNELS:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    delay = 0.1
                    # Anything may have happened while we were not listening.
                    self.wake_all()
                    async for note in conn.notifies():
                        self._dispatch(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("notify_listener_lost", error=str(exc), retry_in=delay)
                self.wake_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
