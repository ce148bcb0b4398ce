"""Assistant endpoints: create, read, update (a new version), delete, search, count, versions,
and what the assistant's graph shows of itself (drawing, schemas, subgraphs).

Reads take an assistant id or a graph id (that graph's system assistant). System assistants are
everyone's and nobody's to change: a write to one is refused with 403.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import assistants, catalog, graph_views, serialize
from threadkeeper.service.assistants import Assistant
from threadkeeper.service.graphs import AnyGraph
from threadkeeper.service.http import accepts, owner, queries, responds, search_page, services
from threadkeeper.service.problems import Problem, not_found
from threadkeeper.service.query import FlagParam, XrayParam
from threadkeeper.service.registry import Registry
from threadkeeper.service.schemas import (
    AssistantCount,
    AssistantCreate,
    AssistantLatest,
    AssistantPatch,
    AssistantSearch,
    AssistantVersions,
)

XRAY = XrayParam()
RECURSE = FlagParam("recurse")
DELETE_THREADS = FlagParam("delete_threads")


def as_json(assistant: Assistant) -> dict[str, Any]:
    return {
        "assistant_id": assistant.assistant_id,
        "graph_id": assistant.graph_id,
        "name": assistant.name,
        "description": assistant.description,
        "config": assistant.config,
        "context": assistant.context,
        "metadata": assistant.metadata,
        "version": assistant.version,
        "created_at": assistant.created_at,
        "updated_at": assistant.updated_at,
    }


def version_json(assistant: Assistant) -> dict[str, Any]:
    found = as_json(assistant)
    del found["updated_at"]
    return found


def _graph_or_404(registry: Registry, graph_id: str) -> str:
    """A graph the deployment serves; the Agent Server answers 404 for any other."""
    if registry.resolve(graph_id) != graph_id:
        raise Problem(
            404,
            f"Graph '{graph_id}' not found. Expected one of: {sorted(registry.graph_ids)}",
            kind="graph-not-found",
        )
    return graph_id


def _synced(
    config: dict[str, Any] | None, context: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The Agent Server keeps ``config.configurable`` and ``context`` equal: whichever is given
    sets both (the schema refuses a body with both)."""
    config = dict(config) if config else {}
    if config.get("configurable"):
        return config, dict(config["configurable"])
    if context:
        return {**config, "configurable": dict(context)}, context
    return config, context


def _writable(assistant_id: uuid.UUID, registry: Registry) -> uuid.UUID:
    if registry.resolve(str(assistant_id)) is not None:
        raise Problem(
            403,
            f"assistant {assistant_id} is the system assistant of a graph and cannot be "
            "changed; create an assistant of the graph with the configuration you need",
            kind="system-assistant",
        )
    return assistant_id


def _own_id(request: Request) -> uuid.UUID:
    """The path's assistant, for a write: a stored assistant's id (a graph id names a system
    assistant, which no one may change)."""
    registry = services(request).registry
    return _writable(catalog.parse_ident(registry, request.path_params["assistant_id"]), registry)


@accepts(AssistantCreate, required=True)
async def create_assistant(request: Request, body: AssistantCreate) -> Response:
    who = owner(request)
    svc = services(request)
    graph_id = _graph_or_404(svc.registry, body.graph_id)
    config, context = _synced(body.config, body.context)
    new = assistants.NewAssistant(
        assistant_id=_writable(body.assistant_id or uuid.uuid4(), svc.registry),
        graph_id=graph_id,
        owner=who,
        name=body.name or assistants.DEFAULT_NAME,
        description=body.description,
        config=config,
        context=context or {},
        metadata=body.metadata or {},
    )
    async with svc.pool.connection() as conn:
        created = await assistants.create(conn, new)
        if created is None:
            existing = await assistants.get(conn, new.assistant_id, who)
            if existing is None or body.if_exists == "raise":
                # Another owner's id is reported as taken without saying by whom.
                raise Problem(409, f"Assistant {new.assistant_id} already exists", kind="conflict")
            created = existing
    return serialize.JSON(as_json(created))


async def get_assistant(request: Request) -> Response:
    who = owner(request)
    svc = services(request)
    async with svc.pool.connection() as conn:
        found = await catalog.visible(conn, svc.registry, request.path_params["assistant_id"], who)
    return serialize.JSON(as_json(found))


@accepts(AssistantPatch)
async def patch_assistant(request: Request, body: AssistantPatch) -> Response:
    who = owner(request)
    svc = services(request)
    assistant_id = _own_id(request)
    if body.graph_id is not None:
        _graph_or_404(svc.registry, body.graph_id)
    config, context = _synced(body.config, body.context)
    change = assistants.Change(
        graph_id=body.graph_id,
        name=body.name,
        description=body.description,
        # An empty config keeps the current one, as the Agent Server's PATCH does.
        config=config or None,
        context=context,
        metadata=body.metadata,
    )
    async with svc.pool.connection() as conn:
        updated = await assistants.update(conn, assistant_id, who, change)
    if updated is None:
        raise not_found("Assistant", assistant_id)
    return serialize.JSON(as_json(updated))


