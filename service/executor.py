"""Executing one run attempt: run the graph, stream its events, keep the lease.

An attempt starts after a worker claimed the run (see ``service.worker``). While the graph runs,
a keeper task renews the lease and watches for a cancel request; a lost lease cancels the attempt,
and its fenced checkpoint and event writes would be refused anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.store.base import BaseStore
from langgraph.types import Command, Durability

from threadkeeper.service import db, events, lifecycle, runs, stream_modes
from threadkeeper.service.checkpointer import (
    Batch,
    EarlierWriteFailedError,
    Fence,
    FencedPostgresSaver,
    LeaseLostError,
    refused_by_fence,
)
from threadkeeper.service.db import Pool
from threadkeeper.service.domain import RunEvent, RunStatus, StopReason, ThreadStatus
from threadkeeper.service.metrics import Metrics
from threadkeeper.service.notify import Hub, run_key
from threadkeeper.service.registry import Bound, Registry, graph_of_run
from threadkeeper.service.store import OwnerStore
from threadkeeper.service.stream_modes import Translator

log = structlog.get_logger(__name__)

# Whose long-term memory a run's graph sees.
THREAD_OWNER_SQL = "SELECT owner FROM threads WHERE thread_id = %s"

RESERVED_CONFIGURABLE = {"thread_id", "checkpoint_ns", "checkpoint_map", "run_id"}
MAX_RECURSION_LIMIT = 200

# Set in the kwargs of a run queued by ``/runs/wait`` without ``stream_mode``. Its caller wants
# the end state, which the response carries (and ``/join`` reads from the checkpoint), and
# nobody follows it step by step: its stream records only ``metadata`` and ``end`` (or
# ``error``), in the statement that ends the run. One state per step, or even per run, would
# grow with the conversation, and stream events are kept for an hour.
WAIT_ONLY = "wait_only"
LEASE_LOST_ERROR = {"error": "LeaseLost", "message": "this replica lost the run"}
DATABASE_FAILED_ERROR = {
    "error": "DatabaseUnavailable",
    "message": "the database failed this attempt; the run is resumed from its last checkpoint",
}
# How often an attempt the database failed tries to hand its run back (see Executor._hand_back).
HAND_BACK_FIRST_DELAY = 0.1
HAND_BACK_MAX_DELAY = 1.0

# LangGraph's own server defaults to "async", which hands a step's checkpoint to the saver while
# the next step runs; "sync" hands it over first. The fenced saver holds what it is handed for at
# most its write-behind window either way, so here both make each step durable within that
# window and the turn before its ending is recorded; "exit" hands over one checkpoint, at the end.
DEFAULT_DURABILITY: Durability = "sync"

# How long a stopped graph has to end before it is cancelled again. One cancellation can be
# lost: a graph's own code may catch it, and on Python 3.11 ``asyncio.wait_for`` (which
# psycopg_pool waits for a connection with) swallows one that lands as its inner await ends.
RESTOP_SECONDS = 1.0


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    values: Any
    error: dict[str, Any] | None = None
    # Whether this attempt recorded the run's ending: otherwise (lease lost, handed back) the
    # run goes on elsewhere, and its end is what the run's row says when it ends.
    ended: bool = True
    # The graph stopped at an interrupt (human in the loop): the run succeeded, the thread
    # waits, and the answer names the interrupts.
    paused: bool = False


@dataclass(frozen=True)
class Stepped:
    """Where a graph that ran to its end left off: the rows its saver still holds, the last
    values and the last checkpoint streamed (None if it streamed none)."""

    held: Batch | None
    last_values: Any
    last_checkpoint: Any


@dataclass
class Attempt:
    """One claimed run attempt executing on this replica.

    ``task`` is the whole attempt; ``graph_task`` only its graph, which is what a stop cancels:
    the attempt's ending (recording the outcome) runs after it, where no stop can cut it short.
    """

    run: runs.Run
    task: asyncio.Task[RunOutcome] | None = None
    graph_task: asyncio.Task[Stepped] | None = None
    # Why the graph was stopped from outside.
    stop_reason: StopReason | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # The graph the run executes, bound when the attempt starts.
    bound: Bound | None = None
    # Whose run it is, when the claim said (its store is scoped by it).
    owner: str | None = None
    # Cancels the stopped graph until it has ended (see RESTOP_SECONDS).
    stopping: asyncio.Task[None] | None = field(default=None, repr=False)

    def stop(self, reason: StopReason) -> None:
        """Stop the graph; too late once it has run to its end (the ending is under way)."""
        graph = self.graph_task
        if graph is not None and graph.done():
            return
        if self.stop_reason is None:
            self.stop_reason = reason
        if graph is not None and self.stopping is None:
            self.stopping = asyncio.create_task(_cancel_until_done(graph), name="stop-graph")


async def _cancel_until_done(graph: asyncio.Task[Any]) -> None:
    while not graph.done():
        graph.cancel()
        await asyncio.wait([graph], timeout=RESTOP_SECONDS)


def _cancelled_itself() -> bool:
    """Whether the current task itself is being cancelled (not just something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def run_durability(kwargs: dict[str, Any]) -> Durability:
    """The run's ``durability``; the deprecated ``checkpoint_during`` maps as LangGraph maps it."""
    chosen: Durability | None = kwargs.get("durability")
    if chosen is not None:
        return chosen
    during = kwargs.get("checkpoint_during")
    if during is not None:
        return "async" if during else "exit"
    return DEFAULT_DURABILITY


def thread_config(thread_id: UUID, checkpoint_id: str | None = None) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": str(thread_id), "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


async def _keep_held_writes(saver: FencedPostgresSaver) -> None:
    """Save what the saver still holds (finished steps, task writes), if the lease and the
    database allow it (nothing is saved after a write that failed)."""
    try:
        await saver.flush()
    except (LeaseLostError, EarlierWriteFailedError, psycopg.Error) as exc:
        log.warning("task_writes_not_saved", error=str(exc))


StreamItem = tuple[tuple[str, ...], str, Any]


async def _graph_items(
    graph: Any,
    graph_input: Any,
    config: RunnableConfig,
    options: dict[str, Any],
    translator: Translator,
) -> AsyncIterator[StreamItem]:
    """The graph's ``astream`` items as ``(namespace, mode, chunk)``. A run streaming
    ``events`` runs through ``astream_events``: its callback events go to the translator, and
    the items are the root graph's own ``on_chain_stream`` chunks."""
    subgraphs = options["subgraphs"]
    if not translator.events:
        async for item in graph.astream(graph_input, config, **options):
            yield item if subgraphs else ((), *item)
        return
    async for event in graph.astream_events(graph_input, config, version="v2", **options):
        translator.callback_event(event)
        if event["event"] == "on_chain_stream" and not event.get("parent_ids"):
            item = event["data"]["chunk"]
            yield item if subgraphs else ((), *item)


class Executor:
    def __init__(
        self,
        *,
        pool: Pool,
        hub: Hub,
        registry: Registry,
        metrics: Metrics,
        replica: str,
        lease_seconds: float,
        store: BaseStore | None = None,
    ) -> None:
        self.pool = pool
        # Long-term memory; each run sees its owner's part of it only (see OwnerStore).
        self.store = store
        self.hub = hub
        self.registry = registry
        self.metrics = metrics
        self.replica = replica
        self.lease_seconds = lease_seconds
        self.attempts: dict[UUID, Attempt] = {}
        # Set once the replica drains: an attempt started from then on (its claim was under
        # way when the drain began) is handed back as soon as it starts.
        self.draining = False
        # Called whenever an attempt ends here and its slot is free again (see Worker).
        self.on_slot_freed: Callable[[], None] = lambda: None

    @property
    def busy(self) -> int:
        return len(self.attempts)

    def start(self, run: runs.Run, owner: str | None = None) -> Attempt:
        """Execute a claimed run in the background; the request that asked for it may go away.
        ``owner``: the thread's, when the claim read it (else the attempt looks it up)."""
        attempt = Attempt(run, owner=owner)
        if self.draining:
            attempt.stop(StopReason.DRAIN)
        attempt.task = asyncio.create_task(self._execute(attempt), name=f"run-{run.run_id}")
        self.attempts[run.run_id] = attempt
        return attempt

    async def drain(self, grace_seconds: float) -> None:
        """Let attempts finish within the grace period; hand the rest back to the queue, and
        with them any attempt that started meanwhile."""
        self.draining = True
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + grace_seconds
        while True:
            attempts = list(self.attempts.values())
            tasks = [t for a in attempts if (t := a.task) is not None and not t.done()]
            if not tasks:
                return
            left = stop_at - loop.time()
            if left > 0:
                await asyncio.wait(tasks, timeout=left)
                continue
            for attempt in attempts:
                attempt.stop(StopReason.DRAIN)  # one whose graph has ended is left alone
            await asyncio.gather(*tasks, return_exceptions=True)

    def graph_id(self, run: runs.Run) -> str:
        """The graph the run executes: stamped at submission; a run queued before graph ids
        were stamped names its graph by its assistant."""
        return (
            graph_of_run(run.kwargs)
            or self.registry.resolve(run.assistant_id)
            or self.registry.default
        )

    def _config(self, run: runs.Run) -> RunnableConfig:
        kwargs = run.kwargs
        user = kwargs.get("config") or {}
        configurable = {
            k: v
            for k, v in (user.get("configurable") or {}).items()
            if k not in RESERVED_CONFIGURABLE
        }
        checkpoint_id = kwargs.get("checkpoint_id") or (kwargs.get("checkpoint") or {}).get(
            "checkpoint_id"
        )
        # A resumed attempt continues from the latest checkpoint, not from the fork point.
        if run.attempt > 1:
            checkpoint_id = None
        configurable.update(thread_config(run.thread_id, checkpoint_id)["configurable"])
        return {
            "configurable": configurable,
            "metadata": {
                **(run.metadata or {}),
                "run_id": str(run.run_id),
                "assistant_id": run.assistant_id,
                "graph_id": self.graph_id(run),
            },
            "recursion_limit": min(int(user.get("recursion_limit", 25)), MAX_RECURSION_LIMIT),
            "tags": list(user.get("tags") or []),
        }

    async def _input(self, run: runs.Run) -> Any:
        if run.attempt > 1:
            async with self.pool.connection() as conn:
                if await runs.has_started(conn, run.thread_id, run.run_id):
                    return None  # resume from the last checkpoint the dead attempt wrote
        command = run.kwargs.get("command")
        if command:
            return Command(
                resume=command.get("resume"),
                update=command.get("update"),
                goto=command.get("goto") or (),
            )
        return run.input

    async def _execute(self, attempt: Attempt) -> RunOutcome:
        run = attempt.run
        with structlog.contextvars.bound_contextvars(
            run_id=str(run.run_id), thread_id=str(run.thread_id), replica=self.replica
        ):
            started = time.monotonic()
            try:
                outcome = await self._attempt(attempt)
            finally:
                self.attempts.pop(run.run_id, None)
                attempt.done.set()
                self.on_slot_freed()
            self.metrics.runs.labels(outcome=outcome.status).inc()
            self.metrics.run_seconds.observe(time.monotonic() - started)
            log.info(
                "run_finished", status=outcome.status, attempt=run.attempt, error=outcome.error
            )
            return outcome

    async def _attempt(self, attempt: Attempt) -> RunOutcome:
        failure: BaseException | None = await self._bind(attempt)
        history = attempt.bound.history if attempt.bound is not None else ()
        saver, writer = await self._open(attempt.run, history)
        stepped: Stepped | None = None
        if failure is None:
            stepped, failure = await self._run_graph(attempt, saver=saver, writer=writer)
        return await self._end(
            attempt, saver=saver, writer=writer, stepped=stepped, failure=failure
        )

    async def _bind(self, attempt: Attempt) -> Exception | None:
        """Bind the run's graph (a factory is called here, with the run's config); what
        failed, if it did: the run then ends with that error, as with the graph's own."""
        run = attempt.run
        try:
            attempt.bound = await self.registry.bind(self.graph_id(run), self._config(run))
        except Exception as exc:
            return exc
        return None

    async def _open(
        self, run: runs.Run, history: tuple[str, ...]
    ) -> tuple[FencedPostgresSaver, events.EventWriter]:
        """The attempt's fenced saver and its event writer, the stream opened."""
        run_id, number = run.run_id, run.attempt
        saver = FencedPostgresSaver(
            self.pool, Fence(run_id, number), history=history, cache=self.registry.cache
        )
        writer = await events.EventWriter.open(
            self.pool,
            run_id,
            number,
            live=not run.kwargs.get(WAIT_ONLY),
            on_unwritten=self.metrics.run_events_unwritten.inc,
        )
        writer.emit(RunEvent.METADATA, {"run_id": str(run_id), "attempt": number})
        return saver, writer

    async def _run_graph(
        self, attempt: Attempt, *, saver: FencedPostgresSaver, writer: events.EventWriter
    ) -> tuple[Stepped | None, BaseException | None]:
        """Run the graph while a keeper holds the lease; where it left off, or why it did not
        finish (a stop, a lost lease, the database's or the graph's own error)."""
        keeper = asyncio.create_task(self._keep_lease(attempt))
        assert attempt.bound is not None
        attempt.graph_task = asyncio.create_task(
            self._stream(attempt, saver, writer),
            name=f"graph-{attempt.run.run_id}",
        )
        if attempt.stop_reason is not None:
            attempt.stop(attempt.stop_reason)  # stopped before its graph started (a drain)
        try:
            return await attempt.graph_task, None
        except asyncio.CancelledError as exc:
            if _cancelled_itself():
                raise
            return None, exc  # the graph was stopped (see Attempt.stop)
        except Exception as exc:
            return None, exc
        finally:
            # The keeper ends before the ending starts: once the run is recorded as ended, the
            # keeper would find the lease gone and stop an attempt that is no longer running.
            keeper.cancel()
            await asyncio.wait([keeper])

    async def _end(
        self,
        attempt: Attempt,
        *,
        saver: FencedPostgresSaver,
        writer: events.EventWriter,
        stepped: Stepped | None,
        failure: BaseException | None,
    ) -> RunOutcome:
        """Record how the attempt ended: success or an interrupt, a stop, or a failure."""
        try:
            if stepped is not None:
                return await self._succeeded(attempt, writer, saver, stepped)
            assert failure is not None
            return await self._ended_by(attempt, writer, saver, failure)
        except Exception as exc:
            kind = db.classify(exc)
            if kind is None:
                raise
            # The ending itself met a database failure: nothing of it was recorded.
            return await self._database_failed(attempt, writer, kind, exc)

    async def _stream(
        self, attempt: Attempt, saver: FencedPostgresSaver, writer: events.EventWriter
    ) -> Stepped:
        """Run the graph, streaming what the client asked for (the attempt's graph task)."""
        run, bound = attempt.run, attempt.bound
        assert bound is not None
        kwargs = run.kwargs
        graph = bound.graph.copy(
            update={"checkpointer": saver, "store": await self._store_of(attempt)}
        )
        translator = Translator(
            stream_modes.requested(kwargs), writer.emit, values_wanted=not kwargs.get(WAIT_ONLY)
        )
        last_values: Any = None
        last_checkpoint: Any = None
        # "checkpoints" tells, at no cost, where the run ended and what comes next; asking
        # the saver afterwards would read the whole state (delta history and all) again.
        options: dict[str, Any] = {
            "stream_mode": translator.langgraph_modes(("values", "checkpoints")),
            # Subgraph streaming only when asked for: LangGraph then streams each step
            # through a waiter task of its own, about a tenth more CPU for the graph's steps.
            "subgraphs": bool(kwargs.get("stream_subgraphs")),
            "durability": run_durability(kwargs),
            "context": kwargs.get("context"),
            "interrupt_before": kwargs.get("interrupt_before"),
            "interrupt_after": kwargs.get("interrupt_after"),
        }
        items = _graph_items(graph, await self._input(run), self._config(run), options, translator)
        async for ns, mode, chunk in items:
            if mode == "values" and not ns:
                last_values = chunk
            elif mode == "checkpoints" and not ns:
                last_checkpoint = chunk
            translator.chunk(ns, mode, chunk)
        if last_checkpoint is None:
            await saver.flush()  # the state read afterwards must see all of it
        # What the saver still holds commits with the run's ending, in one statement.
        return Stepped(await saver.take_batch(), last_values, last_checkpoint)

    async def _store_of(self, attempt: Attempt) -> BaseStore | None:
        if self.store is None:
            return None
        if attempt.owner is not None:
            return OwnerStore(self.store, attempt.owner)
        run = attempt.run
        async with self.pool.connection() as conn:
            cur = await conn.execute(THREAD_OWNER_SQL, (run.thread_id,))
            row = await cur.fetchone()
        if row is None:  # the thread was deleted under the run: it ends when its fence fails
            raise LeaseLostError(f"thread {run.thread_id} is gone")
        return OwnerStore(self.store, row["owner"])

    async def _ended_by(
        self,
        attempt: Attempt,
        writer: events.EventWriter,
        saver: FencedPostgresSaver,
        failure: BaseException,
    ) -> RunOutcome:
        """The ending of an attempt whose graph did not finish."""
        if isinstance(failure, asyncio.CancelledError):
            reason = attempt.stop_reason
            assert reason is not None
            if reason is not StopReason.LEASE_LOST:
                await _keep_held_writes(saver)
            return await self._stopped(attempt, writer, reason)
        if isinstance(failure, LeaseLostError):
            return await self._stopped(attempt, writer, StopReason.LEASE_LOST)
        kind = db.classify(failure)
        if kind is not None:
            return await self._database_failed(attempt, writer, kind, failure)
        # The graph's own error: the run ends with it.
        run = attempt.run
        error = {"error": type(failure).__name__, "message": str(failure)}
        log.warning("run_failed", exc_info=failure)
        await _keep_held_writes(saver)
        writer.emit(RunEvent.ERROR, error)
        writer.emit(RunEvent.END, None)
        ended = await self._finish(
            run,
            status=RunStatus.ERROR,
            thread_status=ThreadStatus.ERROR,
            error=error,
            events=await writer.hand_over(),
        )
        return RunOutcome(RunStatus.ERROR, None, error, ended=ended)

    async def _database_failed(
        self, attempt: Attempt, writer: events.EventWriter, kind: db.Failure, exc: BaseException
    ) -> RunOutcome:
        """The database failed the attempt, not the graph: the run goes back to the queue and
        a later attempt resumes it from its last checkpoint. Events not yet written are
        dropped; the next attempt streams its own."""
        log.warning("run_attempt_lost", failure=kind.value, error=str(exc) or type(exc).__name__)
        await writer.hand_over()
        await self._hand_back(attempt.run, counted=kind is db.Failure.TRANSIENT)
        return RunOutcome(RunStatus.PENDING, None, DATABASE_FAILED_ERROR, ended=False)

    async def _hand_back(self, run: runs.Run, *, counted: bool) -> None:
        """Hand the run back as soon as the database answers again, for at most a lease: after
        that the lease has expired and any replica resumes the run anyway."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.lease_seconds
        delay = HAND_BACK_FIRST_DELAY
        while True:
            try:
                async with self.pool.connection() as conn:
                    handed = await runs.hand_back(conn, run.run_id, run.attempt, counted=counted)
                log.info("run_handed_back", handed=handed, counted=counted)
                return
            except Exception as exc:
                if db.classify(exc) is None:
                    raise
                if loop.time() + delay >= give_up_at:
                    log.warning("run_hand_back_failed", error=str(exc) or type(exc).__name__)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, HAND_BACK_MAX_DELAY)

    async def _succeeded(
        self,
        attempt: Attempt,
        writer: events.EventWriter,
        saver: FencedPostgresSaver,
        stepped: Stepped,
    ) -> RunOutcome:
        run = attempt.run
        last_checkpoint = stepped.last_checkpoint
        if last_checkpoint is None:
            # Nothing stepped (no checkpoint was streamed): the thread's state is the answer.
            snapshot = await self._reader(attempt).aget_state(thread_config(run.thread_id))
            last_checkpoint = {
                "config": snapshot.config,
                "next": snapshot.next,
                "values": snapshot.values,
            }
        waiting = bool(last_checkpoint["next"])
        # As the Agent Server has it: a run that paused at an interrupt succeeded, and its
        # thread is "interrupted" (a cancelled run is the one that ends "interrupted").
        status = RunStatus.SUCCESS
        writer.emit(RunEvent.END, None)
        checkpoint_id = (
            (last_checkpoint["config"] or {}).get("configurable", {}).get("checkpoint_id")
        )
        events_left = await writer.hand_over()
        try:
            ended = await self._finish(
                run,
                status=status,
                thread_status=ThreadStatus.INTERRUPTED if waiting else ThreadStatus.IDLE,
                checkpoint_id=checkpoint_id,
                events=events_left,
                held=stepped.held,
            )
        except psycopg.Error as exc:
            if not refused_by_fence(exc):
                raise
            # The run is another attempt's now (or gone): nothing of this one was recorded.
            log.info("run_stopping", reason=StopReason.LEASE_LOST)
            return await self._stopped(attempt, writer, StopReason.LEASE_LOST)
        if ended:
            # Durable now: the next run here starts from these values, not from the history.
            saver.keep_final_values(last_checkpoint["config"], last_checkpoint["values"])
        values = stepped.last_values
        return RunOutcome(
            status,
            values if values is not None else last_checkpoint["values"],
            ended=ended,
            paused=waiting,
        )

    async def _stopped(
        self, attempt: Attempt, writer: events.EventWriter, reason: StopReason
    ) -> RunOutcome:
        run = attempt.run
        if reason is StopReason.LEASE_LOST:
            await writer.close()
            return RunOutcome(RunStatus.ERROR, None, LEASE_LOST_ERROR, ended=False)
        if reason is StopReason.DRAIN:
            await writer.close()
            async with self.pool.connection() as conn:
                await runs.hand_back(conn, run.run_id, run.attempt)
            log.info("run_handed_back")
            return RunOutcome(
                RunStatus.PENDING, None, {"error": "Drained", "message": "handed back"}, ended=False
            )
        writer.emit(RunEvent.END, None)
        await writer.close()
        snapshot = await self._reader(attempt).aget_state(thread_config(run.thread_id))
        checkpoint_id = (snapshot.config or {}).get("configurable", {}).get("checkpoint_id")
        if reason is StopReason.ROLLBACK:
            await lifecycle.rollback(self.pool, run)
        else:
            await self._finish(
                run,
                status=RunStatus.INTERRUPTED,
                thread_status=ThreadStatus.INTERRUPTED if snapshot.next else ThreadStatus.IDLE,
                checkpoint_id=checkpoint_id,
            )
        return RunOutcome(RunStatus.INTERRUPTED, snapshot.values)

    def _reader(self, attempt: Attempt) -> Any:
        assert attempt.bound is not None  # an attempt's graph ran (or was stopped) before this
        return attempt.bound.reader

    async def _finish(
        self,
        run: runs.Run,
        *,
        status: RunStatus,
        thread_status: ThreadStatus,
        error: dict[str, Any] | None = None,
        checkpoint_id: str | None = None,
        events: str = "[]",
        held: Batch | None = None,
    ) -> bool:
        """Record the run's ending; False when the attempt no longer owned the run."""
        async with self.pool.connection() as conn:
            row = await runs.finish(
                conn,
                run_id=run.run_id,
                thread_id=run.thread_id,
                attempt=run.attempt,
                status=status,
                thread_status=thread_status,
                error=error,
                checkpoint_id=checkpoint_id,
                events=events,
                before=held,
            )
        if held is not None:
            held.saved()
        if row is None:
            log.warning("run_finish_lost", status=status)
        return row is not None

    async def _keep_lease(self, attempt: Attempt) -> None:
        """Renew the lease every third of its length, and at once when a cancel is announced."""
        run_id, number = attempt.run.run_id, attempt.run.attempt
        interval = self.lease_seconds / 3
        while True:
            await self.hub.wait(interval, run_key(run_id))
            if attempt.graph_task is not None and attempt.graph_task.done():
                # The graph ended and this keeper was cancelled, but the cancellation can be
                # lost: on Python 3.11 ``asyncio.wait_for`` (which psycopg_pool waits for a
                # connection with) swallows one that lands as the connection is handed over.
                # The attempt waits for this keeper before its ending; it must not wait forever.
                return
            try:
                async with self.pool.connection() as conn:
                    alive, cancel = await runs.heartbeat(conn, run_id, number, self.lease_seconds)
            except (psycopg.Error, TimeoutError) as exc:
                # The fence refuses writes once the lease is gone; keep trying until then.
                log.warning("lease_renewal_failed", error=str(exc))
                continue
            if not alive or cancel:
                reason = StopReason(cancel) if cancel else StopReason.LEASE_LOST
                log.info("run_stopping", reason=reason)
                attempt.stop(reason)
                return
