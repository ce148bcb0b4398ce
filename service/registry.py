"""The deployment's graphs by id, as runs and state reads use them; built once at start-up.

Contract (the assistants API and ``submit`` rely on it):

- ``Registry.resolve(ident)`` -> the graph id ``ident`` names, or None: ``ident`` is a graph id
  or the id of a graph's system assistant, ``system_assistant_id(graph_id)``, which is the
  Agent Server's: ``uuid5(UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8"), graph_id)``.
- A run carries its graph id in ``kwargs["config"]["configurable"]["graph_id"]`` (stamped by
  ``submit``, as the Agent Server does); the executor binds that graph for each attempt.
- ``Registry.bind(graph_id, config)`` -> the graph one run executes, with what the executor
  derives from it (its history channels, a reader on an unfenced saver). A compiled graph is
  bound once, here, and every run shares it: serving a graph costs nothing per turn. A factory
  is called per run with the run's config, as the Agent Server calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid5

import structlog
from langchain_core.runnables import RunnableConfig

from threadkeeper.service.blob_cache import BlobCache
from threadkeeper.service.checkpointer import FencedPostgresSaver, history_channels
from threadkeeper.service.db import Pool
from threadkeeper.service.errors import Conflict
from threadkeeper.service.graphs import AnyGraph, LoadedGraph

log = structlog.get_logger(__name__)

# The namespace the Agent Server derives its system assistants' ids from.
SYSTEM_ASSISTANT_NAMESPACE = UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")


def system_assistant_id(graph_id: str) -> UUID:
    """The id of a graph's system assistant, the same on every replica and server."""
    return uuid5(SYSTEM_ASSISTANT_NAMESPACE, graph_id)


class GraphNotServed(Conflict):
    """A run or thread names a graph this deployment does not serve (removed from its config)."""

    def __init__(self, graph_id: str) -> None:
        super().__init__(f"graph {graph_id!r} is not served by this deployment", "graph-not-served")


@dataclass(frozen=True)
class Bound:
    """A compiled graph and what the executor derives from it once."""

    graph_id: str
    graph: AnyGraph
    # The graph's DeltaChannel names: what its savers read along with each checkpoint.
    history: tuple[str, ...]
    # The graph on an unfenced saver: state reads and lock-protected state updates.
    reader: AnyGraph

    @classmethod
    def of(cls, graph_id: str, graph: AnyGraph, pool: Pool, cache: BlobCache | None) -> Bound:
        history = history_channels(graph)
        saver = FencedPostgresSaver(pool, history=history, cache=cache)
        reader = graph.copy(update={"checkpointer": saver})
        return cls(graph_id, graph, history, reader)


class Registry:
    """graph id -> the graph, for one replica's lifetime. ``cache``: the replica's decoded
    checkpoint blobs, which every saver of its graphs reads through."""

    def __init__(
        self, graphs: Mapping[str, LoadedGraph], pool: Pool, cache: BlobCache | None = None
    ) -> None:
        if not graphs:
            raise ValueError("a deployment serves at least one graph")
        self._loaded = dict(graphs)
        self._pool = pool
        self.cache = cache
        self._compiled = {
            graph_id: Bound.of(graph_id, loaded.compiled, pool, cache)
            for graph_id, loaded in graphs.items()
            if loaded.compiled is not None
        }
        self._assistants = {str(system_assistant_id(graph_id)): graph_id for graph_id in graphs}
        # Threads that never ran (and runs queued before graphs were named) use the first graph.
        self.default = next(iter(graphs))

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
        bound = self._compiled.get(graph_id)
        if bound is not None:
            return bound
        loaded = self._loaded.get(graph_id)
        if loaded is None:
            raise GraphNotServed(graph_id)
        return Bound.of(graph_id, await loaded.build(config), self._pool, self.cache)


def graph_of_run(kwargs: Mapping[str, Any]) -> str | None:
    """The graph id ``submit`` stamped into a run's config, if it did."""
    config = kwargs.get("config") or {}
    graph_id = (config.get("configurable") or {}).get("graph_id")
    return graph_id if isinstance(graph_id, str) else None
