"""The system assistants, one per graph of the deployment."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import serialize
from threadkeeper.service.catalog import assistant, resolve_assistant
from threadkeeper.service.http import owner, services


async def search_assistants(request: Request) -> Response:
    owner(request)
    registry = services(request).registry
    return serialize.JSON([assistant(graph_id) for graph_id in registry.graph_ids])


async def get_assistant(request: Request) -> Response:
    owner(request)
    registry = services(request).registry
    return serialize.JSON(
        assistant(resolve_assistant(registry, request.path_params["assistant_id"]))
    )


routes = [
    Route("/assistants/search", search_assistants, methods=["POST"]),
    Route("/assistants/{assistant_id}", get_assistant, methods=["GET"]),
]