@responds({204: ("Deleted, with all its versions", None)})
@queries(DELETE_THREADS)
async def delete_assistant(request: Request) -> Response:
    who = owner(request)
    if DELETE_THREADS.of(request):
        raise Problem(
            422,
            "delete_threads is not supported: threads here are not tied to an assistant",
            kind="invalid-input",
        )
    assistant_id = _own_id(request)
    async with services(request).pool.connection() as conn:
        if not await assistants.delete(conn, assistant_id, who):
            raise not_found("Assistant", assistant_id)
    return Response(status_code=204)


def _filter(request: Request, body: AssistantCount) -> assistants.AssistantFilter:
    registry = services(request).registry
    if body.graph_id is not None:
        _graph_or_404(registry, body.graph_id)
    return assistants.AssistantFilter(
        owner=owner(request),
        graph_ids=registry.graph_ids,
        graph_id=body.graph_id,
        name=body.name,
        metadata=body.metadata,
    )


@accepts(AssistantSearch)
async def search_assistants(request: Request, body: AssistantSearch) -> Response:
    flt = _filter(request, body)
    return await search_page(request, body, partial(assistants.search, flt=flt), as_json)


@accepts(AssistantCount)
async def count_assistants(request: Request, body: AssistantCount) -> Response:
    flt = _filter(request, body)
    async with services(request).pool.connection() as conn:
        return serialize.JSON(await assistants.count(conn, flt))


@accepts(AssistantVersions)
async def list_versions(request: Request, body: AssistantVersions) -> Response:
    who = owner(request)
    svc = services(request)
    async with svc.pool.connection() as conn:
        found = await catalog.visible(conn, svc.registry, request.path_params["assistant_id"], who)
        rows = await assistants.versions(
            conn,
            found.assistant_id,
            who,
            metadata=body.metadata,
            limit=body.limit,
            offset=body.offset,
        )
    return serialize.JSON([version_json(v) for v in rows])


@accepts(AssistantLatest, required=True)
async def set_latest(request: Request, body: AssistantLatest) -> Response:
    who = owner(request)
    assistant_id = _own_id(request)
    async with services(request).pool.connection() as conn:
        updated = await assistants.set_latest(conn, assistant_id, who, body.version)
        if updated is None:
            if await assistants.get(conn, assistant_id, who) is None:
                raise not_found("Assistant", assistant_id)
            raise Problem(
                404,
                f"Version {body.version} not found for assistant {assistant_id}",
                kind="not-found",
            )
    return serialize.JSON(as_json(updated))


async def _graph_of(request: Request) -> tuple[Assistant, AnyGraph]:
    """The path's assistant and its graph, built as a run of it would build it."""
    who = owner(request)
    svc = services(request)
    async with svc.pool.connection() as conn:
        found = await catalog.visible(conn, svc.registry, request.path_params["assistant_id"], who)
    bound = await svc.registry.bind(found.graph_id, cast(RunnableConfig, found.config))
    return found, bound.graph


@queries(XRAY)
async def get_graph(request: Request) -> Response:
    """The assistant's graph as drawable JSON (nodes, edges); ``xray`` draws subgraphs too."""
    _, graph = await _graph_of(request)
    return serialize.JSON(await graph_views.drawing(graph, XRAY.of(request)))


async def get_schemas(request: Request) -> Response:
    """The JSON schemas of the graph's input, output, state, config and context."""
    found, graph = await _graph_of(request)
    return serialize.JSON({"graph_id": found.graph_id, **graph_views.schemas(graph)})


@queries(RECURSE)
async def get_subgraphs(request: Request) -> Response:
    """The schemas of the graph's subgraphs, by namespace; ``recurse`` for nested ones."""
    _, graph = await _graph_of(request)
    namespace = request.path_params.get("namespace")
    return serialize.JSON(await graph_views.subgraphs(graph, namespace, RECURSE.of(request)))


routes = [
    Route("/assistants", create_assistant, methods=["POST"]),
    Route("/assistants/search", search_assistants, methods=["POST"]),
    Route("/assistants/count", count_assistants, methods=["POST"]),
    Route("/assistants/{assistant_id}", get_assistant, methods=["GET"]),
    Route("/assistants/{assistant_id}", patch_assistant, methods=["PATCH"]),
    Route("/assistants/{assistant_id}", delete_assistant, methods=["DELETE"]),
    Route("/assistants/{assistant_id}/versions", list_versions, methods=["POST"]),
    Route("/assistants/{assistant_id}/latest", set_latest, methods=["POST"]),
    Route("/assistants/{assistant_id}/graph", get_graph, methods=["GET"]),
    Route("/assistants/{assistant_id}/schemas", get_schemas, methods=["GET"]),
    Route("/assistants/{assistant_id}/subgraphs", get_subgraphs, methods=["GET"]),
    Route("/assistants/{assistant_id}/subgraphs/{namespace}", get_subgraphs, methods=["GET"]),
]
