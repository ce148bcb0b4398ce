"""Cron endpoints: create (on a thread, or stateless: a new thread per run), read, update,
delete, search and count. Crons are their owner's: another owner's answers 404."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import catalog, crons, serialize, threads
from threadkeeper.service.crons import Cron, CronFilter, NewCron
from threadkeeper.service.domain import OnCompletion
from threadkeeper.service.errors import NotFound
from threadkeeper.service.http import accepts, owner, responds, search_page, services, uuid_param
from threadkeeper.service.problems import Problem, not_found
from threadkeeper.service.schemas import (
    CronCount,
    CronCreate,
    CronPatch,
    CronSearch,
    RunCreate,
    ThreadCronCreate,
    check_run,
)
from threadkeeper.service.submit import check_stream_modes


def as_json(cron: Cron) -> dict[str, Any]:
    return {
        "cron_id": cron.cron_id,
        "assistant_id": cron.assistant_id,
        "thread_id": cron.thread_id,
        "on_run_completed": cron.on_run_completed,
        "end_time": cron.end_time,
        "schedule": cron.schedule,
        "timezone": cron.timezone,
        "created_at": cron.created_at,
        "updated_at": cron.updated_at,
        "payload": cron.payload,
        "user_id": cron.owner,
        "next_run_date": cron.next_run_date,
        "metadata": cron.metadata,
        "enabled": cron.enabled,
    }


def _runnable(payload: dict[str, Any]) -> None:
    """A payload each tick can queue as it is: a run's body, with stream modes served here."""
    try:
        check_run(payload)
    except ValueError as exc:
        raise Problem(422, str(exc), kind="invalid-input") from exc
    check_stream_modes(RunCreate.model_validate(payload))


async def _assistant(request: Request, ident: str) -> str:
    """The assistant's id as runs name it; an assistant the caller cannot use is a 404."""
    svc = services(request)
    found = await catalog.for_run(svc.pool, svc.registry, ident, owner(request))
    return str(found.assistant_id)


async def _create(
    request: Request,
    body: ThreadCronCreate,
    thread_id: UUID | None,
    on_run_completed: OnCompletion | None,
) -> Response:
    who = owner(request)
    _runnable(body.payload())
    new = NewCron(
        cron_id=uuid.uuid4(),
        owner=who,
        thread_id=thread_id,
        assistant_id=await _assistant(request, body.assistant_id),
        schedule=body.schedule,
        timezone=body.timezone,
        end_time=body.end_time,
        payload=body.payload(),
        metadata=body.metadata or {},
        on_run_completed=on_run_completed,
        enabled=True if body.enabled is None else body.enabled,
    )
    async with services(request).pool.connection() as conn, conn.transaction():
        if thread_id is not None and not await threads.lock(conn, thread_id, who):
            raise not_found("Thread", thread_id)
        cron = await crons.insert(conn, new)
    return serialize.JSON(as_json(cron))


@accepts(ThreadCronCreate, required=True)
async def create_thread_cron(request: Request, body: ThreadCronCreate) -> Response:
    """Create a cron that runs on this thread."""
    return await _create(request, body, uuid_param(request, "thread_id"), None)


@accepts(CronCreate, required=True)
async def create_cron(request: Request, body: CronCreate) -> Response:
    """Create a stateless cron: each run gets a new thread, deleted after it unless kept."""
    return await _create(request, body, None, body.on_run_completed)


async def get_cron(request: Request) -> Response:
    cron_id = uuid_param(request, "cron_id")
    async with services(request).pool.connection() as conn:
        cron = await crons.get(conn, cron_id, owner(request))
    if cron is None:
        raise not_found("Cron", cron_id)
    return serialize.JSON(as_json(cron))


