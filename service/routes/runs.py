"""Run endpoints: background, streamed and waited runs; join, cancel, list, read, delete."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Scope

from threadkeeper.service import events, lifecycle, runs, serialize, state, thread_stream, threads
from threadkeeper.service.domain import (
    ACTIVE_RUN_STATUSES,
    CancelAction,
    DisconnectMode,
    RunEvent,
    RunStatus,
)
from threadkeeper.service.executor import thread_config
from threadkeeper.service.http import (
    MEDIA_JSON,
    MEDIA_SSE,
    accepts,
    owner,
    queries,
    responds,
    services,
    until_closing,
    uuid_param,
)
from threadkeeper.service.middleware import cut
from threadkeeper.service.problems import Problem, not_found
from threadkeeper.service.query import ChoiceParam, FlagParam, TextParam
from threadkeeper.service.schemas import LIMIT, OFFSET, CancelMany, RunCreate
from threadkeeper.service.services import Services
from threadkeeper.service.stream_modes import sent_for
from threadkeeper.service.submit import RunRequest, result_of, submit, wait_for_end
from threadkeeper.service.thread_stream import ThreadStreamMode

HEARTBEAT_SECONDS = 5.0
KEEPALIVE_SECONDS = 5.0
# A waited run that ends within this gets a plain JSON answer (with a length, in one write);
# a longer one gets its headers now and keepalive newlines until its body.
QUICK_ANSWER_SECONDS = 1.0
STATUS = ChoiceParam("status", tuple(RunStatus))
ACTION = ChoiceParam("action", tuple(CancelAction), default=CancelAction.INTERRUPT)
WAIT = FlagParam("wait")
CANCEL_ON_DISCONNECT = FlagParam("cancel_on_disconnect")
STREAM_MODE = TextParam("stream_mode", "a stream mode, or a JSON list of them; all when absent")
THREAD_STREAM_MODE = TextParam(
    "stream_mode",
    "run_modes (the default: every run's events), lifecycle (each run's start and end), "
    "state_update (each state update), or a list of them",
)


def _paths(thread_id: UUID, run_id: UUID) -> tuple[str, str]:
    run_path = f"/threads/{thread_id}/runs/{run_id}"
    return run_path, f"{run_path}/stream"


def _sse(
    request: Request,
    run_id: UUID,
    after: int,
    modes: set[str] | None,
    headers: dict[str, str],
    on_disconnect_cancel: bool,
) -> EventSourceResponse:
    svc = services(request)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        finished = False
        try:
            async for event in events.follow(
                svc.pool, svc.hub, run_id, after, HEARTBEAT_SECONDS, svc.closing
            ):
                if event is None:
                    continue
                if modes is not None and not sent_for(event.event, modes):
                    continue
                yield ServerSentEvent(data=event.raw, event=event.event, id=str(event.seq))
                if event.event == RunEvent.END:
                    finished = True
            if not finished and svc.closing.is_set():
                # Not the end of the run: the client rejoins elsewhere with Last-Event-ID.
                cut(request.scope)
        finally:
            if on_disconnect_cancel and not finished and not svc.closing.is_set():
                await asyncio.shield(
                    lifecycle.cancel_by_id(svc.pool, [run_id], CancelAction.INTERRUPT)
                )

    return _event_source(stream(), headers)


def _event_source(
    stream: AsyncIterator[ServerSentEvent], headers: dict[str, str]
) -> EventSourceResponse:
    return EventSourceResponse(
        stream,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", **headers},
        ping=HEARTBEAT_SECONDS,
        ping_message_factory=lambda: ServerSentEvent(comment="heartbeat"),
        sep="\r\n",
    )


def _modes_filter(raw: str | None) -> set[str] | None:
    """``?stream_mode=`` on a rejoin: one value or a JSON list; None means everything."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    items = value if isinstance(value, list) else [value]
    return {str(m) for m in items}


