"""Reading a checkpoint and its DeltaChannel history in one statement (service.checkpoint_load).

The reference is the stock saver's read (``FencedPostgresSaver`` without ``history`` runs the
stock ``aget_tuple`` and ``aget_delta_channel_history``): on the same rows, both must give the
same checkpoint and the same histories, at every checkpoint of a thread, on branches and in
subgraph namespaces.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.types import Durability
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH
from psycopg_pool import AsyncConnectionPool

from tests.reaper.graphs import build_parent
from threadkeeper.service import checkpoint_load
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.checkpointer import FencedPostgresSaver, history_channels
from threadkeeper.service.db import CONNECTION_KWARGS, Pool


class BorrowCountingPool(AsyncConnectionPool):  # type: ignore[type-arg]
    """A real pool that counts how often a connection is borrowed (one per statement here)."""

    borrowed = 0

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109
        async with super().connection(timeout) as conn:
            self.borrowed += 1
            yield conn


@asynccontextmanager
async def counting_pool(database_url: str) -> AsyncIterator[BorrowCountingPool]:
    pool = BorrowCountingPool(database_url, max_size=4, kwargs=CONNECTION_KWARGS, open=False)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


def _say(turn: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"turn {turn}: what is {turn}*3"}]}


async def _talk(
    pool: Pool, builder: Any, thread_id: str, turns: int, durability: Durability = "sync"
) -> None:
    graph = builder.compile(checkpointer=FencedPostgresSaver(pool))
    for turn in range(1, turns + 1):
        await graph.ainvoke(
            _say(turn), {"configurable": {"thread_id": thread_id}}, durability=durability
        )


async def _talked(pool: Pool, builder: Any, turns: int) -> RunnableConfig:
    """A new thread of ``turns`` turns; the config that reads its latest checkpoint."""
    thread_id = str(uuid.uuid4())
    await _talk(pool, builder, thread_id, turns)
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}


def _same_tuple(ours: CheckpointTuple | None, stock: CheckpointTuple | None) -> None:
    assert (ours is None) == (stock is None)
    if ours is None or stock is None:
        return
    assert ours.config == stock.config
    assert ours.parent_config == stock.parent_config
    assert ours.checkpoint == stock.checkpoint
    assert ours.metadata == stock.metadata
    assert sorted(map(repr, ours.pending_writes or [])) == sorted(
        map(repr, stock.pending_writes or [])
    )


async def _compare(
    ours: FencedPostgresSaver, stock: FencedPostgresSaver, config: RunnableConfig
) -> dict[str, Any]:
    """Load ``config`` through both savers, as LangGraph does; the histories must agree."""
    mine = await ours.aget_tuple(config)
    theirs = await stock.aget_tuple(config)
    _same_tuple(mine, theirs)
    assert mine is not None and theirs is not None
    wanted = [
        ch
        for ch in ours.history
        if ch in mine.checkpoint["channel_versions"] and ch not in mine.checkpoint["channel_values"]
    ]
    if not wanted:
        assert not ours._preloaded, "a history was read that nobody needs"
        return {}
    got = await ours.aget_delta_channel_history(config=mine.config, channels=wanted)
    expected = await stock.aget_delta_channel_history(config=theirs.config, channels=wanted)
    assert dict(got) == dict(expected)
    return dict(got)


def recorded_rows(monkeypatch: pytest.MonkeyPatch, kinds: str) -> list[list[Any]]:
    """The rows of each kind in ``kinds`` (``_kind`` letters) every later load statement
    returned, one list a load."""
    loads: list[list[Any]] = []
    split = checkpoint_load.split

    def recording(rows: Any) -> Any:
        loads.append([row for row in rows if row["_kind"] in kinds])
        return split(rows)

    monkeypatch.setattr(checkpoint_load, "split", recording)
    return loads


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_every_checkpoint_of_a_thread_reads_as_the_stock_saver_reads_it(
    database_url: str, durability: Durability
) -> None:
    """Snapshots every 3 updates, a plain blob channel, and subgraph namespaces; "exit" writes
    one checkpoint a turn, with the turn's DeltaChannel writes stored at exit."""
    builder = build_parent()
    async with counting_pool(database_url) as pool:
        thread_id = str(uuid.uuid4())
        await _talk(pool, builder, thread_id, turns=7, durability=durability)
        channels = history_channels(builder.compile())
        assert channels == ("messages",)
        ours = FencedPostgresSaver(pool, history=channels)
        stock = FencedPostgresSaver(pool)
        configs = [t.config async for t in stock.alist({"configurable": {"thread_id": thread_id}})]
        namespaces = {c["configurable"]["checkpoint_ns"] for c in configs}
        # On "exit" a subgraph that ends cleanly keeps no checkpoints of its own.
        assert (len(namespaces) > 1) == (durability != "exit"), namespaces
        seeded = unseeded = 0
        for config in configs:
            for history in (await _compare(ours, stock, config)).values():
                if "seed" in history:
                    seeded += 1
                else:
                    unseeded += 1
        # Both ends of the walk were met: a snapshot found, and a walk up to the root.
        assert seeded and unseeded
        assert not ours._preloaded