def _changed(cron: Cron, body: CronPatch) -> NewCron:
    given = body.model_fields_set
    payload = {**cron.payload, **body.run_fields()}
    _runnable(payload)
    return NewCron(
        cron_id=cron.cron_id,
        owner=cron.owner,
        thread_id=cron.thread_id,
        assistant_id=cron.assistant_id,
        schedule=body.schedule or cron.schedule,
        timezone=body.timezone if "timezone" in given else cron.timezone,
        # An explicit null clears the end time; an absent one keeps it.
        end_time=body.end_time if "end_time" in given else cron.end_time,
        payload=payload,
        metadata=body.metadata if body.metadata is not None else cron.metadata,
        on_run_completed=_on_completed(cron, body),
        enabled=cron.enabled if body.enabled is None else body.enabled,
    )


def _on_completed(cron: Cron, body: CronPatch) -> OnCompletion | None:
    if body.on_run_completed is None:
        return cron.on_run_completed
    if cron.thread_id is not None:
        raise Problem(
            422,
            "on_run_completed applies to stateless crons; this cron runs on its thread",
            kind="invalid-input",
        )
    return body.on_run_completed


@accepts(CronPatch, required=True)
async def patch_cron(request: Request, body: CronPatch) -> Response:
    """Update a cron; its next run follows the new schedule, timezone and end time."""
    who = owner(request)
    cron_id = uuid_param(request, "cron_id")
    if not body.model_fields_set:
        raise Problem(400, "Request body cannot be empty", kind="invalid-input")
    async with services(request).pool.connection() as conn, conn.transaction():
        cron = await crons.lock(conn, cron_id, who)
        if cron is None:
            raise not_found("Cron", cron_id)
        updated = await crons.replace(conn, _changed(cron, body))
    return serialize.JSON(as_json(updated))


@responds({204: ("Deleted", None)})
async def delete_cron(request: Request) -> Response:
    cron_id = uuid_param(request, "cron_id")
    async with services(request).pool.connection() as conn:
        if not await crons.delete(conn, cron_id, owner(request)):
            raise not_found("Cron", cron_id)
    return Response(status_code=204)


def _assistant_filter(request: Request, ident: str | None) -> str | None:
    """The assistant id crons of ``ident`` are stored with (a graph id names its system
    assistant); an id no assistant has matches nothing."""
    if ident is None:
        return None
    try:
        return str(catalog.parse_ident(services(request).registry, ident))
    except NotFound as exc:
        raise Problem(
            422,
            f"assistant_id must be an assistant id or a graph id, got {ident!r}",
            kind="invalid-input",
        ) from exc


async def _filter(request: Request, body: CronCount) -> CronFilter:
    return CronFilter(
        owner=owner(request),
        assistant_id=_assistant_filter(request, body.assistant_id),
        thread_id=body.thread_id,
        metadata=body.metadata,
    )


@accepts(CronSearch)
async def search_crons(request: Request, body: CronSearch) -> Response:
    flt = dataclasses.replace(await _filter(request, body), enabled=body.enabled)

    async def found(
        conn: AsyncConnection[DictRow], **page: Any
    ) -> tuple[list[dict[str, Any]], int]:
        found_crons = await crons.search(conn, flt, **page)
        total = await crons.count(conn, flt)
        # "now" is no field of a cron: the database's time, given when selected.
        extra = {"now": await crons.db_now(conn)} if "now" in (body.select or ()) else {}
        return [{**as_json(cron), **extra} for cron in found_crons], total

    return await search_page(request, body, found, dict)  # found as JSON already


@accepts(CronCount)
async def count_crons(request: Request, body: CronCount) -> Response:
    flt = await _filter(request, body)
    async with services(request).pool.connection() as conn:
        return serialize.JSON(await crons.count(conn, flt))


routes = [
    Route("/threads/{thread_id}/runs/crons", create_thread_cron, methods=["POST"]),
    Route("/runs/crons", create_cron, methods=["POST"]),
    Route("/runs/crons/search", search_crons, methods=["POST"]),
    Route("/runs/crons/count", count_crons, methods=["POST"]),
    Route("/runs/crons/{cron_id}", get_cron, methods=["GET"]),
    Route("/runs/crons/{cron_id}", patch_cron, methods=["PATCH"]),
    Route("/runs/crons/{cron_id}", delete_cron, methods=["DELETE"]),
]
