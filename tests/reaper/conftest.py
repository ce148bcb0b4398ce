"""Fixtures of the reaper tests: a reaper connection and the real agent graph on the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from reaper.db import connect
from service.agent.graph import build_graph
from service.agent.offline import OfflineChatModel
from service.checkpointer import FencedPostgresSaver
from service.db import Pool


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[AsyncConnection[DictRow]]:
    """A connection like the one the reaper opens (autocommit, dict rows)."""
    c = await connect(database_url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def graph(pool: Pool) -> CompiledStateGraph:  # type: ignore[type-arg]
    """The service's agent graph (messages is a DeltaChannel) checkpointing into the test DB."""
    return build_graph(OfflineChatModel()).compile(checkpointer=FencedPostgresSaver(pool))
