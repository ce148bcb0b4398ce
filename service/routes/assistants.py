"""The one assistant this service serves: the ``agent`` graph."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import serialize
from threadkeeper.service.catalog import assistant, resolve_assistant
from threadkeeper.service.http import owner


async def search_assistants(request: Request) -> Response:
    owner(request)
    return serialize.JSON([assistant()])


async def get_assistant(request: Request) -> Response:
    owner(request)
    resolve_assistant(request.path_params["assistant_id"])
    return serialize.JSON(assistant())


routes = [
    Route("/assistants/search", search_assistants, methods=["POST"]),
    Route("/assistants/{assistant_id}", get_assistant, methods=["GET"]),
]
