"""Run endpoints: run to completion, list and read runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from service import runs, serialize, threads
from service.executor import RunOutcome
from service.http import int_query, owner, parse, services, uuid_param
from service.problems import Problem, not_found
from service.routes.assistants import resolve_assistant
from service.schemas import MAX_PAGE, RunCreate

KEEPALIVE_SECONDS = 5.0
RUN_STATUSES = {"pending", "running", "success", "error", "timeout", "interrupted"}


def wait_body(outcome: RunOutcome) -> Any:
    """The Agent Server's ``/runs/wait`` body: final values, or ``__error__``."""
    if outcome.error is not None:
        return {"__error__": outcome.error}
    return outcome.values


async def _keepalive_then_result(task: asyncio.Task[RunOutcome]) -> AsyncIterator[bytes]:
    # Proxies drop idle connections; the Agent Server sends newlines while a run is waited on.
    while True:
        done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_SECONDS)
        if done:
            break
        yield b"\n"
    body = serialize.jsonable(wait_body(task.result()))
    yield json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def wait_run(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    body = await parse(request, RunCreate, empty_ok=False)
    resolve_assistant(body.assistant_id)
    svc = services(request)
    run = await svc.executor.claim(who, thread_id, body)
    task = svc.executor.spawn(run)
    run_path = f"/threads/{thread_id}/runs/{run['run_id']}"
    headers = {"Location": f"{run_path}/join", "Content-Location": run_path}
    if body.on_disconnect == "cancel":
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            raise
        return serialize.JSON(wait_body(outcome), headers=headers)
    return StreamingResponse(
        _keepalive_then_result(task), media_type="application/json", headers=headers
    )


async def list_runs(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    limit = int_query(request, "limit", 10, lo=1, hi=MAX_PAGE)
    offset = int_query(request, "offset", 0, lo=0, hi=10**9)
    status = request.query_params.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise Problem(422, f"unknown run status {status!r}", kind="invalid-input")
    async with services(request).pool.connection() as conn:
        if await threads.get(conn, thread_id, who) is None:
            raise not_found("Thread", thread_id)
        rows = await runs.list_for_thread(
            conn, thread_id, status=status, limit=limit, offset=offset
        )
    return serialize.JSON([serialize.run(r) for r in rows])


async def get_run(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    run_id = uuid_param(request, "run_id")
    async with services(request).pool.connection() as conn:
        row = await runs.get(conn, thread_id, run_id, who)
    if row is None:
        raise not_found("Run", run_id)
    return serialize.JSON(serialize.run(row))


routes = [
    Route("/threads/{thread_id}/runs/wait", wait_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs", list_runs, methods=["GET"]),
    Route("/threads/{thread_id}/runs/{run_id}", get_run, methods=["GET"]),
]
