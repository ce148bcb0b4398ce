"""A thread's state as LangGraph keeps it: read at a checkpoint, its history, and updates.

Reads and updates go through the reader of the thread's graph (the graph on a saver without a
fence), so the HTTP layer never reaches into the executor. A thread's graph is the one its
latest run executed (``graph_id`` in its metadata, as the Agent Server records it); a thread
that never ran reads as the deployment's first graph.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.runnables import RunnableConfig
from langgraph.types import StateSnapshot

from threadkeeper.service.errors import NotFound
from threadkeeper.service.executor import thread_config
from threadkeeper.service.graphs import AnyGraph
from threadkeeper.service.registry import graph_of_run
from threadkeeper.service.runs import Run
from threadkeeper.service.threads import Thread

if TYPE_CHECKING:
    from threadkeeper.service.services import Services


async def reader(svc: Services, graph_id: str | None, thread_id: UUID) -> AnyGraph:
    """The reader of ``graph_id`` (None: the deployment's first graph) for one thread."""
    registry = svc.registry
    bound = await registry.bind(graph_id or registry.default, thread_config(thread_id))
    return bound.reader


async def of_thread(svc: Services, thread: Thread) -> AnyGraph:
    """The reader of a thread's graph."""
    graph_id = (thread.metadata or {}).get("graph_id")
    return await reader(svc, graph_id if isinstance(graph_id, str) else None, thread.thread_id)


async def of_run(svc: Services, run: Run) -> AnyGraph:
    """The reader of the graph a run executed."""
    registry = svc.registry
    graph_id = graph_of_run(run.kwargs or {}) or registry.resolve(run.assistant_id)
    return await reader(svc, graph_id, run.thread_id)


async def at(graph: AnyGraph, config: RunnableConfig, *, subgraphs: bool = False) -> StateSnapshot:
    """The thread's state at ``config``; 404 when it names a checkpoint (or a subgraph's
    namespace) the thread lacks. The latest state of a thread without one is empty, not 404."""
    snapshot = await graph.aget_state(config, subgraphs=subgraphs)
    conf = config["configurable"]
    wanted = [conf[key] for key in ("checkpoint_ns", "checkpoint_id") if conf.get(key)]
    # LangGraph answers an unknown checkpoint with an empty snapshot that has no timestamp.
    if wanted and snapshot.created_at is None:
        raise NotFound("Checkpoint", " ".join(wanted))
    return snapshot


async def read(graph: AnyGraph, config: RunnableConfig) -> StateSnapshot:
    """The state at ``config`` as LangGraph answers it (empty for an unknown checkpoint)."""
    return await graph.aget_state(config)


async def latest(graph: AnyGraph, thread_id: UUID) -> StateSnapshot:
    return await read(graph, thread_config(thread_id))


def history(
    graph: AnyGraph,
    config: RunnableConfig,
    *,
    filter: dict[str, Any] | None,
    before: RunnableConfig | None,
    limit: int | None,
) -> AsyncIterator[StateSnapshot]:
    return graph.aget_state_history(config, filter=filter, before=before, limit=limit)


async def update(
    graph: AnyGraph, config: RunnableConfig, values: Any, *, as_node: str | None
) -> RunnableConfig:
    return await graph.aupdate_state(config, values, as_node=as_node)
