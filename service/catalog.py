"""The one assistant this service serves, the ``agent`` graph, and how a request names it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from threadkeeper.service.agent.graph import GRAPH_ID
from threadkeeper.service.errors import NotFound

# Stable across replicas and restarts, as the Agent Server's default assistant id is.
ASSISTANT_ID = uuid.uuid5(uuid.NAMESPACE_URL, "https://threadkeeper.dev/assistants/agent")
CREATED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def resolve_assistant(ident: str) -> uuid.UUID:
    """Accept the graph name or the assistant's id; anything else is an unknown assistant."""
    if ident in (GRAPH_ID, str(ASSISTANT_ID)):
        return ASSISTANT_ID
    raise NotFound("Assistant", ident)


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
