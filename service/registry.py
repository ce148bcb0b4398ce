"""The graphs this deployment serves, by graph id, and how a request names one.

Stand-in of the configuration work's registry (same interface): until graphs are loaded from
``langgraph.json``, the registry holds the built-in demo graph only.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID, uuid5

from threadkeeper.service.graphs import GraphKind, LoadedGraph

# The Agent Server's namespace for graph ids; a system assistant's id is uuid5 of its graph id.
NAMESPACE_GRAPH = UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")


def system_assistant_id(graph_id: str) -> UUID:
    return uuid5(NAMESPACE_GRAPH, graph_id)


class GraphRegistry:
    """Loaded graphs by id; immutable once the service started."""

    def __init__(self, graphs: Mapping[str, LoadedGraph]) -> None:
        self._graphs = dict(graphs)
        self._by_system_id = {str(system_assistant_id(g)): g for g in self._graphs}

    def ids(self) -> list[str]:
        return list(self._graphs)

    def get(self, graph_id: str) -> LoadedGraph:
        return self._graphs[graph_id]

    def resolve(self, ident: str) -> str | None:
        """The graph id that ``ident`` (a graph id or a system assistant's id) names, if any."""
        if ident in self._graphs:
            return ident
        return self._by_system_id.get(ident.lower())

    @classmethod
    def of_compiled(cls, graphs: Mapping[str, object]) -> GraphRegistry:
        return cls(
            {
                graph_id: LoadedGraph(graph_id, GraphKind.COMPILED, compiled=graph)  # type: ignore[arg-type]
                for graph_id, graph in graphs.items()
            }
        )
