"""The replica's decoded-blob cache (service.blob_cache): what it serves, what it keeps, and
what loads through it give (the same as the stock saver's, on real Postgres)."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import WRITES_IDX_MAP
from langgraph.checkpoint.postgres.base import BasePostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import ERROR

from tests.reaper.graphs import build_parent
from tests.service.test_checkpoint_load import (
    _compare,
    _same_tuple,
    _talked,
    counting_pool,
    recorded_rows,
)
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.blob_cache import (
    BlobCache,
    CachingSerializer,
    Keyed,
    channel_blob,
    charge,
    task_write,
)
from threadkeeper.service.checkpointer import FencedPostgresSaver, history_channels
from threadkeeper.service.compat import DeltaSnapshot

SERDE = JsonPlusSerializer()


class CountingSerializer:
    """The real serializer, counting its decodes."""

    def __init__(self) -> None:
        self.decoded = 0

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return SERDE.dumps_typed(obj)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        self.decoded += 1
        return SERDE.loads_typed(data)


def _messages(count: int, tag: str = "") -> list[Any]:
    return [
        HumanMessage(f"{tag}question {i}", id=f"h{i}")
        if i % 2 == 0
        else AIMessage(f"{tag}answer {i}", id=f"a{i}")
        for i in range(count)
    ]


def _serializer(max_bytes: int) -> tuple[CachingSerializer, CountingSerializer]:
    inner = CountingSerializer()
    return CachingSerializer(inner, BlobCache(max_bytes)), inner  # type: ignore[arg-type]


def _version(counter: int) -> str:
    """A channel version as LangGraph's Postgres saver makes them."""
    return BasePostgresSaver().get_next_version(str(counter - 1), None)


def _stored(value: Any, thread_id: str = "t1", version: str | None = None) -> tuple[str, Keyed]:
    """``value`` stored as a channel's blob row of ``thread_id``, with the row's id."""
    type_, blob = SERDE.dumps_typed(value)
    blob_id = channel_blob(thread_id, "", "messages", version or _version(1))
    assert blob_id is not None
    return type_, Keyed(blob_id, blob)


def test_a_row_decoded_once_is_served_again_without_decoding() -> None:
    serde, inner = _serializer(1 << 20)
    stored = _stored(DeltaSnapshot(_messages(50)))
    first = serde.loads_typed(stored)
    again = serde.loads_typed(stored)
    assert inner.decoded == 1
    assert again == first == DeltaSnapshot(_messages(50))
    assert serde.cache.stats.hits == 1 and serde.cache.stats.misses == 1
    assert serde.cache.stats.hit_bytes == len(stored[1].data)


def test_a_caller_changing_what_it_got_does_not_change_the_cache() -> None:
    serde, _ = _serializer(1 << 20)
    stored = _stored(DeltaSnapshot(_messages(4)))
    got = serde.loads_typed(stored)
    got.value.append(HumanMessage("appended in place", id="x"))
    again = serde.loads_typed(stored)
    assert again.value == _messages(4)


def test_other_rows_of_the_same_thread_are_decoded() -> None:
    """Another version of a channel, another thread's row at the same version: their own
    values, never the one decoded for another id."""
    serde, inner = _serializer(1 << 20)
    version = _version(1)
    old = _stored(_messages(3, "old "), version=version)
    new = _stored(_messages(3, "new "), version=_version(2))
    other = _stored(_messages(3, "other "), thread_id="t2", version=version)
    assert serde.loads_typed(old) == _messages(3, "old ")
    assert serde.loads_typed(new) == _messages(3, "new ")
    assert serde.loads_typed(other) == _messages(3, "other ")
    assert inner.decoded == 3


def test_bytes_without_an_id_are_decoded_every_time() -> None:
    """Only rows the run-start load keyed go through the cache (a history listing does not)."""
    serde, inner = _serializer(1 << 20)
    stored = SERDE.dumps_typed(_messages(3))
    serde.loads_typed(stored)
    serde.loads_typed(stored)
    assert inner.decoded == 2
    assert len(serde.cache) == 0


