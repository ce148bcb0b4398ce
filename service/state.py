"""A thread's state as LangGraph keeps it: read at a checkpoint, its history, and updates.

Reads and updates go through the executor's reader (the graph without a fenced saver), so the
HTTP layer never reaches into the executor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.runnables import RunnableConfig
from langgraph.types import StateSnapshot

from threadkeeper.service.errors import NotFound
from threadkeeper.service.executor import thread_config

if TYPE_CHECKING:
    from threadkeeper.service.services import Services


async def at(svc: Services, config: RunnableConfig, *, subgraphs: bool = False) -> StateSnapshot:
    """The thread's state at ``config``; 404 when it names a checkpoint (or a subgraph's
    namespace) the thread lacks. The latest state of a thread without one is empty, not 404."""
    snapshot = await svc.executor.reader.aget_state(config, subgraphs=subgraphs)
    conf = config["configurable"]
    wanted = [conf[key] for key in ("checkpoint_ns", "checkpoint_id") if conf.get(key)]
    # LangGraph answers an unknown checkpoint with an empty snapshot that has no timestamp.
    if wanted and snapshot.created_at is None:
        raise NotFound("Checkpoint", " ".join(wanted))
    return snapshot


async def read(svc: Services, config: RunnableConfig) -> StateSnapshot:
    """The state at ``config`` as LangGraph answers it (empty for an unknown checkpoint)."""
    return await svc.executor.reader.aget_state(config)


async def latest(svc: Services, thread_id: UUID) -> StateSnapshot:
    return await read(svc, thread_config(thread_id))


def history(
    svc: Services,
    config: RunnableConfig,
    *,
    filter: dict[str, Any] | None,
    before: RunnableConfig | None,
    limit: int | None,
) -> AsyncIterator[StateSnapshot]:
    return svc.executor.reader.aget_state_history(config, filter=filter, before=before, limit=limit)


async def update(
    svc: Services, config: RunnableConfig, values: Any, *, as_node: str | None
) -> RunnableConfig:
    return await svc.executor.reader.aupdate_state(config, values, as_node=as_node)
