"""Stateless runs: ``POST /runs``, ``/runs/stream``, ``/runs/wait`` and ``/runs/batch``.

Each run gets a new thread owned by the caller (``service.stateless`` says when a temporary one
goes). Answers name the run by its thread's paths, as the Agent Server does, so the SDK's
reconnects (``Location``) and ``on_run_created`` (``Content-Location``) work as for any run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any
from uuid import UUID

from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import catalog, jsonbody, serialize, stateless
from threadkeeper.service.domain import DisconnectMode, OnCompletion
from threadkeeper.service.executor import Attempt
from threadkeeper.service.http import MEDIA_SSE, Declared, accepts, owner, responds, services
from threadkeeper.service.problems import Problem, invalid
from threadkeeper.service.routes.runs import _paths, _sse, answer_waited
from threadkeeper.service.runs import Run
from threadkeeper.service.schemas import StatelessRunBatch, StatelessRunCreate
from threadkeeper.service.services import Services
from threadkeeper.service.submit import (
    NewThread,
    RunRequest,
    check_stream_modes,
    result_of,
    submit,
)


async def _start(
    request: Request, body: StatelessRunCreate, *, waited: bool = False
) -> tuple[Run, Attempt | None]:
    """Create the run's thread and queue the run on it, in one transaction."""
    new_thread = NewThread(temporary=body.on_completion == OnCompletion.DELETE)
    return await submit(
        services(request),
        RunRequest(owner(request), uuid.uuid4(), body, waited=waited, new_thread=new_thread),
    )


def _discarding(svc: Services, thread_id: UUID) -> BackgroundTask:
    return BackgroundTask(stateless.discard, svc.pool, thread_id)


@accepts(StatelessRunCreate, required=True)
async def create_stateless(request: Request, body: StatelessRunCreate) -> Response:
    """Queue a background run on a new thread and return it at once."""
    row, _ = await _start(request, body)
    run_path, _ = _paths(row.thread_id, row.run_id)
    return serialize.JSON(serialize.run(row), headers={"Content-Location": run_path})


@responds({200: ("The run's events", MEDIA_SSE)})
@accepts(StatelessRunCreate, required=True)
async def stream_stateless(request: Request, body: StatelessRunCreate) -> Response:
    """Run on a new thread and stream the run's events; a temporary thread goes after them."""
    row, _ = await _start(request, body)
    run_path, stream_path = _paths(row.thread_id, row.run_id)
    response = _sse(
        request,
        row.run_id,
        0,
        None,
        {"Location": stream_path, "Content-Location": run_path},
        body.on_disconnect == DisconnectMode.CANCEL,
    )
    if body.on_completion == OnCompletion.DELETE:
        response.background = _discarding(services(request), row.thread_id)
    return response


async def _answered(svc: Services, row: Run, attempt: Attempt | None, delete: bool) -> Any:
    value = await result_of(svc, row, attempt)
    if delete:
        await stateless.discard(svc.pool, row.thread_id)
    return value


@accepts(StatelessRunCreate, required=True)
async def wait_stateless(request: Request, body: StatelessRunCreate) -> Response:
    """Run on a new thread to completion and return the final values."""
    svc = services(request)
    row, attempt = await _start(request, body, waited=True)
    run_path, _ = _paths(row.thread_id, row.run_id)
    headers = {"Location": f"{run_path}/join", "Content-Location": run_path}
    delete = body.on_completion == OnCompletion.DELETE
    result = asyncio.create_task(_answered(svc, row, attempt, delete))
    return await answer_waited(request, row.run_id, result, headers, body.on_disconnect)


async def _batch_body(request: Request) -> StatelessRunBatch:
    raw = await request.body()
    if not raw.strip():
        raise Problem(422, "a JSON body is required", kind="invalid-input")
    try:
        return StatelessRunBatch.model_validate(jsonbody.decode(raw))
    except ValidationError as exc:
        raise invalid(exc) from exc


async def create_batch(request: Request) -> Response:
    """Queue background runs, each on a new thread; all are checked before any is queued."""
    who = owner(request)
    batch = await _batch_body(request)
    svc = services(request)
    for body in batch.root:
        check_stream_modes(body)
        await catalog.for_run(svc.pool, svc.registry, body.assistant_id, who)
    created = [(await _start(request, body))[0] for body in batch.root]
    return serialize.JSON([serialize.run(row) for row in created])


create_batch.declared = dataclasses.replace(  # type: ignore[attr-defined]
    Declared(), body=StatelessRunBatch, body_required=True
)

routes = [
    Route("/runs", create_stateless, methods=["POST"]),
    Route("/runs/stream", stream_stateless, methods=["POST"]),
    Route("/runs/wait", wait_stateless, methods=["POST"]),
    Route("/runs/batch", create_batch, methods=["POST"]),
]
