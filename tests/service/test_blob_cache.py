"""The replica's decoded-blob cache (service.blob_cache): what it serves, what it keeps, and
what loads through it give (the same as the stock saver's, on real Postgres)."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from tests.service.test_checkpoint_load import _compare, _talked, counting_pool
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.blob_cache import BlobCache, CachingSerializer, charge, reading
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


def test_bytes_decoded_once_are_served_again_without_decoding() -> None:
    serde, inner = _serializer(1 << 20)
    stored = serde.dumps_typed(DeltaSnapshot(_messages(50)))
    with reading("t1"):
        first = serde.loads_typed(stored)
        again = serde.loads_typed(stored)
    assert inner.decoded == 1
    assert again == first == DeltaSnapshot(_messages(50))
    assert serde.cache.stats.hits == 1 and serde.cache.stats.misses == 1
    assert serde.cache.stats.hit_bytes == len(stored[1])


def test_a_caller_changing_what_it_got_does_not_change_the_cache() -> None:
    serde, _ = _serializer(1 << 20)
    stored = serde.dumps_typed(DeltaSnapshot(_messages(4)))
    with reading("t1"):
        got = serde.loads_typed(stored)
        got.value.append(HumanMessage("appended in place", id="x"))
        again = serde.loads_typed(stored)
    assert again.value == _messages(4)


def test_other_bytes_under_the_same_thread_are_decoded() -> None:
    """A thread deleted and created again, or a write upserted, stores other bytes: they never
    get the value decoded from the old ones."""
    serde, inner = _serializer(1 << 20)
    old = serde.dumps_typed(_messages(3, "old "))
    new = serde.dumps_typed(_messages(3, "new "))
    with reading("t1"):
        assert serde.loads_typed(old) == _messages(3, "old ")
        assert serde.loads_typed(new) == _messages(3, "new ")
    assert inner.decoded == 2


def test_only_loads_go_through_the_cache() -> None:
    serde, inner = _serializer(1 << 20)
    stored = serde.dumps_typed(_messages(3))
    serde.loads_typed(stored)
    serde.loads_typed(stored)
    assert inner.decoded == 2
    assert len(serde.cache) == 0


def test_the_cache_stays_within_its_bound_least_recently_used_out_first() -> None:
    blobs = [SERDE.dumps_typed(_messages(20, f"{i} ")) for i in range(6)]
    cost = max(charge(len(b)) for _, b in blobs)
    serde, inner = _serializer(3 * cost)
    with reading("t1"):
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
    """The bound holds for memory: the charge covers the bytes kept and what decoding them
    allocated (tracemalloc), for message lists short and long."""
    type_, blob = SERDE.dumps_typed(DeltaSnapshot(_messages(count, "some words of a turn ")))
    gc.collect()
    tracemalloc.start()
    try:
        value = SERDE.loads_typed((type_, blob))
        decoded, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert value.value
    assert charge(len(blob)) >= len(blob) + decoded


def test_a_blob_larger_than_the_bound_is_decoded_every_time() -> None:
    stored = SERDE.dumps_typed(_messages(20))
    serde, inner = _serializer(charge(len(stored[1])) - 1)
    with reading("t1"):
        serde.loads_typed(stored)
        serde.loads_typed(stored)
    assert inner.decoded == 2
    assert serde.cache.held_bytes == 0


def test_dropping_a_thread_forgets_its_entries_only() -> None:
    serde, inner = _serializer(1 << 20)
    stored = serde.dumps_typed(_messages(5))
    for thread in ("t1", "t2"):
        with reading(thread):
            serde.loads_typed(stored)
    held = serde.cache.held_bytes
    serde.cache.drop_thread("t1")
    assert serde.cache.held_bytes == held // 2
    with reading("t2"):
        serde.loads_typed(stored)
    with reading("t1"):
        serde.loads_typed(stored)
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
        cache.drop_thread(str(uuid.uuid4()))  # another thread: nothing changes
        assert cache.held_bytes > 0
        cache.drop_thread(latest["configurable"]["thread_id"])
        assert cache.held_bytes == 0 and len(cache) == 0


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
    stored = saver.serde.dumps_typed(_messages(3))
    with reading("t1"):
        saver.serde.loads_typed(stored)
        strict.serde.loads_typed(stored)
        strict.serde.loads_typed(stored)
    assert (cache.stats.misses, cache.stats.hits) == (2, 1)
