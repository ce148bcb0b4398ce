"""The assistants this service serves: one system assistant per graph of the deployment."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from threadkeeper.service.agent.graph import GRAPH_ID
from threadkeeper.service.errors import NotFound
from threadkeeper.service.registry import Registry, system_assistant_id

# The demo's system assistant: the Agent Server's id for the graph `agent`.
ASSISTANT_ID = system_assistant_id(GRAPH_ID)
CREATED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def resolve_assistant(registry: Registry, ident: str) -> str:
    """The graph a graph id or a system assistant's id names; anything else is unknown."""
    graph_id = registry.resolve(ident)
    if graph_id is None:
        raise NotFound("Assistant", ident)
    return graph_id


def assistant(graph_id: str) -> dict[str, Any]:
    return {
        "assistant_id": system_assistant_id(graph_id),
        "graph_id": graph_id,
        "name": graph_id,
        "description": None,
        "config": {},
        "context": {},
        "metadata": {"created_by": "system"},
        "version": 1,
        "created_at": CREATED_AT,
        "updated_at": CREATED_AT,
    }
