"""Concurrent store puts of one replica, written together when many arrive at once.

Every put is a transaction, and every transaction a commit (a WAL flush): fifty concurrent puts
cost fifty commits where the stock store, which runs all waiting calls as one batch, pays one.
Up to ``limit`` put batches are written at a time, each on its own pooled connection, so a quiet
replica writes every put at once and a put held up by a row lock holds up no one while slots are
free; puts that arrive while every slot is busy wait together and go as the next batch.

A batch that fails (an embedding that cannot be made, a row lock past its timeout) is written
again caller by caller, so each caller gets its own put's outcome, as if written alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from langgraph.store.base import PutOp

Write = Callable[[Sequence[PutOp]], Awaitable[object]]


@dataclass
class _Waiting:
    ops: Sequence[PutOp]
    done: asyncio.Future[None]


@dataclass
class PutBatches:
    """Puts written through ``write``, at most ``limit`` batches at a time."""

    write: Write
    limit: int
    _in_flight: int = 0
    _waiting: list[_Waiting] = field(default_factory=list)
    # Flushes started from a finishing one: held so they are not collected mid-flight.
    _flushes: set[asyncio.Task[None]] = field(default_factory=set)

    async def put(self, ops: Sequence[PutOp]) -> None:
        if self._in_flight < self.limit:
            self._in_flight += 1
            try:
                await self.write(ops)
            finally:
                self._finished()
            return
        waiting = _Waiting(ops, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        await waiting.done

    def _finished(self) -> None:
        self._in_flight -= 1
        if self._waiting and self._in_flight < self.limit:
            batch, self._waiting = self._waiting, []
            self._in_flight += 1
            task = asyncio.create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Waiting]) -> None:
        try:
            try:
                await self.write([op for waiting in batch for op in waiting.ops])
            except Exception:
                if len(batch) == 1:
                    raise
                await asyncio.gather(*(self._alone(waiting) for waiting in batch))
                return
            for waiting in batch:
                _settle(waiting.done, None)
        except BaseException as exc:
            for waiting in batch:
                _settle(waiting.done, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._finished()

    async def _alone(self, waiting: _Waiting) -> None:
        try:
            await self.write(waiting.ops)
        except Exception as exc:
            _settle(waiting.done, exc)
        else:
            _settle(waiting.done, None)


def _settle(done: asyncio.Future[None], outcome: BaseException | None) -> None:
    # A caller that was cancelled while waiting has a future that is done already.
    if done.done():
        return
    if outcome is None:
        done.set_result(None)
    else:
        done.set_exception(outcome)