@pytest.mark.parametrize("version", ["1", "7", "00000000000000000000000000000002.0", "2.000", ""])
def test_a_version_without_a_random_part_is_not_an_id(version: str) -> None:
    """A thread deleted and created again counts its versions from 1 again: only the random
    fraction LangGraph's Postgres saver adds keeps them apart."""
    assert channel_blob("t1", "", "messages", version) is None


def test_versions_the_saver_makes_are_ids() -> None:
    assert channel_blob("t1", "", "messages", _version(1)) is not None
    assert _version(1) != _version(1)


def test_a_special_channels_write_is_not_an_id() -> None:
    """Errors, interrupts and resume values (negative indexes) are upserted in place."""
    assert task_write("t1", "", "c1", "task", 0) is not None
    for idx in WRITES_IDX_MAP.values():
        assert task_write("t1", "", "c1", "task", idx) is None


def test_the_cache_stays_within_its_bound_least_recently_used_out_first() -> None:
    blobs = [_stored(_messages(20, f"{i} "), version=_version(i + 1)) for i in range(6)]
    cost = max(charge(len(b.data)) for _, b in blobs)
    serde, inner = _serializer(3 * cost)
    for blob in blobs[:3]:
        serde.loads_typed(blob)
    serde.loads_typed(blobs[0])  # now the most recently used
    for blob in blobs[3:]:
        serde.loads_typed(blob)
        assert serde.cache.held_bytes <= serde.cache.max_bytes
    decoded = inner.decoded
    serde.loads_typed(blobs[5])
    assert inner.decoded == decoded, "the newest entry was evicted"
    serde.loads_typed(blobs[1])
    assert inner.decoded == decoded + 1, "an entry beyond the bound was kept"
    assert serde.cache.stats.evictions >= 3


@pytest.mark.parametrize("count", [1, 2, 20, 600])
def test_an_entry_is_charged_at_least_the_memory_it_takes(count: int) -> None:
    """The bound holds for memory: the charge covers what decoding allocated (tracemalloc),
    for message lists short and long."""
    type_, blob = SERDE.dumps_typed(DeltaSnapshot(_messages(count, "some words of a turn ")))
    gc.collect()
    tracemalloc.start()
    try:
        value = SERDE.loads_typed((type_, blob))
        decoded, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert value.value
    assert charge(len(blob)) >= decoded


def test_a_blob_larger_than_the_bound_is_decoded_every_time() -> None:
    stored = _stored(_messages(20))
    serde, inner = _serializer(charge(len(stored[1].data)) - 1)
    serde.loads_typed(stored)
    serde.loads_typed(stored)
    assert inner.decoded == 2
    assert serde.cache.held_bytes == 0


def test_dropping_a_thread_forgets_its_entries_only() -> None:
    serde, inner = _serializer(1 << 20)
    version = _version(1)
    mine, theirs = (_stored(_messages(5), t, version) for t in ("t1", "t2"))
    serde.loads_typed(mine)
    serde.loads_typed(theirs)
    held = serde.cache.held_bytes
    serde.cache.drop_thread("t1")
    assert serde.cache.held_bytes == held // 2
    serde.loads_typed(theirs)
    serde.loads_typed(mine)
    assert inner.decoded == 3


async def test_a_bound_of_zero_turns_the_cache_off(pool: Any) -> None:
    saver = FencedPostgresSaver(pool, history=["messages"], cache=BlobCache(0))
    assert not isinstance(saver.serde, CachingSerializer)


async def test_loads_through_the_cache_read_as_the_stock_saver_reads(database_url: str) -> None:
    """The second load of a thread decodes nothing, and both give what the stock read gives."""
    builder = build_graph(OfflineChatModel())
    cache = BlobCache(1 << 24)
    async with counting_pool(database_url) as pool:
        latest = await _talked(pool, builder, turns=6)
        channels = history_channels(builder.compile())
        stock = FencedPostgresSaver(pool)
        first = await _compare(
            FencedPostgresSaver(pool, history=channels, cache=cache), stock, latest
        )
        misses = cache.stats.misses
        assert misses and not cache.stats.hits
        again = await _compare(
            FencedPostgresSaver(pool, history=channels, cache=cache), stock, latest
        )
        assert cache.stats.misses == misses
        assert cache.stats.hits >= misses
        assert again == first
        held = len(cache)
        listed = [t async for t in FencedPostgresSaver(pool, cache=cache).alist(latest)]
        assert len(listed) > 1 and len(cache) == held, "a history listing filled the cache"
        cache.drop_thread(str(uuid.uuid4()))  # another thread: nothing changes
        assert cache.held_bytes > 0
        cache.drop_thread(latest["configurable"]["thread_id"])
        assert cache.held_bytes == 0 and len(cache) == 0


