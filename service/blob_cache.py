"""Decoded checkpoint blobs, kept per replica so a turn decodes only what is new.

A conversation's messages live in a ``DeltaChannel``: a snapshot of the whole list every so
many updates, and each step's new messages as writes. Each run starts by reading the snapshot
and the writes since, and decoding them costs CPU in proportion to the conversation's length,
on every turn. The rows do not change between turns (a snapshot is written once and then read
a hundred times), so this replica keeps what it decoded, under the id of the row it came from.

An id is only used where it names one value for as long as the row exists and is never
reused for another (design invariant 5), so an entry can only be served for the bytes it was
decoded from:

* A channel value (``checkpoint_blobs``) is ``ChannelBlob``: (thread, namespace, channel,
  version). Rows are inserted with ``ON CONFLICT DO NOTHING``: whoever wrote another replica's
  turn, a zombie attempt racing its successor, the first row under an id is the only one. A
  version is ``get_next_version``'s ``"<counter>.<random fraction>"``
  (``BasePostgresSaver``), so the counter a thread deleted and created again with the same id
  starts over from comes with new random fractions; a resumed or forked step draws a new one
  too. A version without that fraction (rows another tool wrote) is not cached. The one
  writer that replaces a row, the reaper re-snapshotting a delta channel before it cuts the
  history (``reaper.delta``), replaces only an ``empty`` placeholder, which has nothing to
  decode and is never cached.
* A task write (``checkpoint_writes``) is ``TaskWrite``: (thread, namespace, checkpoint,
  task, index). Checkpoint ids are ``uuid6`` (a timestamp and 48 random bits), never issued
  twice, and a task's ordinary writes (index >= 0) are inserted with ``DO NOTHING``. Writes to
  LangGraph's special channels (errors, interrupts, resume values: negative indexes,
  ``WRITES_IDX_MAP``) are upserted, and so overwritten in place: they are never cached.

History pruning and thread deletion only delete rows, whose ids are then never written
again; this replica drops a thread's entries when it deletes or prunes it, and entries for
rows deleted elsewhere (another replica, the reaper) are never asked for again and age out.
Nothing here is the only copy of anything: losing the cache costs decoding time, never data.

The saver hands LangGraph's own decoding code rows whose bytes are wrapped with their id
(``Keyed``); ``CachingSerializer`` decodes those through the cache and everything else as
the wrapped serializer does. Only the run-start load keys its rows (``service.checkpointer``),
so a history listing, which reads each blob once, does not push out what the next turn needs.
The load also leaves out the bytes of the channel values held here (``pinned``): at turn 300 a
conversation's snapshot is most of what a load reads, detoasts and sends. Those rows come back
without bytes and are decoded from the values taken out of the cache before the statement ran
(``Pinned``), so an eviction meanwhile changes nothing.

A run's final value of a ``DeltaChannel`` is kept too (``BlobCache.keep``, by the executor
once the run's ending has committed), under the id its version has: no row stores that value
whole, but it is the value that id names, the seed and writes Postgres holds replayed, which
the next load would rebuild (``service.checkpointer``, ``keep_final_values``, says which
checkpoint qualifies). A load that meets a held version, at the checkpoint or on its walk back,
starts there (``service.checkpoint_load``): the replica's next turn on the thread reads and
replays no history at all, and a replica taking every other turn replays one turn's writes.
Its messages are the live objects the run ended with, as the steps of one run share them.

The bound is on memory: each entry is charged an estimate of what its decoded objects take,
``DECODED_PER_STORED_BYTE`` times the stored size plus ``ENTRY_OVERHEAD`` (measured with
tracemalloc for LangChain message lists of 2 to 600 messages;
tests/service/test_blob_cache.py checks the estimate stays above it). Least recently used
entries go first.

What a hit returns is a shallow copy of the decoded container (list, dict, or a delta
snapshot's list), so a graph that appends to its state in place cannot change the cached
value. The messages inside are shared between runs, as they are between the steps of one run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from langgraph.checkpoint.serde.base import SerializerProtocol

from threadkeeper.service.compat import DeltaSnapshot

# Decoded LangChain messages take 6-8 bytes of Python objects per stored byte (more for
# shorter messages); a small entry costs more per byte (11 at 2 messages), which the fixed
# overhead (the key, the entry, the LRU links, a message's own fixed cost) covers.
DECODED_PER_STORED_BYTE = 9
ENTRY_OVERHEAD = 4096


# Ids are named tuples: one is made and hashed for every blob of every load, and a tuple's
# construction, hash and comparison run in C. The two kinds differ in length, so never compare
# equal.
class ChannelBlob(NamedTuple):
    """The id of a ``checkpoint_blobs`` row: one channel's value at one version."""

    thread_id: str
    checkpoint_ns: str
    channel: str
    version: str