MAX_IDEMPOTENCY_KEY = 255


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise Problem(422, "Idempotency-Key must be 1-255 characters", kind="invalid-input")
    return key


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id", "").strip()
    if not raw:
        return 0
    try:
        return max(int(raw), 0)
    except ValueError as exc:
        raise Problem(422, "Last-Event-ID must be an integer", kind="invalid-input") from exc


@accepts(RunCreate, required=True)
async def create_run(request: Request, body: RunCreate) -> Response:
    """Queue a background run and return it at once."""
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    svc = services(request)
    row, _ = await submit(svc, RunRequest(who, thread_id, body, _idempotency_key(request)))
    run_path, _ = _paths(thread_id, row.run_id)
    return serialize.JSON(serialize.run(row), headers={"Content-Location": run_path})


@responds({200: ("The run's events", MEDIA_SSE)})
@accepts(RunCreate, required=True)
async def stream_run(request: Request, body: RunCreate) -> Response:
    """Start a run and stream its events (Agent Server SSE format, with a final ``end``)."""
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    svc = services(request)
    row, _ = await submit(svc, RunRequest(who, thread_id, body, _idempotency_key(request)))
    run_path, stream_path = _paths(thread_id, row.run_id)
    return _sse(
        request,
        row.run_id,
        0,
        None,
        {"Location": stream_path, "Content-Location": run_path},
        body.on_disconnect == DisconnectMode.CANCEL,
    )