async def test_a_graph_without_delta_channels_loads_through_the_cache(database_url: str) -> None:
    """Its channel values are blobs, one per version: a second load of a checkpoint (the next
    run after a state read) decodes nothing, and reads as the stock saver reads."""
    cache = BlobCache(1 << 24)
    async with counting_pool(database_url) as pool:
        config = await _turns(pool, cache, str(uuid.uuid4()), range(1, 3))
        stock = await FencedPostgresSaver(pool).aget_tuple(config)
        for _ in range(2):
            misses = cache.stats.misses
            loaded = await FencedPostgresSaver(pool, cache=cache).aget_tuple(config)
            _same_tuple(loaded, stock)
        assert cache.stats.misses == misses and cache.stats.hits


async def test_a_stricter_allowlist_keeps_entries_of_its_own(pool: Any) -> None:
    """LangGraph narrows a saver's msgpack allowlist (``LANGGRAPH_STRICT_MSGPACK``): the
    allowlist reaches the serializer that decodes, and what a laxer one decoded is not served
    to it."""
    cache = BlobCache(1 << 20)
    saver = FencedPostgresSaver(pool, history=["messages"], cache=cache)
    # As LangGraph builds the saver's serializer in strict mode: with an allowlist of its own.
    curated = JsonPlusSerializer(allowed_msgpack_modules=[("langchain_core", "messages")])
    saver.serde = CachingSerializer(curated, cache)
    strict = saver.with_allowlist([("some_module", "SomeType")])
    assert isinstance(saver.serde, CachingSerializer)
    assert isinstance(strict.serde, CachingSerializer)
    assert isinstance(strict.serde.inner, JsonPlusSerializer)
    assert strict.serde.inner is not saver.serde.inner
    assert strict.serde.cache is cache
    stored = _stored(_messages(3))
    saver.serde.loads_typed(stored)
    strict.serde.loads_typed(stored)
    strict.serde.loads_typed(stored)
    assert (cache.stats.misses, cache.stats.hits) == (2, 1)


def _said(tag: str, turn: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"{tag} turn {turn}"}]}


async def _turns(
    pool: Any, cache: BlobCache, thread_id: str, turns: range, tag: str = ""
) -> RunnableConfig:
    """Turns of the parent graph (snapshots every 3 updates, a plain blob channel, subgraph
    namespaces), each run starting with a load through ``cache``, as a replica's runs do."""
    builder = build_parent()
    saver = FencedPostgresSaver(pool, history=history_channels(builder.compile()), cache=cache)
    graph = builder.compile(checkpointer=saver)
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    for turn in turns:
        await graph.ainvoke(_said(tag, turn), config)
    return config


async def _reads_as_stock(pool: Any, cache: BlobCache, config: RunnableConfig) -> dict[str, Any]:
    return await _compare(
        FencedPostgresSaver(pool, history=["messages"], cache=cache),
        FencedPostgresSaver(pool),
        config,
    )


async def _delete_rows(pool: Any, thread_id: str) -> None:
    """The thread's checkpoint rows deleted, as a delete on another replica (or the reaper)
    does: this replica's cache is not told."""
    async with pool.connection() as conn:
        for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
            await conn.execute(f"DELETE FROM {table} WHERE thread_id = %s", (thread_id,))


