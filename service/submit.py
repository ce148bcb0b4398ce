"""Accepting a run: thread checks, the multitask strategy, queueing, and waiting for it.

Every run goes through the queue in Postgres, so any replica may execute it; the replica that
received the request starts it at once when it has room, which is the common, fast case.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.service import catalog, lifecycle, runs, state, threads
from threadkeeper.service.domain import (
    ACTIVE_RUN_STATUSES,
    CancelAction,
    MultitaskStrategy,
    RunStatus,
)
from threadkeeper.service.errors import InvalidInput, NotFound, StatePruned, ThreadBusy
from threadkeeper.service.executor import (
    WAIT_ONLY,
    Attempt,
    RunOutcome,
    thread_config,
)
from threadkeeper.service.notify import run_key
from threadkeeper.service.schemas import RunCreate
from threadkeeper.service.services import Services
from threadkeeper.service.stream_modes import StreamMode

log = structlog.get_logger(__name__)

DEFAULT_STRATEGY = MultitaskStrategy.ENQUEUE
SUPPORTED_MODES = frozenset(m.value for m in StreamMode)
WAIT_POLL_SECONDS = 5.0
# A waiter keeps following its run through a database outage (the run goes on, or is resumed,
# once the database is back) and looks again this often.
OUTAGE_RETRY_SECONDS = 0.5


def first_user_text(graph_input: Any) -> str | None:
    """Text of the first user message in an Agent Server style input, if any."""
    if not isinstance(graph_input, dict):
        return None
    messages = graph_input.get("messages")
    if isinstance(messages, dict | str):
        messages = [messages]
    for message in messages or []:
        role, content = None, None
        if isinstance(message, dict):
            role = message.get("role") or message.get("type")
            content = message.get("content")
        elif isinstance(message, list | tuple) and len(message) == 2:
            role, content = message
        elif isinstance(message, str):
            role, content = "user", message
        if role in ("user", "human"):
            if isinstance(content, list):
                content = " ".join(b.get("text", "") for b in content if isinstance(b, dict))
            if isinstance(content, str) and content.strip():
                return content
    return None


def check_stream_modes(body: RunCreate) -> None:
    mode = body.stream_mode or []
    for m in [mode] if isinstance(mode, str) else mode:
        if m not in SUPPORTED_MODES:
            supported = ", ".join(sorted(SUPPORTED_MODES))
            raise InvalidInput(f"stream_mode {m!r} is not supported (supported: {supported})")


async def _check_start(svc: Services, graph_id: str, thread_id: UUID, body: RunCreate) -> None:
    """A run asked to start from a checkpoint starts from one that exists, or not at all."""
    start = body.checkpoint_id or (body.checkpoint.checkpoint_id if body.checkpoint else None)
    if start is not None:
        graph = await state.reader(svc, graph_id, thread_id)
        await state.at(graph, thread_config(thread_id, str(start)))


@dataclass(frozen=True)
class NewThread:
    """The run comes with a thread of its own, created in the run's transaction (a stateless
    run's); a temporary one is deleted once its runs ended."""

    temporary: bool


@dataclass(frozen=True)
class RunRequest:
    """A run as a caller asks for it: whose, on which thread, what (``body``), and how."""

    owner: str
    thread_id: UUID
    body: RunCreate
    # A retry with the same key gets the run the first submission created.
    idempotency_key: str | None = None
    # The caller waits for the end state (``/runs/wait``).
    waited: bool = False
    # ``thread_id`` is a new id, for a thread created with the run.
    new_thread: NewThread | None = None


async def _ensure_locked_thread(
    conn: AsyncConnection[DictRow],
    owner: str,
    thread_id: UUID,
    create: bool,
    new_thread: NewThread | None,
) -> None:
    if new_thread is None and await threads.lock(conn, thread_id, owner):
        return
    if (create or new_thread) and not await threads.exists_for_anyone(conn, thread_id):
        temporary = new_thread is not None and new_thread.temporary
        await threads.insert(
            conn, thread_id=thread_id, owner=owner, metadata={}, temporary=temporary
        )
        if await threads.lock(conn, thread_id, owner):
            return
    raise NotFound("Thread", thread_id)


async def new_run(svc: Services, request: RunRequest) -> runs.NewRun:
    """The run the request's body asks for on its thread, with its assistant's configuration
    merged in."""
    body, thread_id = request.body, request.thread_id
    check_stream_modes(body)
    assistant = await catalog.for_run(svc.pool, svc.registry, body.assistant_id, request.owner)
    kwargs = catalog.run_kwargs(
        assistant,
        body.model_dump(
            exclude={"input", "metadata", "assistant_id"}, exclude_none=True, mode="json"
        ),
    )
    await _check_start(svc, assistant.graph_id, thread_id, body)
    text = first_user_text(body.input)
    if request.waited and body.stream_mode is None:
        kwargs[WAIT_ONLY] = True
    return runs.NewRun(
        run_id=uuid.uuid4(),
        thread_id=thread_id,
        assistant_id=str(assistant.assistant_id),
        input=body.input,
        kwargs=kwargs,
        metadata=body.metadata,
        strategy=body.multitask_strategy or DEFAULT_STRATEGY,
        idempotency_key=request.idempotency_key,
        title=threads.derive_title(text) if text else None,
        delay_seconds=body.after_seconds or None,
    )


async def make_room(conn: AsyncConnection[DictRow], new: runs.NewRun) -> bool:
    """Apply the new run's multitask strategy to its thread's unfinished runs (the caller holds
    the thread lock); True when there were none, so the new run heads the thread."""
    inflight = await lifecycle.unfinished(conn, new.thread_id)
    if not inflight:
        return True
    if new.strategy is MultitaskStrategy.REJECT:
        raise ThreadBusy()
    if new.strategy in (MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK):
        await lifecycle.cancel(conn, inflight, CancelAction(new.strategy))
    return False


