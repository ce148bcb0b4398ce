"""A run's final ``DeltaChannel`` values, kept by the replica that ran it, and the loads that
start from them: what the load statement then reads, and that what LangGraph rebuilds is what
the stock saver's read of the same rows gives. Runs go through the service's executor on real
Postgres, as a replica runs them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from langchain_core.runnables import RunnableConfig

from tests.reaper.graphs import build_parent
from tests.service.test_checkpoint_load import _say, recorded_rows
from tests.support.runs import executor, new_run
from threadkeeper.service import runs, threads
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.blob_cache import BlobCache, ChannelBlob, channel_blob
from threadkeeper.service.checkpointer import Fence, FencedPostgresSaver, history_channels
from threadkeeper.service.db import Pool

REPLICA = "final-values-test"
BUILDERS: dict[str, Callable[[], Any]] = {
    # Snapshots every 100 updates; one namespace.
    "agent": lambda: build_graph(OfflineChatModel()),
    # Snapshots every 3 updates, a plain blob channel, and a subgraph's namespace.
    "parent": build_parent,
}


async def _run_turn(pool: Pool, cache: BlobCache, graph: Any, thread_id: UUID, turn: int) -> Any:
    """One turn of the thread as a replica with ``cache`` runs it; its outcome."""
    async with pool.connection() as conn:
        if turn == 1:
            await threads.insert(conn, thread_id=thread_id, owner="alice", metadata={})
        new = new_run(thread_id, input=_say(turn))
        await runs.insert(conn, new, claim_for=runs.ClaimTerms(REPLICA, 30.0))
        run = await runs.get_by_id(conn, new.run_id)
    assert run is not None
    attempt = executor(pool, graph, REPLICA, cache=cache).start(run)
    assert attempt.task is not None
    outcome = await attempt.task
    assert outcome.status == "success", outcome.error
    return outcome


async def _state(builder: Any, saver: FencedPostgresSaver, thread_id: UUID) -> Any:
    config: RunnableConfig = {"configurable": {"thread_id": str(thread_id)}}
    return (await builder.compile(checkpointer=saver).aget_state(config)).values


async def _stock_state(pool: Pool, builder: Any, thread_id: UUID) -> Any:
    return await _state(builder, FencedPostgresSaver(pool), thread_id)


def _held_messages(cache: BlobCache, thread_id: UUID) -> tuple[ChannelBlob, Any]:
    """The newest version of the thread's messages the cache holds, and its value."""
    pinned = cache.pinned(frozenset(), str(thread_id), "").values()
    (held,) = [p for p in pinned if p.id.channel == "messages"]
    assert isinstance(held.id, ChannelBlob)
    return held.id, held.value.value


async def _version_at(pool: Pool, thread_id: UUID, checkpoint_id: str | None = None) -> str:
    """The messages' version at a checkpoint of the thread's root namespace (the latest one
    by default)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT checkpoint -> 'channel_versions' ->> 'messages' AS v FROM checkpoints"
            " WHERE thread_id = %s AND checkpoint_ns = ''"
            " AND (checkpoint_id = %s OR %s::text IS NULL)"
            " ORDER BY checkpoint_id DESC LIMIT 1",
            (str(thread_id), checkpoint_id, checkpoint_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return str(row["v"])


@pytest.mark.parametrize("graph_name", sorted(BUILDERS))
async def test_the_next_run_here_starts_from_the_values_the_last_one_ended_with(
    pool: Pool, monkeypatch: pytest.MonkeyPatch, graph_name: str
) -> None:
    """After each run the replica holds the messages at the thread's latest version, equal to
    the stock read of the rows; the next run's load replays no history for them (no walk, no
    writes, no seed read), and the state stays the stock read's, across snapshots."""
    builder = BUILDERS[graph_name]
    graph = builder().compile()
    cache = BlobCache(1 << 24)
    thread_id = uuid.uuid4()
    loads = recorded_rows(monkeypatch, "cwb")
    for turn in range(1, 6):
        loads.clear()
        outcome = await _run_turn(pool, cache, graph, thread_id, turn)
        stock = await _stock_state(pool, builder(), thread_id)
        blob_id, held = _held_messages(cache, thread_id)
        assert blob_id.version == await _version_at(pool, thread_id)
        assert held == stock["messages"] == outcome.values["messages"]
        assert any(f"turn {turn}:" in str(m.content) for m in held)
        if turn > 1:  # the first load of a run is its root namespace's
            assert loads[0] == [], "the run's load replayed a history the replica held"
    theirs = await _stock_state(pool, builder(), thread_id)
    ours = await _state(
        builder(),
        FencedPostgresSaver(pool, history=history_channels(graph), cache=cache),
        thread_id,
    )
    assert ours == theirs