async def _keepalive_then(
    body: asyncio.Task[Any], closing: asyncio.Event, scope: Scope
) -> AsyncIterator[bytes]:
    """Newlines while waiting (proxies drop idle connections), then the JSON body.

    A replica that stops serving before the body is known cuts the connection instead: the
    client then sees a broken response and follows ``Location`` to the join endpoint on another
    replica, as the SDK does. The wait itself never ends the run.
    """
    stop = asyncio.create_task(closing.wait())
    try:
        while True:
            done, _ = await asyncio.wait(
                {body, stop}, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            if body in done:
                break
            if stop in done:
                cut(scope)
                return
            yield b"\n"
    finally:
        stop.cancel()
        body.cancel()
    yield serialize.dumps(body.result())


@accepts(RunCreate, required=True)
async def wait_run(request: Request, body: RunCreate) -> Response:
    """Run to completion and return the final values."""
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    svc = services(request)
    row, attempt = await submit(
        svc, RunRequest(who, thread_id, body, _idempotency_key(request), waited=True)
    )
    run_path, _ = _paths(thread_id, row.run_id)
    headers = {"Location": f"{run_path}/join", "Content-Location": run_path}
    result = asyncio.create_task(result_of(svc, row, attempt))
    return await answer_waited(request, row.run_id, result, headers, body.on_disconnect)


async def answer_waited(
    request: Request,
    run_id: UUID,
    result: asyncio.Task[Any],
    headers: dict[str, str],
    on_disconnect: DisconnectMode | None,
) -> Response:
    """The answer of a waited run: at once when it ends quickly, else keep-alives then the
    body; with ``on_disconnect: cancel``, a client hanging up cancels the run."""
    svc = services(request)
    if on_disconnect == DisconnectMode.CANCEL:
        return await _answer_or_cancel(svc, run_id, result, headers)
    done, _ = await asyncio.wait({result}, timeout=QUICK_ANSWER_SECONDS)
    if done:
        return serialize.JSON(result.result(), headers=headers)
    return StreamingResponse(
        _keepalive_then(result, svc.closing, request.scope),
        media_type="application/json",
        headers=headers,
    )


async def _answer_or_cancel(
    svc: Services, run_id: UUID, result: asyncio.Task[Any], headers: dict[str, str]
) -> Response:
    """The run's final body; a client hanging up cancels the run. A replica that stops
    serving first answers 503 (``Location``: where the answer will be): the run goes on."""
    try:
        value = await until_closing(svc.closing, result, headers)
    except asyncio.CancelledError:
        await asyncio.shield(lifecycle.cancel_by_id(svc.pool, [run_id], CancelAction.INTERRUPT))
        raise
    return serialize.JSON(value, headers=headers)


async def _owned_run(request: Request) -> tuple[UUID, UUID, runs.Run]:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    run_id = uuid_param(request, "run_id")
    async with services(request).pool.connection() as conn:
        row = await runs.get(conn, thread_id, run_id, who)
    if row is None:
        raise not_found("Run", run_id)
    return thread_id, run_id, row


@queries(CANCEL_ON_DISCONNECT)
async def join_run(request: Request) -> Response:
    """Wait for a run (executing anywhere) and return its final values."""
    _, _, row = await _owned_run(request)
    svc = services(request)
    task = asyncio.create_task(result_of(svc, row, None))
    if CANCEL_ON_DISCONNECT.of(request):
        return await _answer_or_cancel(svc, row.run_id, task, {"Location": request.url.path})
    # A run that has ended answers before any keep-alive is sent, so an answer that is a problem
    # (its state was pruned) keeps its own status instead of a 200 that breaks off.
    done, _ = await asyncio.wait({task}, timeout=QUICK_ANSWER_SECONDS)
    if done:
        return serialize.JSON(task.result())
    return StreamingResponse(
        _keepalive_then(task, svc.closing, request.scope), media_type="application/json"
    )


@responds({200: ("The run's events", MEDIA_SSE)})
@queries(STREAM_MODE, CANCEL_ON_DISCONNECT)
async def join_stream(request: Request) -> Response:
    """Rejoin a run's stream from any replica; ``Last-Event-ID`` resumes right after it."""
    thread_id, run_id, _ = await _owned_run(request)
    after = _last_event_id(request)
    modes = _query_modes(request, "stream_mode")
    run_path, stream_path = _paths(thread_id, run_id)
    return _sse(
        request,
        run_id,
        after,
        modes,
        {"Location": stream_path, "Content-Location": run_path},
        CANCEL_ON_DISCONNECT.of(request),
    )


@responds(
    {
        200: ("The ended run (wait=1)", MEDIA_JSON),
        202: ("Cancellation requested", None),
        204: ("The run was rolled back (wait=1)", None),
    }
)
@queries(ACTION, WAIT)
async def cancel_run(request: Request) -> Response:
    _, run_id, _ = await _owned_run(request)
    action = CancelAction(ACTION.of(request))
    svc = services(request)
    await lifecycle.cancel_by_id(svc.pool, [run_id], action)
    if not WAIT.of(request):
        return Response(status_code=202)
    row = await wait_for_end(svc, run_id, None)
    if row is None:
        return Response(status_code=204)
    return serialize.JSON(serialize.run(row))


@responds({204: ("Cancellation requested", None)})
@queries(ACTION)
@accepts(CancelMany, required=True)
async def cancel_many(request: Request, body: CancelMany) -> Response:
    who = owner(request)
    action = CancelAction(ACTION.of(request))
    if body.status is None and body.thread_id is None:
        raise Problem(422, "give thread_id (and run_ids) or status", kind="invalid-input")
    statuses = (
        list(ACTIVE_RUN_STATUSES) if body.status in (None, "all") else [RunStatus(body.status)]
    )
    svc = services(request)
    async with svc.pool.connection() as conn:
        rows = await runs.owned_active(
            conn, who, statuses=statuses, thread_id=body.thread_id, run_ids=body.run_ids
        )
    if not rows:
        raise Problem(404, "no matching runs to cancel", kind="not-found")
    await lifecycle.cancel_by_id(svc.pool, [r.run_id for r in rows], action)
    return Response(status_code=204)


@responds({204: ("Deleted", None)})
async def delete_run(request: Request) -> Response:
    _, run_id, row = await _owned_run(request)
    if row.status in ACTIVE_RUN_STATUSES:
        raise Problem(409, "the run is still active; cancel it first", kind="run-active")
    async with services(request).pool.connection() as conn:
        await runs.delete_finished(conn, run_id)
    return Response(status_code=204)


@queries(LIMIT, OFFSET, STATUS)
async def list_runs(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    limit, offset = LIMIT.of(request), OFFSET.of(request)
    chosen = STATUS.of(request)
    status = RunStatus(chosen) if chosen else None
    async with services(request).pool.connection() as conn:
        if await threads.get(conn, thread_id, who) is None:
            raise not_found("Thread", thread_id)
        rows = await runs.list_for_thread(
            conn, thread_id, status=status, limit=limit, offset=offset
        )
    return serialize.JSON([serialize.run(r) for r in rows])


async def get_run(request: Request) -> Response:
    _, _, row = await _owned_run(request)
    return serialize.JSON(serialize.run(row))


def _query_modes(request: Request, *names: str) -> set[str] | None:
    """Stream modes named in the query: each parameter one value or a JSON list, and
    repeatable (as the JS SDK sends a list); None when none is named."""
    chosen: set[str] = set()
    for name in names:
        for raw in request.query_params.getlist(name):
            chosen |= _modes_filter(raw) or set()
    return chosen or None


def _thread_stream_modes(request: Request) -> frozenset[ThreadStreamMode]:
    """``stream_mode`` (the SDK's name) or ``stream_modes`` (the Agent Server's), each a mode,
    a JSON list or a comma-separated list of them; ``run_modes`` when none is named."""
    named = _query_modes(request, "stream_mode", "stream_modes") or set()
    chosen = {part.strip() for mode in named for part in mode.split(",") if part.strip()}
    known = {mode.value for mode in ThreadStreamMode}
    unsupported = chosen - known
    if unsupported:
        raise Problem(
            422,
            f"thread stream_mode {sorted(unsupported)} is not supported "
            f"(supported: {', '.join(sorted(known))})",
            kind="invalid-input",
        )
    if not chosen:
        return frozenset({ThreadStreamMode.RUN_MODES})
    return frozenset(ThreadStreamMode(mode) for mode in chosen)


def _state_of_update(svc: Services, thread_id: UUID, who: str) -> thread_stream.Describe:
    """What a ``state_update`` event says: the thread's state at the update's checkpoint."""

    async def describe(checkpoint_id: str) -> Any:
        async with svc.pool.connection() as conn:
            row = await threads.get(conn, thread_id, who)
        if row is None:
            return None
        graph = await state.of_thread(svc, row)
        snapshot = await state.read(graph, thread_config(thread_id, checkpoint_id))
        if snapshot.created_at is None:
            return None  # pruned since
        return {"state": serialize.state(snapshot), "thread_id": str(thread_id)}

    return describe


@responds({200: ("Every run's events as they happen", MEDIA_SSE)})
@queries(THREAD_STREAM_MODE)
async def join_thread_stream(request: Request) -> Response:
    """Every run of the thread as it happens, from any replica; ``Last-Event-ID`` resumes."""
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    modes = _thread_stream_modes(request)
    svc = services(request)
    async with svc.pool.connection() as conn:
        if await threads.get(conn, thread_id, who) is None:
            raise not_found("Thread", thread_id)
        cursor = await thread_stream.start(
            conn, thread_id, request.headers.get("last-event-id"), modes
        )
    describe = _state_of_update(svc, thread_id, who)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for item in thread_stream.follow(
            svc.pool, svc.hub, thread_id, cursor, modes, describe, HEARTBEAT_SECONDS, svc.closing
        ):
            if item is not None:
                yield ServerSentEvent(data=item.raw, event=item.event, id=item.id)
        # Only a replica that stops serving ends it: the client rejoins with Last-Event-ID.
        cut(request.scope)

    return _event_source(stream(), {})


routes = [
    Route("/threads/{thread_id}/runs", create_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs/stream", stream_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs/wait", wait_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs", list_runs, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}", get_run, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}", delete_run, methods=["DELETE"]),
    Route("/threads/{thread_id}/runs/{run_id}/join", join_run, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}/stream", join_stream, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/runs/cancel", cancel_many, methods=["POST"]),
    Route("/threads/{thread_id}/stream", join_thread_stream, methods=["GET"]),
]