async def test_the_latest_checkpoint_and_its_history_cost_one_statement(
    database_url: str,
) -> None:
    builder = build_graph(OfflineChatModel())
    async with counting_pool(database_url) as pool:
        latest = await _talked(pool, builder, turns=4)
        ours = FencedPostgresSaver(pool, history=history_channels(builder.compile()))
        stock = FencedPostgresSaver(pool)

        before = pool.borrowed
        mine = await ours.aget_tuple(latest)
        assert mine is not None
        history = await ours.aget_delta_channel_history(config=mine.config, channels=["messages"])
        assert pool.borrowed - before == 1

        before = pool.borrowed
        theirs = await stock.aget_tuple(latest)
        assert theirs is not None
        expected = await stock.aget_delta_channel_history(
            config=theirs.config, channels=["messages"]
        )
        assert pool.borrowed - before == 3
        _same_tuple(mine, theirs)
        assert dict(history) == dict(expected)
        assert len(history["messages"]["writes"]) >= 8  # four turns, each a question and answer


async def test_a_branch_replays_its_own_ancestors(database_url: str) -> None:
    """A turn from an older checkpoint forks the thread: the walk follows parent ids, not age."""
    builder = build_graph(OfflineChatModel())
    async with counting_pool(database_url) as pool:
        latest = await _talked(pool, builder, turns=3)
        graph = builder.compile(checkpointer=FencedPostgresSaver(pool))
        history = [s async for s in graph.aget_state_history(latest)]
        fork_point = next(s for s in history if s.metadata and s.metadata.get("step") == 3)
        await graph.ainvoke(_say(9), fork_point.config)
        ours = FencedPostgresSaver(pool, history=["messages"])
        stock = FencedPostgresSaver(pool)
        got = await _compare(ours, stock, latest)
        texts = [str(m.content) for _, _, batch in got["messages"]["writes"] for m in batch]
        assert any("turn 9" in t for t in texts)
        assert not any("turn 3" in t for t in texts), "the branch replayed the abandoned turn"


async def test_a_thread_without_checkpoints_reads_as_none(database_url: str) -> None:
    async with counting_pool(database_url) as pool:
        ours = FencedPostgresSaver(pool, history=["messages"])
        missing: RunnableConfig = {
            "configurable": {"thread_id": str(uuid.uuid4()), "checkpoint_ns": ""}
        }
        assert await ours.aget_tuple(missing) is None
        assert not ours._preloaded


async def test_a_history_asked_for_other_channels_is_read_the_stock_way(
    database_url: str,
) -> None:
    """Only an exact match is served from the preload; anything else reads afresh."""
    builder = build_graph(OfflineChatModel())
    async with counting_pool(database_url) as pool:
        latest = await _talked(pool, builder, turns=2)
        ours = FencedPostgresSaver(pool, history=["messages"])
        stock = FencedPostgresSaver(pool)
        mine = await ours.aget_tuple(latest)
        assert mine is not None
        before = pool.borrowed
        got = await ours.aget_delta_channel_history(config=mine.config, channels=["messages", "x"])
        assert pool.borrowed - before == 2  # stage 1 and stage 2 of the stock read
        expected = await stock.aget_delta_channel_history(
            config=mine.config, channels=["messages", "x"]
        )
        assert dict(got) == dict(expected)
        assert not ours._preloaded


@pytest.mark.parametrize("by_id", [False, True])
def test_the_load_statement_is_short_enough_for_psycopg_to_keep_its_parse(by_id: bool) -> None:
    statement = checkpoint_load.load_sql(by_id)
    assert len(statement) <= MAX_CACHED_STATEMENT_LENGTH
