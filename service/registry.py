"""The deployment's graphs by id, and how a request names one.

Stand-in of the configuration work's ``Registry``, with the part of its interface the assistants
use (``graph_ids``, ``resolve``, ``bind``): until graphs are loaded from ``langgraph.json``, the
registry holds the built-in demo graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID, uuid5

from langchain_core.runnables import RunnableConfig

from threadkeeper.service.graphs import AnyGraph, LoadedGraph

# The namespace the Agent Server derives its system assistants' ids from.
SYSTEM_ASSISTANT_NAMESPACE = UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")


def system_assistant_id(graph_id: str) -> UUID:
    """The id of a graph's system assistant, the same on every replica and server."""
    return uuid5(SYSTEM_ASSISTANT_NAMESPACE, graph_id)


@dataclass(frozen=True)
class Bound:
    graph_id: str
    graph: AnyGraph


class Registry:
    """graph id -> the graph, for one replica's lifetime."""

    def __init__(self, graphs: Mapping[str, LoadedGraph]) -> None:
        self._loaded = dict(graphs)
        self._assistants = {str(system_assistant_id(graph_id)): graph_id for graph_id in graphs}

    @property
    def graph_ids(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    def resolve(self, ident: str) -> str | None:
        """The graph a graph id or a system assistant's id names; None for anything else."""
        if ident in self._loaded:
            return ident
        return self._assistants.get(ident)

    async def bind(self, graph_id: str, config: RunnableConfig) -> Bound:
        """The graph to run (or read) under ``config``: shared if compiled, built if a factory."""
        return Bound(graph_id, await self._loaded[graph_id].build(config))
