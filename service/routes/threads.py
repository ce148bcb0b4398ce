"""Thread endpoints: create, read, update, archive, delete, search, count, copy."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import lifecycle, prune, serialize, state, thread_values, threads
from threadkeeper.service.http import (
    MEDIA_JSON,
    accepts,
    owner,
    queries,
    responds,
    services,
    uuid_param,
)
from threadkeeper.service.problems import Problem, not_found
from threadkeeper.service.query import ChoicesParam
from threadkeeper.service.schemas import (
    ThreadCount,
    ThreadCreate,
    ThreadPatch,
    ThreadPrune,
    ThreadSearch,
)
from threadkeeper.service.threads import TtlStrategy

INCLUDE = ChoicesParam(
    "include", ("ttl",), "Extra fields, comma separated: ttl (the thread's ttl, or null)"
)


@accepts(ThreadCreate)
async def create_thread(request: Request, body: ThreadCreate) -> Response:
    who = owner(request)
    thread_id = body.thread_id or uuid.uuid4()
    svc = services(request)
    async with svc.pool.connection() as conn:
        row = await threads.insert(
            conn,
            thread_id=thread_id,
            owner=who,
            metadata=body.metadata,
            title=body.title,
            ttl=body.ttl.as_ttl() if body.ttl else None,
        )
        if row is None:
            existing = await threads.get(conn, thread_id, who)
            if existing is None or body.if_exists == "raise":
                # Another owner's id is reported as taken without saying by whom.
                raise Problem(409, f"Thread with ID {thread_id} already exists", kind="conflict")
            row = existing
    return serialize.JSON(serialize.thread(row))


@queries(INCLUDE)
async def get_thread(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    include = INCLUDE.of(request)
    svc = services(request)
    async with svc.pool.connection() as conn:
        row = await threads.get(conn, thread_id, who)
        ttl = await threads.ttl_of(conn, thread_id, who) if "ttl" in include else None
    if row is None:
        raise not_found("Thread", thread_id)
    snapshot = await state.latest(await state.of_thread(svc, row), thread_id)
    body = serialize.thread(row, values=snapshot.values, interrupts=_interrupts(snapshot))
    if "ttl" in include:
        body["ttl"] = ttl
    return serialize.JSON(body)


def _interrupts(snapshot: object) -> dict[str, list[object]]:
    found: dict[str, list[object]] = {}
    for task in getattr(snapshot, "tasks", ()):
        if task.interrupts:
            found[task.id] = list(task.interrupts)
    return found


@responds({200: ("The thread", MEDIA_JSON), 204: ("Updated (Prefer: return=minimal)", None)})
@accepts(ThreadPatch)
async def patch_thread(request: Request, body: ThreadPatch) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    async with services(request).pool.connection() as conn:
        row = await threads.update(
            conn,
            thread_id,
            who,
            metadata=body.metadata,
            title=body.title,
            set_title="title" in body.model_fields_set,
            archived=body.archived,
            ttl=body.ttl.as_ttl() if body.ttl else None,
        )
    if row is None:
        raise not_found("Thread", thread_id)
    if request.headers.get("prefer", "").lower() == "return=minimal":
        return Response(status_code=204)
    return serialize.JSON(serialize.thread(row))


@responds({204: ("Deleted, with its runs and checkpoints", None)})
async def delete_thread(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    async with services(request).pool.connection() as conn, conn.transaction():
        if not await lifecycle.delete_thread(conn, thread_id, who):
            raise not_found("Thread", thread_id)
    _forget_decoded(request, [thread_id])
    return Response(status_code=204)


@accepts(ThreadPrune, required=True)
async def prune_threads(request: Request, body: ThreadPrune) -> Response:
    """Prune the caller's threads named (``delete`` or ``keep_latest``); threads with an
    unfinished run are left alone."""
    who = owner(request)
    strategy = TtlStrategy(body.strategy)
    count = await prune.prune(services(request).pool, who, body.thread_ids, strategy)
    _forget_decoded(request, body.thread_ids)
    return serialize.JSON({"pruned_count": count})


def _forget_decoded(request: Request, thread_ids: list[uuid.UUID]) -> None:
    """This replica's decoded blobs of threads deleted or pruned go with them (the others'
    age out of their caches: they are never served for rows that no longer exist)."""
    cache = services(request).registry.cache
    if cache is not None:
        for thread_id in thread_ids:
            cache.drop_thread(str(thread_id))


@accepts(ThreadSearch)
async def search_threads(request: Request, body: ThreadSearch) -> Response:
    """Search the caller's threads; ``values`` filters on each thread's latest values (JSON
    containment) and ``extract`` returns the given paths of each under ``extracted``."""
    flt = threads.ThreadFilter(
        owner=owner(request),
        ids=body.ids,
        metadata=body.metadata,
        status=body.status,
        archived=body.archived,
    )
    order = thread_values.Order(body.sort_by, body.sort_order)
    svc = services(request)
    states: list[thread_values.ThreadState] | None = None
    if body.values:
        rows, states, total = await thread_values.search(
            svc, flt, body.values, order, limit=body.limit, offset=body.offset
        )
    else:
        async with svc.pool.connection() as conn:
            rows, total = await threads.search(
                conn,
                flt,
                limit=body.limit,
                offset=body.offset,
                sort_by=order.by,
                sort_order=order.direction,
            )
    # Chat UIs title their thread list from each thread's values (its first message).
    shows_state = body.select is None or "values" in body.select or "interrupts" in body.select
    if states is None and (shows_state or thread_values.needs_state(body.extract)):
        states = await thread_values.read(svc, rows)
    items = [serialize.thread(r) for r in rows]
    # Each thread with its state, when read: what is shown, or what the paths are taken from.
    whole = (
        items
        if states is None
        else [thread_values.with_state(i, found) for i, found in zip(items, states, strict=True)]
    )
    if shows_state:
        items = whole
    if body.extract:
        for item, full in zip(items, whole, strict=True):
            item["extracted"] = thread_values.extracted(full, body.extract)
    select = [*body.select, "extracted"] if body.select and body.extract else body.select
    return serialize.page(items, select=select, offset=body.offset, total=total)


@accepts(ThreadCount)
async def count_threads(request: Request, body: ThreadCount) -> Response:
    flt = threads.ThreadFilter(
        owner=owner(request), metadata=body.metadata, status=body.status, archived=body.archived
    )
    svc = services(request)
    if body.values:
        return serialize.JSON(await thread_values.count(svc, flt, body.values))
    async with svc.pool.connection() as conn:
        n = await threads.count(conn, flt)
    return serialize.JSON(n)


async def copy_thread(request: Request) -> Response:
    who = owner(request)
    source = uuid_param(request, "thread_id")
    target = uuid.uuid4()
    async with services(request).pool.connection() as conn, conn.transaction():
        original = await threads.get(conn, source, who)
        if original is None:
            raise not_found("Thread", source)
        # The source's lock keeps a run from writing half a step into what we copy.
        await threads.lock(conn, source, who)
        row = await threads.insert(
            conn,
            thread_id=target,
            owner=who,
            metadata=original.metadata,
            title=original.title,
        )
        assert row is not None
        await threads.copy_checkpoints(conn, source, target)
    return serialize.JSON(serialize.thread(row))


routes = [
    Route("/threads", create_thread, methods=["POST"]),
    Route("/threads/search", search_threads, methods=["POST"]),
    Route("/threads/count", count_threads, methods=["POST"]),
    Route("/threads/prune", prune_threads, methods=["POST"]),
    Route("/threads/{thread_id}", get_thread, methods=["GET"]),
    Route("/threads/{thread_id}", patch_thread, methods=["PATCH"]),
    Route("/threads/{thread_id}", delete_thread, methods=["DELETE"]),
    Route("/threads/{thread_id}/copy", copy_thread, methods=["POST"]),
]