async def test_a_thread_deleted_elsewhere_and_created_again_reads_its_new_rows(
    database_url: str,
) -> None:
    """The same thread id, its versions counted from 1 again, its checkpoint and task ids
    new: nothing decoded for the first thread is served for the second."""
    cache = BlobCache(1 << 24)
    thread_id = str(uuid.uuid4())
    async with counting_pool(database_url) as pool:
        config = await _turns(pool, cache, thread_id, range(1, 5), "first life")
        await _reads_as_stock(pool, cache, config)
        assert cache.stats.hits, "the first life's turns never read from the cache"
        await _delete_rows(pool, thread_id)
        await _turns(pool, cache, thread_id, range(1, 5), "second life")
        got = await _reads_as_stock(pool, cache, config)
        graph = build_parent().compile(checkpointer=FencedPostgresSaver(pool))
        state = await graph.aget_state(config)
    texts = [str(m.content) for m in state.values["messages"]]
    assert any("second life" in t for t in texts)
    assert not any("first life" in t for t in texts)
    assert got


async def test_an_upserted_write_is_read_as_it_is_now(database_url: str) -> None:
    """A special channel's write (here an error) is overwritten in place; a task's ordinary
    write at the same checkpoint is served from the cache."""
    cache = BlobCache(1 << 24)
    async with counting_pool(database_url) as pool:
        config = await _turns(pool, cache, str(uuid.uuid4()), range(1, 3))
        saver = FencedPostgresSaver(pool, history=["messages"], cache=cache)
        latest = await saver.aget_tuple(config)
        assert latest is not None
        await saver.aput_writes(latest.config, [("notes", ["an ordinary write"])], "task-a")

        async def error_read_after(message: str) -> Any:
            await saver.aput_writes(latest.config, [(ERROR, message)], "task-b")
            loaded = await saver.aget_tuple(config)
            assert loaded is not None
            errors = [v for _, ch, v in loaded.pending_writes or [] if ch == ERROR]
            assert errors == [message]
            assert any(v == ["an ordinary write"] for _, _, v in loaded.pending_writes or [])
            return loaded

        await error_read_after("first failure")
        hits = cache.stats.hits
        await error_read_after("second failure")
        assert cache.stats.hits > hits


async def test_two_replicas_taking_turns_each_read_the_other_ones_turns(
    database_url: str,
) -> None:
    """Round-robin: each replica's cache holds what it decoded for turns the other one has
    since added to, and a tightly bounded one evicts all along."""
    one, other = BlobCache(1 << 24), BlobCache(64 * 1024)
    thread_id = str(uuid.uuid4())
    async with counting_pool(database_url) as pool:
        for turn in range(1, 9):
            cache = one if turn % 2 else other
            config = await _turns(pool, cache, thread_id, range(turn, turn + 1), "rr")
            await _reads_as_stock(pool, one, config)
            await _reads_as_stock(pool, other, config)
    assert one.stats.hits and other.stats.hits
    assert other.stats.evictions and other.held_bytes <= other.max_bytes


def test_only_the_threads_channel_values_in_the_serializers_scope_are_pinned() -> None:
    serde, _ = _serializer(1 << 20)
    snapshot = _stored(DeltaSnapshot(_messages(4)))
    serde.loads_typed(snapshot)
    other_thread = _stored(_messages(2), thread_id="t2")
    serde.loads_typed(other_thread)
    write = task_write("t1", "", "cp-1", "task-a", 0)
    assert write is not None
    serde.loads_typed(("msgpack", Keyed(write, SERDE.dumps_typed(_messages(1))[1])))
    pinned = serde.pinned("t1", "")
    assert list(pinned) == [snapshot[1].id]
    assert pinned[snapshot[1].id].size == len(snapshot[1].data)
    assert not serde.pinned("t1", "child:1")
    assert not serde.narrowed(SERDE, [("some_module", "SomeType")]).pinned("t1", "")


def test_only_the_newest_version_held_of_a_channel_is_pinned() -> None:
    """Every turn's input and every earlier snapshot stay held until they age out, but a load
    reads the newest: only that one is named (by its counter, not as text sorts). Once it
    is evicted, no version of the channel is."""
    older = _stored(DeltaSnapshot(_messages(6)), version="9.5")
    newer = _stored(DeltaSnapshot(_messages(6, "x")), version="10.5")
    other = _stored(DeltaSnapshot(_messages(6, "x")), thread_id="t2")
    sizes = [len(stored[1].data) for stored in (older, newer, other)]
    assert sizes[1] == sizes[2]
    serde, _ = _serializer(charge(sizes[0]) + charge(sizes[1]))
    serde.loads_typed(newer)
    serde.loads_typed(older)
    assert list(serde.pinned("t1", "")) == [newer[1].id]
    serde.loads_typed(other)  # the least recently used, the newer version, makes room
    assert serde.cache.stats.evictions == 1
    assert serde.pinned("t1", "") == {}
    assert list(serde.pinned("t2", "")) == [other[1].id]


