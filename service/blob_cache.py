"""Decoded checkpoint blobs, kept per replica so a turn decodes only what is new.

A conversation's messages live in a ``DeltaChannel``: a snapshot of the whole list every so
many updates, and each step's new messages as writes. Each run starts by reading the snapshot
and the writes since, and decoding them costs CPU in proportion to the conversation's length,
on every turn. The bytes do not change between turns (a snapshot is written once and then
read a hundred times), so this replica keeps what it decoded.

The key is the stored value itself (its serializer type tag and bytes), under the thread it was
read for. A value is therefore never served for bytes other than the ones it was decoded from:
rows another replica wrote, a thread deleted and created again with the same id, a history
the reaper rewrote or pruned, an upserted write: all either match byte for byte, and decode to
the same value, or miss. Nothing here is the only copy of anything (design invariant 5):
losing the cache costs decoding time, never data.

The bound is on memory: each entry is charged its bytes (kept to compare) and an estimate of
what the decoded objects take, ``DECODED_PER_STORED_BYTE`` times the stored size plus
``ENTRY_OVERHEAD`` (measured with tracemalloc for LangChain message lists of 2 to 600
messages; tests/service/test_blob_cache.py checks the estimate stays above it). Least recently
used entries go first. A thread's entries are dropped when this replica deletes or prunes it.

What a hit returns is a shallow copy of the decoded container (list, dict, or a delta
snapshot's list), so a graph that appends to its state in place cannot change the cached
value. The messages inside are shared between runs, as they are between the steps of one run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol

from threadkeeper.service.compat import DeltaSnapshot

# The thread whose checkpoint a saver is loading. Only loads go through the cache (a history
# listing reads each blob once), and each entry is filed under its thread, to be dropped with it.
_reading: ContextVar[str | None] = ContextVar("threadkeeper_blob_reading", default=None)

# Decoded LangChain messages take 6-8 bytes of Python objects per stored byte (more for
# shorter messages); a small entry costs more per byte (11 at 2 messages), which the fixed
# overhead (the key, the entry, the LRU links, a message's own fixed cost) covers.
DECODED_PER_STORED_BYTE = 9
ENTRY_OVERHEAD = 4096

# What a serializer may decode (the msgpack allowlists LangGraph added to it, see
# ``CachingSerializer.narrowed``): a value decoded under one set is not served under another.
Scope = frozenset[Any]
Key = tuple[str, Scope, str, bytes]


@dataclass
class Stats:
    """Counters since the replica started, read by the metrics collector at scrape time."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    hit_bytes: int = 0
    miss_bytes: int = 0


@dataclass
class BlobCache:
    """Decoded blobs by (thread, type, bytes), least recently used first out, within
    ``max_bytes``; 0 turns it off."""

    max_bytes: int
    stats: Stats = field(default_factory=Stats)
    _entries: OrderedDict[Key, Any] = field(default_factory=OrderedDict)
    _by_thread: dict[str, set[Key]] = field(default_factory=dict)
    _bytes: int = 0

    @property
    def held_bytes(self) -> int:
        """The memory charged for what is held now (at most ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def decode(
        self,
        thread_id: str,
        scope: Scope,
        data: tuple[str, bytes],
        loads: Callable[[tuple[str, bytes]], Any],
    ) -> Any:
        """``loads(data)``, from the cache when these bytes were decoded before in ``scope``."""
        key = (thread_id, scope, *data)
        blob = data[1]
        value = self._entries.get(key, _MISSING)
        if value is not _MISSING:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            self.stats.hit_bytes += len(blob)
            return _fresh(value)
        value = loads(data)
        self.stats.misses += 1
        self.stats.miss_bytes += len(blob)
        self._put(key, value)
        return _fresh(value)

    def drop_thread(self, thread_id: str) -> None:
        """Forget what was read for ``thread_id`` (it was deleted, or its history pruned)."""
        for key in self._by_thread.pop(thread_id, set()):
            self._entries.pop(key, None)
            self._bytes -= _cost(key)

    def _put(self, key: Key, value: Any) -> None:
        cost = _cost(key)
        if cost > self.max_bytes:
            return
        self._entries[key] = value
        self._by_thread.setdefault(key[0], set()).add(key)
        self._bytes += cost
        while self._bytes > self.max_bytes:
            old, _ = self._entries.popitem(last=False)
            self._forget(old)
            self.stats.evictions += 1

    def _forget(self, key: Key) -> None:
        self._bytes -= _cost(key)
        keys = self._by_thread.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_thread[key[0]]


_MISSING = object()


def _cost(key: Key) -> int:
    return charge(len(key[3]))


def charge(stored: int) -> int:
    """What an entry of ``stored`` bytes is charged against the bound: its bytes and the
    estimated size of their decoded objects."""
    return stored * (1 + DECODED_PER_STORED_BYTE) + ENTRY_OVERHEAD


def _fresh(value: Any) -> Any:
    """A copy of the container a caller might change in place; the items are shared."""
    if isinstance(value, DeltaSnapshot):
        return DeltaSnapshot(_fresh(value.value))
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, set):
        return set(value)
    return value


@contextmanager
def reading(thread_id: str) -> Iterator[None]:
    """Decode through the cache inside, for ``thread_id``'s entries."""
    token = _reading.set(thread_id)
    try:
        yield
    finally:
        _reading.reset(token)


class CachingSerializer:
    """A saver's serializer whose ``loads_typed`` goes through a ``BlobCache``; the rest is
    the wrapped serializer's."""

    def __init__(
        self, inner: SerializerProtocol, cache: BlobCache, scope: Scope = frozenset()
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.scope = scope

    def narrowed(self, inner: SerializerProtocol, allowlist: Iterable[Any]) -> CachingSerializer:
        """The same cache around ``inner``, this serializer with ``allowlist`` applied."""
        return CachingSerializer(inner, self.cache, self.scope | frozenset(allowlist))

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return self.inner.dumps_typed(obj)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, blob = data
        thread_id = _reading.get()
        if thread_id is None or type_ in UNCACHED_TYPES or not isinstance(blob, bytes):
            return self.inner.loads_typed(data)
        return self.cache.decode(thread_id, self.scope, data, self.inner.loads_typed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# Values with nothing to decode.
UNCACHED_TYPES = frozenset({"empty", "null"})
