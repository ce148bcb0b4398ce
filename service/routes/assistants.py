"""The one assistant this service serves: the ``agent`` graph."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import serialize
from service.agent.graph import GRAPH_ID
from service.http import owner
from service.problems import not_found

# Stable across replicas and restarts, as the Agent Server's default assistant id is.
ASSISTANT_ID = uuid.uuid5(uuid.NAMESPACE_URL, "https://threadkeeper.dev/assistants/agent")
CREATED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def resolve_assistant(ident: str) -> uuid.UUID:
    """Accept the graph name or the assistant's id; anything else is an unknown assistant."""
    if ident in (GRAPH_ID, str(ASSISTANT_ID)):
        return ASSISTANT_ID
    raise not_found("Assistant", ident)


def assistant() -> dict[str, Any]:
    return {
        "assistant_id": ASSISTANT_ID,
        "graph_id": GRAPH_ID,
        "name": GRAPH_ID,
        "description": "plan, act (tools), reply",
        "config": {},
        "context": {},
        "metadata": {"created_by": "system"},
        "version": 1,
        "created_at": CREATED_AT,
        "updated_at": CREATED_AT,
    }


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