class TaskWrite(NamedTuple):
    """The id of a ``checkpoint_writes`` row: one write of one task at one checkpoint."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    idx: int


BlobId = ChannelBlob | TaskWrite


def channel_blob(
    thread_id: str, checkpoint_ns: str, channel: str, version: str
) -> ChannelBlob | None:
    """The id of a channel value, if its version is one that is never reused."""
    counter, dot, fraction = version.partition(".")
    if not dot or not counter.isdigit() or not fraction.strip("0."):
        return None
    return ChannelBlob(thread_id, checkpoint_ns, channel, version)


def task_write(
    thread_id: str, checkpoint_ns: str, checkpoint_id: str, task_id: str, idx: int
) -> BlobId | None:
    """The id of a task write, unless it is a special channel's write, which is upserted."""
    if idx < 0:
        return None
    return TaskWrite(thread_id, checkpoint_ns, checkpoint_id, task_id, idx)


class Keyed(NamedTuple):
    """Stored bytes with the id of the row they were read from, standing in for the bytes in
    a row handed to LangGraph's decoding code."""

    id: BlobId
    data: bytes


def keyed(blob_id: BlobId | None, data: bytes) -> bytes | Keyed:
    """``data`` with its id, to be decoded through the cache; as it is when it has none."""
    return data if blob_id is None else Keyed(blob_id, data)


class Pinned(NamedTuple):
    """A channel value this replica holds decoded, taken from the cache before a load that
    therefore did not read its bytes; standing in for them in a row, as ``Keyed`` does. Taken
    before the statement, it is served even if the entry is evicted meanwhile."""

    id: ChannelBlob
    value: Any
    size: int


def held_key(blob_id: ChannelBlob) -> str:
    """How the load statement names a held channel value: ``channel/version``. Only versions
    with a random part are ids, and those hold no ``/``: no two ids share a name."""
    return f"{blob_id.channel}/{blob_id.version}"


# What a serializer may decode (the msgpack allowlists LangGraph added to it, see
# ``CachingSerializer.narrowed``): a value decoded under one set is not served under another.
Scope = frozenset[Any]
Key = tuple[Scope, BlobId]
ChannelKey = tuple[Scope, ChannelBlob]
# One channel of one namespace, in one scope: where the newest version held is looked up.
Slot = tuple[Scope, str, str]


