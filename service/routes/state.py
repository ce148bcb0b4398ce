"""Thread state and time travel over the thread's checkpoints."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from langchain_core.runnables import RunnableConfig
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import runs, serialize, threads
from service.executor import thread_config
from service.http import int_query, owner, parse, services, uuid_param
from service.problems import Problem, not_found
from service.schemas import MAX_PAGE, HistoryQuery, StateAtCheckpoint, StateUpdate
from service.submit import BUSY_DETAIL


async def _require_thread(request: Request, thread_id: UUID, who: str) -> None:
    async with services(request).pool.connection() as conn:
        if await threads.get(conn, thread_id, who) is None:
            raise not_found("Thread", thread_id)


def _config_from(thread_id: UUID, checkpoint: dict[str, Any] | None) -> RunnableConfig:
    config = thread_config(thread_id)
    if checkpoint:
        for key in ("checkpoint_id", "checkpoint_ns"):
            if checkpoint.get(key) is not None:
                config["configurable"][key] = checkpoint[key]
    return config


async def _state(request: Request, config: RunnableConfig, subgraphs: bool) -> Response:
    snapshot = await services(request).executor.reader.aget_state(config, subgraphs=subgraphs)
    if snapshot.config is None and config["configurable"].get("checkpoint_id"):
        raise not_found("Checkpoint", config["configurable"]["checkpoint_id"])
    return serialize.JSON(serialize.state(snapshot))


def _subgraphs(request: Request) -> bool:
    return request.query_params.get("subgraphs", "false").lower() in ("1", "true", "yes")


async def get_state(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    await _require_thread(request, thread_id, who)
    return await _state(request, thread_config(thread_id), _subgraphs(request))


async def get_state_at(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    await _require_thread(request, thread_id, who)
    config = thread_config(thread_id, request.path_params["checkpoint_id"])
    return await _state(request, config, _subgraphs(request))


async def post_state_checkpoint(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    body = await parse(request, StateAtCheckpoint, empty_ok=False)
    await _require_thread(request, thread_id, who)
    return await _state(request, _config_from(thread_id, body.checkpoint), body.subgraphs)


async def update_state(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    body = await parse(request, StateUpdate)
    checkpoint = dict(body.checkpoint or {})
    if body.checkpoint_id:
        checkpoint["checkpoint_id"] = body.checkpoint_id
    svc = services(request)
    # Holding the thread lock keeps runs (and deletes) out while the update is written.
    async with svc.pool.connection() as conn, conn.transaction():
        if not await threads.lock(conn, thread_id, who):
            raise not_found("Thread", thread_id)
        if await runs.active_run_ids(conn, thread_id):
            raise Problem(409, BUSY_DETAIL, kind="thread-busy")
        try:
            new_config = await svc.executor.reader.aupdate_state(
                _config_from(thread_id, checkpoint), body.values, as_node=body.as_node
            )
        except (ValueError, KeyError) as exc:
            raise Problem(422, f"cannot update state: {exc}", kind="invalid-input") from exc
        await conn.execute(
            "UPDATE threads SET updated_at = now() WHERE thread_id = %s", (thread_id,)
        )
    conf = new_config["configurable"]
    return serialize.JSON(
        {
            "checkpoint": {
                "thread_id": conf["thread_id"],
                "checkpoint_ns": conf.get("checkpoint_ns", ""),
                "checkpoint_id": conf["checkpoint_id"],
                "checkpoint_map": conf.get("checkpoint_map"),
            }
        }
    )


async def _history(request: Request, thread_id: UUID, query: HistoryQuery) -> Response:
    before: RunnableConfig | None = None
    if isinstance(query.before, str):
        before = thread_config(thread_id, query.before)
    elif isinstance(query.before, dict):
        before = _config_from(thread_id, query.before)
    reader = services(request).executor.reader
    states = [
        serialize.state(s)
        async for s in reader.aget_state_history(
            _config_from(thread_id, query.checkpoint),
            filter=query.metadata,
            before=before,
            limit=query.limit,
        )
    ]
    return serialize.JSON(states)


async def get_history(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    query = HistoryQuery(
        limit=int_query(request, "limit", 10, lo=1, hi=MAX_PAGE),
        before=request.query_params.get("before"),
    )
    await _require_thread(request, thread_id, who)
    return await _history(request, thread_id, query)


async def post_history(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    query = await parse(request, HistoryQuery)
    await _require_thread(request, thread_id, who)
    return await _history(request, thread_id, query)


routes = [
    Route("/threads/{thread_id}/state", get_state, methods=["GET"]),
    Route("/threads/{thread_id}/state", update_state, methods=["POST"]),
    Route("/threads/{thread_id}/state/checkpoint", post_state_checkpoint, methods=["POST"]),
    Route("/threads/{thread_id}/state/{checkpoint_id}", get_state_at, methods=["GET"]),
    Route("/threads/{thread_id}/history", get_history, methods=["GET"]),
    Route("/threads/{thread_id}/history", post_history, methods=["POST"]),
]