async def test_replicas_taking_turns_walk_back_only_to_their_own_last_turn(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round-robin: each replica holds the value it ended its own last turn with; a load
    walks back to that checkpoint (one turn of the other replica's), not to the snapshot,
    and rebuilds what the stock read gives."""
    builder = BUILDERS["agent"]
    graph = builder().compile()
    caches = (BlobCache(1 << 24), BlobCache(1 << 24))
    thread_id = uuid.uuid4()
    loads = recorded_rows(monkeypatch, "cwb")
    for turn in range(1, 7):
        cache = caches[turn % 2]
        before = _held_messages(cache, thread_id)[0] if turn > 2 else None
        loads.clear()
        await _run_turn(pool, cache, graph, thread_id, turn)
        if before is None:
            continue
        walk = loads[0]
        (channel_row,) = [row for row in walk if row["_kind"] == "c"]
        assert channel_row["version"] == before.version, "the walk went past the held value"
        assert not [row for row in walk if row["_kind"] == "b"], "a stored seed was read"
        oldest = channel_row["chain"][-1]
        assert await _version_at(pool, thread_id, oldest) == before.version, "walked past it"
        assert walk and all(
            row["checkpoint_id"] in channel_row["chain"] for row in walk if row["_kind"] == "w"
        )
        for side in caches:
            held = await _state(
                builder(),
                FencedPostgresSaver(pool, history=history_channels(graph), cache=side),
                thread_id,
            )
            assert held == await _stock_state(pool, builder(), thread_id)


async def test_only_the_checkpoint_the_saver_put_last_is_kept(pool: Pool) -> None:
    """LangGraph's ``checkpoints`` stream names each checkpoint; the values of one that is
    not the last this saver put (an earlier step's, or one never put) are not kept."""
    builder = BUILDERS["agent"]
    graph = builder().compile()
    cache = BlobCache(1 << 24)
    thread_id = uuid.uuid4()
    await _run_turn(pool, cache, graph, thread_id, 1)
    async with pool.connection() as conn:
        new = new_run(thread_id, input=_say(2))
        await runs.insert(conn, new, claim_for=runs.ClaimTerms(REPLICA, 30.0))
    saver = FencedPostgresSaver(
        pool, Fence(new.run_id, 1), history=history_channels(graph), cache=cache
    )
    config: RunnableConfig = {"configurable": {"thread_id": str(thread_id)}}
    items = [
        chunk
        async for chunk in builder()
        .compile(checkpointer=saver)
        .astream(_say(2), config, stream_mode="checkpoints")
    ]
    await saver.flush()
    assert len(items) > 2
    kept = _held_messages(cache, thread_id)[0]
    never_put = {"configurable": {**items[-1]["config"]["configurable"], "checkpoint_id": "x"}}
    for item in (items[0], items[-2], {**items[-1], "config": never_put}):
        saver.keep_final_values(item["config"], item["values"])
        assert _held_messages(cache, thread_id)[0] == kept
    saver.keep_final_values(items[-1]["config"], items[-1]["values"])
    latest = _held_messages(cache, thread_id)[0]
    assert latest != kept
    assert latest == channel_blob(
        str(thread_id), "", "messages", await _version_at(pool, thread_id)
    )