def test_a_kept_value_replaces_the_value_kept_before_it_and_no_decoded_one() -> None:
    """A run's final value is held under its version and is the one a load starts from; the
    one the thread's previous run kept goes (each is charged for the whole conversation),
    a snapshot decoded from its row stays."""
    serde, _ = _serializer(1 << 20)
    snapshot = _stored(DeltaSnapshot(_messages(4)), version=_version(3))
    serde.loads_typed(snapshot)
    versions = {5: _version(5), 7: _version(7)}
    for counter, count in ((5, 6), (7, 8), (7, 8)):  # the last: the same value kept again
        blob_id = channel_blob("t1", "", "messages", versions[counter])
        assert blob_id is not None
        serde.cache.keep(frozenset(), blob_id, DeltaSnapshot(_messages(count)), 100 * count)
        (held,) = serde.pinned("t1", "").values()
        assert held.id == blob_id and held.value.value == _messages(count)
        assert held.size == 100 * count
    assert len(serde.cache) == 2, "the first kept value is still held"
    assert serde.cache.held_bytes == charge(len(snapshot[1].data)) + charge(800)
    assert serde.loads_typed(snapshot).value == _messages(4)
    assert serde.cache.stats.misses == 1


def test_a_pinned_value_is_served_as_a_hit_also_after_its_eviction() -> None:
    serde, inner = _serializer(1 << 20)
    stored = _stored(DeltaSnapshot(_messages(6)))
    first = serde.loads_typed(stored)
    pinned = serde.pinned("t1", "")[stored[1].id]
    serde.cache.drop_thread("t1")
    served = serde.loads_typed((stored[0], pinned))
    assert served == first and served.value is not first.value
    assert (inner.decoded, serde.cache.stats.hits) == (1, 1)
    assert serde.cache.stats.hit_bytes == len(stored[1].data)


async def test_a_held_seed_is_left_out_of_the_statement_and_read_as_stock(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second load of a thread reads its snapshot's bytes no more; what it gives is the
    stock read, and the snapshot counts as a hit of its stored size."""
    cache = BlobCache(1 << 24)
    async with counting_pool(database_url) as pool:
        config = await _turns(pool, cache, str(uuid.uuid4()), range(1, 5))
        cache.drop_thread(config["configurable"]["thread_id"])
        loads = recorded_rows(monkeypatch, "b")
        first = await _reads_as_stock(pool, cache, config)
        hit_bytes = cache.stats.hit_bytes
        again = await _reads_as_stock(pool, cache, config)
    assert again == first
    assert len(loads) == 2, "the stock saver's read went through the load statement"
    seeds, seeds_again = loads
    assert seeds and all(row["blob"] is not None for row in seeds)
    assert [row["version"] for row in seeds_again] == [row["version"] for row in seeds]
    assert all(row["blob"] is None for row in seeds_again)
    assert cache.stats.hit_bytes - hit_bytes >= sum(len(row["blob"]) for row in seeds)


async def test_a_seed_evicted_between_its_pin_and_its_decoding_is_still_read(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run of the replica may evict the entry while the statement runs: the load
    decodes what was pinned before it, not what the cache holds after."""
    cache = BlobCache(1 << 24)
    async with counting_pool(database_url) as pool:
        config = await _turns(pool, cache, str(uuid.uuid4()), range(1, 5))
        first = await _reads_as_stock(pool, cache, config)
        pinned = BlobCache.pinned

        def pinned_then_evicted(self: BlobCache, *args: Any) -> Any:
            held = pinned(self, *args)
            self.drop_thread(config["configurable"]["thread_id"])
            return held

        monkeypatch.setattr(BlobCache, "pinned", pinned_then_evicted)
        loads = recorded_rows(monkeypatch, "b")
        again = await _reads_as_stock(pool, cache, config)
    assert again == first
    assert loads[0] and all(row["blob"] is None for row in loads[0])