class _Entry(NamedTuple):
    value: Any
    # What the entry is charged against the bound, and the stored size it was decoded from.
    cost: int
    size: int
    # A run's final value (``keep``), not decoded from a row.
    kept: bool = False


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
    """Decoded blobs by row id, least recently used first out, within ``max_bytes``; 0 turns
    it off."""

    max_bytes: int
    stats: Stats = field(default_factory=Stats)
    _entries: OrderedDict[Key, _Entry] = field(default_factory=OrderedDict)
    _by_thread: dict[str, set[Key]] = field(default_factory=dict)
    # Per thread, the newest version held of each channel: what a load may leave out. A
    # thread's older versions (each turn's input, the snapshots before the latest) stay until
    # they age out, but the next load reads the newest ones, and naming them all would send
    # hundreds of ids to be compared with every row the statement reads.
    _newest: dict[str, dict[Slot, ChannelKey]] = field(default_factory=dict)
    _bytes: int = 0

    @property
    def held_bytes(self) -> int:
        """The memory charged for what is held now (at most ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def decode(
        self,
        scope: Scope,
        blob_id: BlobId,
        data: tuple[str, bytes],
        loads: Callable[[tuple[str, bytes]], Any],
    ) -> Any:
        """``loads(data)``, from the cache when the row ``blob_id`` was decoded before in
        ``scope``."""
        key = (scope, blob_id)
        size = len(data[1])
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            self.stats.hit_bytes += size
            return _fresh(entry.value)
        value = loads(data)
        self.stats.misses += 1
        self.stats.miss_bytes += size
        self._put(key, _Entry(value, charge(size), size))
        return _fresh(value)

    def pinned(self, scope: Scope, thread_id: str, checkpoint_ns: str) -> dict[BlobId, Pinned]:
        """The newest version of each channel value of one thread and namespace held decoded
        in ``scope``: a load may leave their bytes out (a conversation's snapshot is most of
        what it reads)."""
        held: dict[BlobId, Pinned] = {}
        for (in_scope, namespace, _), key in self._newest.get(thread_id, {}).items():
            if namespace == checkpoint_ns and in_scope == scope:
                entry = self._entries[key]
                held[key[1]] = Pinned(key[1], entry.value, entry.size)
        return held

    def serve(self, scope: Scope, pinned: Pinned) -> Any:
        """A pinned value, counted as a hit of its stored size (and kept in use if held)."""
        key = (scope, pinned.id)
        if key in self._entries:
            self._entries.move_to_end(key)
        self.stats.hits += 1
        self.stats.hit_bytes += pinned.size
        return _fresh(pinned.value)

    def keep(self, scope: Scope, blob_id: ChannelBlob, value: Any, size: int) -> None:
        """Hold ``value`` as the channel's value at ``blob_id``'s version without decoding it:
        a run's final value of a ``DeltaChannel``, which no row stores whole (see the module's
        docstring). ``size``: the stored bytes it was built from, charged as a decoded row's."""
        key = (scope, blob_id)
        if key in self._entries:
            return
        # It replaces the value the thread's previous run here kept: a load starts from the
        # newest, and each is charged for the whole conversation.
        slot = (scope, blob_id.checkpoint_ns, blob_id.channel)
        previous = self._newest.get(blob_id.thread_id, {}).get(slot)
        if previous is not None and self._entries[previous].kept:
            self._forget(previous, self._entries.pop(previous).cost)
        self._put(key, _Entry(_fresh(value), charge(size), size, kept=True))

    def drop_thread(self, thread_id: str) -> None:
        """Forget what was read for ``thread_id`` (it was deleted, or its history pruned)."""
        self._newest.pop(thread_id, None)
        for key in self._by_thread.pop(thread_id, set()):
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.cost

    def _put(self, key: Key, entry: _Entry) -> None:
        if entry.cost > self.max_bytes:
            return
        self._entries[key] = entry
        scope, blob_id = key
        self._by_thread.setdefault(blob_id.thread_id, set()).add(key)
        if isinstance(blob_id, ChannelBlob):
            self._note_newest((scope, blob_id))
        self._bytes += entry.cost
        while self._bytes > self.max_bytes:
            old, evicted = self._entries.popitem(last=False)
            self._forget(old, evicted.cost)
            self.stats.evictions += 1

    def _note_newest(self, key: ChannelKey) -> None:
        scope, blob_id = key
        slots = self._newest.setdefault(blob_id.thread_id, {})
        slot = (scope, blob_id.checkpoint_ns, blob_id.channel)
        newest = slots.get(slot)
        if newest is None or _counter(blob_id) >= _counter(newest[1]):
            slots[slot] = key

    def _forget(self, key: Key, cost: int) -> None:
        self._bytes -= cost
        scope, blob_id = key
        thread_id = blob_id.thread_id
        keys = self._by_thread.get(thread_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_thread[thread_id]
        if isinstance(blob_id, ChannelBlob):
            slots = self._newest.get(thread_id, {})
            slot = (scope, blob_id.checkpoint_ns, blob_id.channel)
            if slots.get(slot) == key:
                del slots[slot]
                if not slots:
                    del self._newest[thread_id]


def _counter(blob_id: ChannelBlob) -> int:
    """A version's counter (``channel_blob`` admits only versions that start with one)."""
    return int(blob_id.version.partition(".")[0])


def charge(stored: int) -> int:
    """What an entry decoded from ``stored`` bytes is charged against the bound: the
    estimated size of its decoded objects."""
    return stored * DECODED_PER_STORED_BYTE + ENTRY_OVERHEAD


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


class CachingSerializer:
    """A saver's serializer whose ``loads_typed`` decodes ``Keyed`` bytes through a
    ``BlobCache``; the rest is the wrapped serializer's."""

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

    def pinned(self, thread_id: str, checkpoint_ns: str) -> dict[BlobId, Pinned]:
        """What this serializer would serve from the cache for the thread's channel values."""
        return self.cache.pinned(self.scope, thread_id, checkpoint_ns)

    def loads_typed(self, data: tuple[str, bytes | Keyed | Pinned]) -> Any:
        type_, blob = data
        if isinstance(blob, Pinned):
            return self.cache.serve(self.scope, blob)
        if not isinstance(blob, Keyed):
            return self.inner.loads_typed((type_, blob))
        if type_ in UNCACHED_TYPES:
            return self.inner.loads_typed((type_, blob.data))
        return self.cache.decode(self.scope, blob.id, (type_, blob.data), self.inner.loads_typed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# Values with nothing to decode.
UNCACHED_TYPES = frozenset({"empty", "null"})