async def submit(svc: Services, request: RunRequest) -> tuple[runs.Run, Attempt | None]:
    """Queue the run under the thread lock, applying the multitask strategy; start it if we can.

    With an idempotency key, a retry of a submission whose response was lost returns the run
    the first attempt created instead of queueing the turn twice.
    """
    owner, thread_id, idempotency_key = request.owner, request.thread_id, request.idempotency_key
    new = await new_run(svc, request)
    # A delayed run is left to the workers, which claim it once it is due.
    immediate = new.delay_seconds is None
    if idempotency_key is None and request.new_thread is None and immediate:
        fast = await _submit_if_idle(svc, owner, new)
        if fast is not None:
            return fast
    reserved = False
    try:
        async with svc.pool.connection() as conn, conn.transaction():
            await _ensure_locked_thread(
                conn, owner, thread_id, request.body.if_not_exists == "create", request.new_thread
            )
            if idempotency_key is not None:
                existing = await runs.by_idempotency_key(conn, thread_id, idempotency_key)
                if existing is not None:
                    return existing, None
            if await make_room(conn, new) and immediate:
                # The new run heads its thread: claim it here and now if this replica has room.
                reserved = svc.worker.reserve()
            row = await runs.insert(
                conn, new, claim_for=svc.worker.claim_terms() if reserved else None
            )
    except BaseException:
        if reserved:
            svc.worker.release()
        raise
    if reserved:
        return row, svc.worker.start_reserved(row)
    # Queued behind another run, or no room here: a worker (this replica's or another's) takes it.
    return row, None


async def _submit_if_idle(
    svc: Services, owner: str, new: runs.NewRun
) -> tuple[runs.Run, Attempt | None] | None:
    """The usual turn, in one round trip: the owner's idle thread gets the run, claimed here if
    this replica has room. None when the thread is missing, busy or just changed."""
    reserved = svc.worker.reserve()
    try:
        async with svc.pool.connection() as conn:
            row = await runs.insert_if_idle(
                conn, new, owner, claim_for=svc.worker.claim_terms() if reserved else None
            )
    except BaseException:
        if reserved:
            svc.worker.release()
        raise
    if row is None:
        if reserved:
            svc.worker.release()
        return None
    if reserved:
        return row, svc.worker.start_reserved(row)
    return row, None


async def settled(attempt: Attempt) -> RunOutcome | None:
    """Wait for an attempt executing here; its outcome, or None if it failed or was cancelled
    (the run's row then says what became of the run). The wait does not cancel the attempt."""
    task = attempt.task
    if task is None:
        return None
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # the waiter was cancelled, not the attempt
        return None
    except Exception as exc:
        log.warning("attempt_failed", run_id=str(attempt.run.run_id), error=repr(exc))
        return None


async def wait_for_end(svc: Services, run_id: UUID, attempt: Attempt | None) -> runs.Run | None:
    """Block until the run ends on whichever replica executes it; None if it was deleted."""
    if attempt is not None:
        await settled(attempt)
    while True:
        wakeup = svc.hub.arm(run_key(run_id))
        try:
            async with svc.pool.connection() as conn:
                row = await runs.get_by_id(conn, run_id)
            if row is None or row.status not in ACTIVE_RUN_STATUSES:
                return row
            # A handed-back or resumed run may land here again: help if we have room.
            local = await svc.worker.try_start(run_id, row.thread_id)
            if local is not None:
                await settled(local)
                continue
            try:
                async with asyncio.timeout(WAIT_POLL_SECONDS):
                    await wakeup.wait()
            except TimeoutError:
                pass
        finally:
            svc.hub.disarm(wakeup, run_key(run_id))


async def final_body(svc: Services, row: runs.Run | None) -> Any:
    """The ``/runs/wait`` and ``/join`` body: final values, or ``__error__``."""
    if row is None:
        return {"__error__": {"error": "RunDeleted", "message": "the run was rolled back"}}
    if row.status == RunStatus.ERROR:
        return {"__error__": row.error}
    config = thread_config(row.thread_id, row.checkpoint_id)
    snapshot = await state.read(await state.of_run(svc, row), config)
    if row.checkpoint_id is not None and snapshot.metadata is None:
        raise StatePruned(row.run_id, row.status, row.thread_id)
    values = snapshot.values
    interrupts = [i for task in snapshot.tasks for i in task.interrupts]
    if interrupts and isinstance(values, dict):
        values = {**values, "__interrupt__": interrupts}
    return values


async def result_of(svc: Services, run: runs.Run, attempt: Attempt | None) -> Any:
    """The final body of a run started (maybe here) by this request, whichever attempt ends it.

    The database may go away meanwhile: the run then goes on (or is resumed) once it is back,
    and so does the wait.
    """
    if attempt is not None:
        outcome = await settled(attempt)
        if (
            outcome is not None
            and outcome.ended
            and not outcome.paused
            and outcome.status in (RunStatus.SUCCESS, RunStatus.ERROR)
        ):
            return outcome_body(outcome)
    while True:
        try:
            return await final_body(svc, await wait_for_end(svc, run.run_id, None))
        except psycopg.OperationalError as exc:
            log.warning("wait_database_unavailable", run_id=str(run.run_id), error=str(exc))
            await asyncio.sleep(OUTAGE_RETRY_SECONDS)


def outcome_body(outcome: RunOutcome) -> Any:
    if outcome.error is not None:
        return {"__error__": outcome.error}
    return outcome.values
