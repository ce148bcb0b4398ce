"""Thread state and time travel over the thread's checkpoints."""

from __future__ import annotations

from uuid import UUID

from langchain_core.runnables import RunnableConfig
from langgraph.errors import InvalidUpdateError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import lifecycle, serialize, state, thread_stream, threads
from threadkeeper.service.errors import ThreadBusy
from threadkeeper.service.executor import thread_config
from threadkeeper.service.graphs import AnyGraph
from threadkeeper.service.http import accepts, owner, queries, services, uuid_param
from threadkeeper.service.problems import Problem, not_found
from threadkeeper.service.query import FlagParam, UuidParam
from threadkeeper.service.schemas import (
    LIMIT,
    CheckpointConfig,
    HistoryQuery,
    StateAtCheckpoint,
    StateUpdate,
)

SUBGRAPHS = FlagParam("subgraphs")
BEFORE = UuidParam("before")


async def _thread_graph(request: Request, thread_id: UUID, who: str) -> AnyGraph:
    """The reader of the caller's thread's graph; 404 for a thread the caller does not have."""
    svc = services(request)
    async with svc.pool.connection() as conn:
        row = await threads.get(conn, thread_id, who)
    if row is None:
        raise not_found("Thread", thread_id)
    return await state.of_thread(svc, row)


def _config_from(thread_id: UUID, checkpoint: CheckpointConfig | None) -> RunnableConfig:
    config = thread_config(thread_id)
    if checkpoint is not None:
        if checkpoint.checkpoint_id is not None:
            config["configurable"]["checkpoint_id"] = str(checkpoint.checkpoint_id)
        config["configurable"]["checkpoint_ns"] = checkpoint.checkpoint_ns
    return config


async def _state(graph: AnyGraph, config: RunnableConfig, subgraphs: bool) -> Response:
    snapshot = await state.at(graph, config, subgraphs=subgraphs)
    return serialize.JSON(serialize.state(snapshot))


@queries(SUBGRAPHS)
async def get_state(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    graph = await _thread_graph(request, thread_id, who)
    subgraphs = SUBGRAPHS.of(request)
    return await _state(graph, thread_config(thread_id), subgraphs)


@queries(SUBGRAPHS)
async def get_state_at(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    checkpoint_id = uuid_param(request, "checkpoint_id")
    graph = await _thread_graph(request, thread_id, who)
    config = thread_config(thread_id, str(checkpoint_id))
    return await _state(graph, config, SUBGRAPHS.of(request))


@accepts(StateAtCheckpoint, required=True)
async def post_state_checkpoint(request: Request, body: StateAtCheckpoint) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    graph = await _thread_graph(request, thread_id, who)
    return await _state(graph, _config_from(thread_id, body.checkpoint), body.subgraphs)


@accepts(StateUpdate)
async def update_state(request: Request, body: StateUpdate) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    checkpoint = body.checkpoint or CheckpointConfig()
    if body.checkpoint_id:
        checkpoint = checkpoint.model_copy(update={"checkpoint_id": body.checkpoint_id})
    config = _config_from(thread_id, checkpoint)
    svc = services(request)
    # Holding the thread lock keeps runs (and deletes) out while the update is written.
    async with svc.pool.connection() as conn, conn.transaction():
        if not await threads.lock(conn, thread_id, who):
            raise not_found("Thread", thread_id)
        if await lifecycle.is_busy(conn, thread_id):
            raise ThreadBusy()
        row = await threads.get(conn, thread_id, who)
        assert row is not None  # locked by its owner above
        graph = await state.of_thread(svc, row)
        if checkpoint.checkpoint_id is not None:
            await state.at(graph, config, subgraphs=False)
        try:
            new_config = await state.update(graph, config, body.values, as_node=body.as_node)
        except (InvalidUpdateError, ValueError, KeyError, TypeError) as exc:
            raise Problem(422, f"cannot update state: {exc}", kind="invalid-input") from exc
        await conn.execute(
            "UPDATE threads SET updated_at = now() WHERE thread_id = %s", (thread_id,)
        )
        # Heard at commit, by the thread's followers on every replica (state_update).
        await thread_stream.announce_update(conn, thread_id)
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


async def _history(graph: AnyGraph, thread_id: UUID, query: HistoryQuery) -> Response:
    before: RunnableConfig | None = None
    if isinstance(query.before, UUID):
        before = thread_config(thread_id, str(query.before))
    elif query.before is not None:
        before = _config_from(thread_id, query.before)
    if before is not None:
        # Older than a checkpoint the thread does not have would be a guess, not an answer.
        await state.at(graph, before, subgraphs=False)
    states = [
        serialize.state(s)
        async for s in state.history(
            graph,
            _config_from(thread_id, query.checkpoint),
            filter=query.metadata,
            before=before,
            limit=query.limit,
        )
    ]
    return serialize.JSON(states)


@queries(LIMIT, BEFORE)
async def get_history(request: Request) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    query = HistoryQuery(limit=LIMIT.of(request), before=BEFORE.of(request))
    graph = await _thread_graph(request, thread_id, who)
    return await _history(graph, thread_id, query)


@accepts(HistoryQuery)
async def post_history(request: Request, query: HistoryQuery) -> Response:
    who = owner(request)
    thread_id = uuid_param(request, "thread_id")
    graph = await _thread_graph(request, thread_id, who)
    return await _history(graph, thread_id, query)


routes = [
    Route("/threads/{thread_id}/state", get_state, methods=["GET"]),
    Route("/threads/{thread_id}/state", update_state, methods=["POST"]),
    Route("/threads/{thread_id}/state/checkpoint", post_state_checkpoint, methods=["POST"]),
    Route("/threads/{thread_id}/state/{checkpoint_id}", get_state_at, methods=["GET"]),
    Route("/threads/{thread_id}/history", get_history, methods=["GET"]),
    Route("/threads/{thread_id}/history", post_history, methods=["POST"]),
]
