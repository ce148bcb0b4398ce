"""Which assistant a request names, and what a run takes from it.

A request names an assistant by its id or by a graph id (meaning that graph's system
assistant), as the Agent Server accepts both. A run starts from its assistant's ``config`` and
``context`` with its own merged over them, key by key, as the Agent Server merges them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.service import assistants
from threadkeeper.service.assistants import Assistant
from threadkeeper.service.db import Pool
from threadkeeper.service.errors import NotFound
from threadkeeper.service.registry import Registry, system_assistant_id

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunAssistant:
    """What a run needs of its assistant. A system assistant's is known without a read: it is
    read-only, with no config or context of its own."""

    assistant_id: UUID
    graph_id: str
    config: dict[str, Any]
    context: dict[str, Any]

    @classmethod
    def of(cls, assistant: Assistant) -> RunAssistant:
        return cls(assistant.assistant_id, assistant.graph_id, assistant.config, assistant.context)


async def install_system_assistants(pool: Pool, registry: Registry) -> None:
    """At start-up: the system assistant of every graph this deployment serves."""
    async with pool.connection() as conn:
        await assistants.ensure_system(conn, registry.graph_ids)
    log.info("system_assistants_ready", graphs=list(registry.graph_ids))


def system_ident(registry: Registry, ident: str) -> UUID | None:
    """The system assistant's id when ``ident`` names a graph or a system assistant."""
    graph_id = registry.resolve(ident)
    return None if graph_id is None else system_assistant_id(graph_id)


def parse_ident(registry: Registry, ident: str) -> UUID:
    """The assistant id ``ident`` stands for; anything else names no assistant."""
    found = system_ident(registry, ident)
    if found is not None:
        return found
    try:
        return UUID(ident)
    except ValueError:
        raise NotFound("Assistant", ident) from None


async def visible(
    conn: AsyncConnection[DictRow], registry: Registry, ident: str, owner: str
) -> Assistant:
    """The assistant ``ident`` names, if ``owner`` may see it and its graph is served here (an
    assistant of a graph the deployment no longer has is hidden, as the Agent Server hides it)."""
    found = await assistants.get(conn, parse_ident(registry, ident), owner)
    if found is None or registry.resolve(found.graph_id) is None:
        raise NotFound("Assistant", ident)
    return found


async def for_run(pool: Pool, registry: Registry, ident: str, owner: str) -> RunAssistant:
    """The run's assistant; a graph's own needs no database read."""
    graph_id = registry.resolve(ident)
    if graph_id is not None:
        return RunAssistant(system_assistant_id(graph_id), graph_id, {}, {})
    async with pool.connection() as conn:
        return RunAssistant.of(await visible(conn, registry, ident, owner))


def run_kwargs(assistant: RunAssistant, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The run's ``config`` and ``context`` over the assistant's, with the assistant and graph
    recorded in ``configurable`` (where the executor finds the graph)."""
    own_config: dict[str, Any] = kwargs.get("config") or {}
    own_context: dict[str, Any] = kwargs.get("context") or {}
    # The run's context is mirrored into configurable, as the assistant's is (and as the Agent
    # Server mirrors it), for graphs that still read their settings from there.
    configurable = {
        **(assistant.config.get("configurable") or {}),
        **(own_config.get("configurable") or {}),
        **own_context,
        "assistant_id": str(assistant.assistant_id),
        "graph_id": assistant.graph_id,
    }
    merged = {**kwargs, "config": {**assistant.config, **own_config, "configurable": configurable}}
    context = {**assistant.context, **own_context}
    if context:
        merged["context"] = context
    return merged
