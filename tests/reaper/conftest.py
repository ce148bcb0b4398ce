"""Fixtures of the reaper tests: a reaper connection and the real agent graph on the pool."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncConnection, conninfo
from psycopg.rows import DictRow

from threadkeeper.reaper.db import connect
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.checkpointer import FencedPostgresSaver
from threadkeeper.service.db import Pool


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


@pytest.fixture
def read_only_url(pg_server: str, database_url: str) -> Iterator[str]:
    """The test database through a role that may read every table but change none."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        yield conninfo.make_conninfo(database_url, user=role)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")
