"""The checkpoint saver the service runs graphs with.

How it differs from the stock ``AsyncPostgresSaver``, always keeping LangGraph's table layout:

* No instance-wide ``asyncio.Lock``. The stock saver takes one around every database call even
  on a pool (langgraph#7259), so one replica would use one connection at a time. Here each call
  borrows its own pooled connection.
* Fencing. A saver built for a run attempt writes each checkpoint inside a transaction that first
  checks, with a row lock, that this attempt still holds a live lease on the run. A replica that
  lost its lease (paused, partitioned, or its run was deleted) fails that check and can never
  interleave with its successor or resurrect a deleted thread (langgraph#7206).
* One statement per batch. The stock saver sends each ``aput`` and ``aput_writes`` as a pipeline
  of statements, and a fence around them would add a transaction and a round trip of its own.
  Here what is written at once is a single statement (the lease check as a CTE, then the same
  inserts with the same ``ON CONFLICT`` rules as LangGraph's), so it is atomic without
  BEGIN/COMMIT and costs one round trip. Rows are serialized on the event loop instead of in a
  worker thread: a DeltaChannel keeps each write to the step's new messages, and the thread hop
  cost more than the work it moved.
* One read at run start. Given the graph's ``DeltaChannel`` names, ``aget_tuple`` reads the
  checkpoint and those channels' histories in one statement (``service.checkpoint_load``) and
  hands the histories to the ``aget_delta_channel_history`` call LangGraph makes next; the stock
  saver sends three statements for the two calls. What it reads is decoded through the
  replica's cache (``service.blob_cache``), by the id of each row, also for a graph without
  ``DeltaChannel``s. A run's final ``DeltaChannel`` values are kept there under their versions
  (``keep_final_values``), so the next run here reads no history for them.
* Writes are held and go out together (fenced savers). Checkpoints and task writes are held,
  in the order LangGraph hands them over, for up to ``WRITE_BEHIND_SECONDS`` from the first one
  held, then written in one statement; a read (``aget_tuple``, ``alist``) and ``flush`` write
  them first. When a run ends the executor takes them (``take_batch``) into the statement that
  records the ending, and flushes them when a run stops otherwise. What is durable is
  therefore always a prefix of the run: a checkpoint is never durable before the writes that
  produced it, as LangGraph asks, nor before its parent. Steps of a fast graph share a
  statement (and a commit); a slow step, such as a model call, finds its predecessors already
  written. A crash inside the window loses the held steps; the next
  attempt re-runs them, as it re-runs a step the crash interrupted, and a finished task stays
  re-runnable for at most the window. A refusal by the fence surfaces at the next call.
* Nothing is written after a write that failed (fenced savers). LangGraph can go on after a
  task write failed (some failures it raises only when the run ends), and the saver would then
  write later steps past the lost ones: a checkpoint whose DeltaChannel writes are missing reads
  back without their messages. Every call after the failure raises it instead; the attempt
  ends, and the next one resumes from the prefix that is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast
from uuid import UUID

import psycopg
import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncCursor, AsyncRawCursor
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from threadkeeper.service import blob_cache, checkpoint_load
from threadkeeper.service.compat import DeltaSnapshot
from threadkeeper.service.db import Pool, numbered
from threadkeeper.service.lease import WRITE_FENCE_SQL

# FOR SHARE: concurrent writes of one attempt pass together, while a lease takeover or a delete
# (both UPDATE/DELETE the row) waits for an in-flight write to commit, and vice versa.
CHECK_LEASE_SQL = f"""
SELECT 1 FROM runs
WHERE run_id = %s AND attempt = %s AND {WRITE_FENCE_SQL}
FOR SHARE
"""


# The same check as the first part of a write statement: one row if the lease is live, else an
# error that fails the whole statement, so nothing it inserts is committed. The error is a
# division by the number of live leases found (``FENCE_REFUSED``): a divisor that depends on
# count(*) cannot be folded into an error at plan time. The row lock is
# held until the statement's (implicit) transaction commits. ``after``: a CTE whose (row) locks
# are taken before the run row's, as an uncorrelated EXISTS gates the scan of ``runs``.
def _fence_cte(after: str | None) -> str:
    gate = f"\n          AND EXISTS (SELECT 1 FROM {after})" if after else ""
    return f"""fence AS (
    SELECT 1 / count(*) AS live
    FROM (
        SELECT 1 FROM runs
        WHERE run_id = %s AND attempt = %s AND {WRITE_FENCE_SQL}{gate}
        FOR SHARE
    ) AS live
)"""


# LangGraph's columns and conflict rules (BasePostgresSaver.UPSERT_*/INSERT_* statements).
BLOB_COLUMNS = "thread_id, checkpoint_ns, channel, version, type, blob"
BLOB_ROW = "(%s::text, %s::text, %s::text, %s::text, %s::text, %s::bytea)"
WRITE_COLUMNS = (
    "thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob"
)
WRITE_ROW = (
    "(%s::text, %s::text, %s::text, %s::text, %s::text, %s::integer, %s::text, %s::text, %s::bytea)"
)


# How long a fenced saver may hold rows before writing them. It bounds what a crash can cost:
# steps finished in the last window run again on resume. On a busy event loop one step follows
# another tens of milliseconds apart (p99 about 50 ms with 32 conversations on one loop,
# benchmark 2), so a window this long lets a fast graph's steps share a statement.
WRITE_BEHIND_SECONDS = 0.1

# Histories read along with a checkpoint and not yet asked for, at most (a shared reader saver
# may have several loads under way; one never asked for is dropped, oldest first).
MAX_PRELOADED = 32

# What one statement carries, in order: ("w", rows, upsert) for one ``aput_writes`` call's
# rows, ("c", blobs) for one checkpoint with its channel blobs.
Segment = tuple[str, int, bool]
Shape = tuple[Segment, ...]


def _writes_cte(name: str, count: int, upsert: bool, fenced: bool) -> str:
    rows = ", ".join([WRITE_ROW] * count)
    conflict = (
        "DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"
        if upsert
        else "DO NOTHING"
    )
    return f"""{name} AS (
    INSERT INTO checkpoint_writes ({WRITE_COLUMNS})
    SELECT w.* FROM {"fence, " if fenced else ""}(VALUES {rows}) AS w({WRITE_COLUMNS})
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) {conflict}
)"""


def _blobs_cte(name: str, count: int, fenced: bool) -> str:
    rows = ", ".join([BLOB_ROW] * count)
    return f"""{name} AS (
    INSERT INTO checkpoint_blobs ({BLOB_COLUMNS})
    SELECT b.* FROM {"fence, " if fenced else ""}(VALUES {rows}) AS b({BLOB_COLUMNS})
    ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING
)"""


def _checkpoint_cte(name: str, fenced: bool) -> str:
    return f"""{name} AS (
    INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id,
                             parent_checkpoint_id, checkpoint, metadata)
    SELECT %s, %s, %s, %s, %s, %s{" FROM fence" if fenced else ""}
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
    DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
)"""


@lru_cache(maxsize=256)
def batch_sql(shape: Shape, fenced: bool) -> bytes:
    """Held rows as one statement (see ``batch_ctes``) that returns nothing, numbered for a
    raw cursor (see ``db.numbered``): a batch has tens of parameters."""
    return numbered(f"WITH {batch_ctes(shape, fenced)}\nSELECT 1 WHERE false")


@lru_cache(maxsize=256)
def batch_ctes(shape: Shape, fenced: bool, after: str | None = None) -> str:
    """Held rows as CTEs: [fence,] then each segment's inserts, with the same columns and
    ``ON CONFLICT`` rules as LangGraph's. The keys of one statement are all distinct, and every
    data-modifying CTE runs to completion whether or not the statement reads it. ``after``: see
    ``_fence_cte``."""
    ctes = [_fence_cte(after)] if fenced else []
    for i, (kind, count, upsert) in enumerate(shape):
        if kind == "w":
            ctes.append(_writes_cte(f"writes{i}", count, upsert, fenced))
            continue
        if count:
            ctes.append(_blobs_cte(f"blobs{i}", count, fenced))
        ctes.append(_checkpoint_cte(f"checkpoint{i}", fenced))
    return ",\n".join(ctes)


log = structlog.get_logger(__name__)


class LeaseLostError(RuntimeError):
    """This run attempt no longer owns its run; it must stop without writing."""


class WriteInterruptedError(LeaseLostError):
    """A write of this attempt was cancelled before it was known to commit. As with a lost
    lease, the attempt writes nothing more, and its run is resumed once the lease runs out."""


class EarlierWriteFailedError(RuntimeError):
    """A write of this attempt failed before this one; raised from that failure."""


# What a fenced statement fails with when its fence finds the lease gone: SQLSTATE 22012,
# division_by_zero, which nothing else in a fenced statement can raise. Plain SQL has no RAISE;
# a plpgsql function raising a named SQLSTATE would say it more plainly, but costs a function
# call in every write and a migration every replica must wait for, for the same guarantee.
FENCE_REFUSED = psycopg.errors.DivisionByZero


def refused_by_fence(exc: BaseException) -> bool:
    """Whether a statement failed because its fence found the lease gone."""
    return isinstance(exc, FENCE_REFUSED)


@dataclass(frozen=True)
class Fence:
    """Identifies the run attempt whose lease guards every write."""

    run_id: UUID
    attempt: int


WriteRow = tuple[str, str, str, str, str, int, str, str, bytes]
BlobRow = tuple[str, str, str, str, str, bytes | None]


@dataclass(frozen=True)
class HeldWrites:
    """One ``aput_writes`` call's rows, serialized, waiting for a statement to carry them."""

    task_id: str
    task_path: str
    rows: list[WriteRow]
    upsert: bool

    def keys(self) -> set[tuple[str, str, str, int]]:
        return {(row[1], row[2], row[3], row[5]) for row in self.rows}

    def segment(self) -> Segment:
        return ("w", len(self.rows), self.upsert)

    def params(self) -> list[Any]:
        return [value for row in self.rows for value in row]


@dataclass(frozen=True)
class HeldCheckpoint:
    """One ``aput``'s rows, serialized: its channel blobs, then the checkpoint row."""

    blobs: list[BlobRow]
    row: tuple[str, str, str, str | None, Jsonb, Jsonb]

    def key(self) -> tuple[str, str, str]:
        return (self.row[0], self.row[1], self.row[2])

    def segment(self) -> Segment:
        return ("c", len(self.blobs), False)

    def params(self) -> list[Any]:
        return [value for blob in self.blobs for value in blob] + list(self.row)


Held = HeldWrites | HeldCheckpoint


@dataclass(frozen=True)
class Batch:
    """Held rows as one statement's worth: their shape, whether a fence guards them, and the
    (positional) parameters. ``saved`` once a statement carrying them has committed."""

    shape: Shape
    fenced: bool
    params: list[Any]
    items: list[Held]

    def ctes_after(self, lock: str) -> str:
        """The rows as CTEs, for another statement (the run's ending) to put right after its
        CTE ``lock``, which then takes its locks before the fence takes the run row's."""
        return batch_ctes(self.shape, self.fenced, lock)

    def saved(self) -> None:
        _saved(self.items)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _saved(items: Sequence[Held]) -> None:
    # Audit trail of completed tasks: a task id saved twice would mean a node that had
    # finished ran again (the failover tests count these).
    for item in items:
        if isinstance(item, HeldWrites):
            log.debug("task_writes_saved", task_id=item.task_id, task_path=item.task_path)


def history_channels(graph: Any) -> tuple[str, ...]:
    """The ``DeltaChannel`` names of a compiled graph: what a saver should read at load."""
    return tuple(sorted(k for k, v in graph.channels.items() if isinstance(v, DeltaChannel)))


# (thread_id, checkpoint_ns, checkpoint_id) -> the channels replayed and their histories.
Preloaded = dict[tuple[str, str, str], tuple[frozenset[str], dict[str, DeltaChannelHistory]]]


class FencedPostgresSaver(AsyncPostgresSaver):
    """``AsyncPostgresSaver`` on a pool, without the global lock, optionally fenced.

    ``history``: the graph's ``DeltaChannel`` names (``history_channels``), read along with each
    checkpoint; without them the saver reads histories as the stock saver does. ``cache``: the
    replica's decoded blobs (``service.blob_cache``), shared by its savers.
    """

    def __init__(
        self,
        pool: Pool,
        fence: Fence | None = None,
        *,
        history: Sequence[str] = (),
        cache: blob_cache.BlobCache | None = None,
    ) -> None:
        super().__init__(pool)
        if cache is not None and cache.max_bytes:
            self.serde = blob_cache.CachingSerializer(self.serde, cache)
        self.pool = pool
        self.fence = fence
        self.history = list(history)
        self._preloaded: Preloaded = {}
        # Rows held for one statement to carry (fenced savers only), in the order LangGraph
        # handed them over; the keys of the held task writes and checkpoints; and the
        # write-behind of earlier ones that may be under way.
        self._held: list[Held] = []
        self._held_keys: set[tuple[str, str, str, int]] = set()
        self._held_checkpoints: set[tuple[str, str, str]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        # The first write of a fenced saver that failed: nothing is written after it.
        self._failure: BaseException | None = None
        # A fenced saver's run, for keeping its final values (``keep_final_values``): the
        # stored bytes each history channel's value was built from, and the last checkpoint
        # put in the thread's root namespace with those channels' versions.
        self._sizes: dict[str, int] | None = None
        self._last_put: tuple[str, str, dict[str, str]] | None = None

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> FencedPostgresSaver:
        """The stock clone with a stricter msgpack allowlist (``LANGGRAPH_STRICT_MSGPACK``),
        applied to the serializer inside the cache's, whose entries it then keeps apart."""
        serde = self.serde
        if not isinstance(serde, blob_cache.CachingSerializer):
            return cast(FencedPostgresSaver, super().with_allowlist(extra_allowlist))
        self.serde = serde.inner
        try:
            clone = cast(FencedPostgresSaver, super().with_allowlist(extra_allowlist))
        finally:
            self.serde = serde
        if clone is not self:
            clone.serde = serde.narrowed(clone.serde, extra_allowlist)
        return clone

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        # The stock aput's rows (blobs for non-primitive channel values, then the checkpoint
        # row), serialized inline and written in one statement.
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns = configurable["checkpoint_ns"]
        copy = checkpoint.copy()
        values = copy["channel_values"] = checkpoint["channel_values"].copy()
        blob_values: dict[str, Any] = {}
        for k, v in checkpoint["channel_values"].items():
            if isinstance(v, DeltaSnapshot):
                blob_values[k] = values.pop(k)
                values[k] = True
            elif v is not None and not isinstance(v, (str, int, float, bool)):
                blob_values[k] = values.pop(k)
        blob_versions = {k: v for k, v in new_versions.items() if k in blob_values}
        blobs = self._dump_blobs(thread_id, checkpoint_ns, blob_values, blob_versions)
        if self.fence is not None and not checkpoint_ns:
            self._note_put(thread_id, checkpoint, blobs)
        held = HeldCheckpoint(
            blobs,
            (
                thread_id,
                checkpoint_ns,
                checkpoint["id"],
                configurable.get("checkpoint_id"),
                Jsonb(copy),
                Jsonb(get_serializable_checkpoint_metadata(config, metadata)),
            ),
        )
        if self.fence is None:
            await self._write_now([held])
        else:
            await self._refused()
            if held.key() in self._held_checkpoints:
                # Put again (an interrupted step's re-put): one statement cannot write it twice.
                await self.flush()
            self._hold(held)
            self._held_checkpoints.add(held.key())
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint_ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        configurable = config["configurable"]
        rows = self._dump_writes(
            configurable["thread_id"],
            configurable["checkpoint_ns"],
            configurable["checkpoint_id"],
            task_id,
            task_path,
            writes,
        )
        if not rows:
            return
        if self._sizes is not None and not configurable["checkpoint_ns"]:
            for *_, channel, _, blob in rows:
                if channel in self._sizes:
                    self._sizes[channel] += len(blob or b"")
        batch = HeldWrites(task_id, task_path, rows, all(w[0] in WRITES_IDX_MAP for w in writes))
        keys = batch.keys()
        if len(keys) < len(rows):
            # Two writes to one special channel share an index: one statement could not upsert
            # both, so they go row by row as the stock saver sends them (the last one wins).
            await self.flush()
            query = (
                self.UPSERT_CHECKPOINT_WRITES_SQL
                if batch.upsert
                else self.INSERT_CHECKPOINT_WRITES_SQL
            )
            async with self._failing_for_good(), self._cursor(pipeline=True) as cur:
                await cur.executemany(query, rows)
            _saved([batch])
            return
        if self.fence is None:
            await self._write_now([batch])
            return
        await self._refused()
        if keys & self._held_keys:
            # A row already held is written again: one statement cannot touch it twice.
            await self.flush()
        self._hold(batch)
        self._held_keys |= keys

    def keep_final_values(self, config: RunnableConfig, values: Any) -> None:
        """Hold the run's final values of the graph's ``DeltaChannel``s in the replica's
        cache, under their versions: the next run on the thread here then replays no history
        for them (``checkpoint_load``). ``config`` and ``values`` are LangGraph's last
        ``checkpoints`` stream item; they are kept only if that is the checkpoint this saver
        put last, so a run that ended elsewhere (an interrupt before a step, a durability mode
        that skipped it) keeps nothing. The caller calls this once that checkpoint is durable.
        """
        serde = self.serde
        if (
            not isinstance(serde, blob_cache.CachingSerializer)
            or self._last_put is None
            or self._sizes is None
            or not isinstance(values, dict)
        ):
            return
        thread_id, checkpoint_id, versions = self._last_put
        if config["configurable"].get("checkpoint_id") != checkpoint_id:
            return
        for channel, version in versions.items():
            value = values.get(channel)
            blob_id = blob_cache.channel_blob(thread_id, "", channel, version)
            if blob_id is None or not isinstance(value, list | dict | set):
                continue
            serde.cache.keep(
                serde.scope, blob_id, DeltaSnapshot(value), self._sizes.get(channel, 0)
            )

    def _note_put(
        self, thread_id: str, checkpoint: Checkpoint, blobs: Sequence[tuple[Any, ...]]
    ) -> None:
        """What ``keep_final_values`` needs of a checkpoint put in the root namespace: its
        history channels' versions, and the size of a snapshot of one taken here."""
        versions = checkpoint["channel_versions"]
        self._last_put = (
            thread_id,
            checkpoint["id"],
            {ch: str(versions[ch]) for ch in self.history if ch in versions},
        )
        if self._sizes is not None:
            for _, _, channel, _, _, blob in blobs:
                if channel in self._sizes:
                    self._sizes[channel] = len(blob or b"")

    def _hold(self, item: Held) -> None:
        self._held.append(item)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(WRITE_BEHIND_SECONDS, self._write_behind)

    async def flush(self) -> None:
        """Write the held task writes now (the executor calls this when a run stops)."""
        await self._written()
        self._refuse_after_failure()
        held = self._take_held()
        if held:
            await self._write_now(held)

    async def take_batch(self) -> Batch | None:
        """Hand the held rows to the caller's own statement (the run's ending) instead of
        writing them; None if nothing is held. A write-behind under way commits first."""
        await self._written()
        self._refuse_after_failure()
        items = self._take_held()
        return self._batch(items) if items else None

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        await self.flush()
        if not self.history and not isinstance(self.serde, blob_cache.CachingSerializer):
            return await super().aget_tuple(config)
        return await self._load(config)

    async def _load(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint, and the histories LangGraph asks for next, in one statement."""
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        pinned: dict[blob_cache.BlobId, blob_cache.Pinned] = {}
        if isinstance(self.serde, blob_cache.CachingSerializer):
            # Values this replica holds decoded: the statement leaves their bytes out.
            pinned = self.serde.pinned(thread_id, checkpoint_ns)
        params = {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
            "channels": self.history,
            "held": [blob_cache.held_key(held.id) for held in pinned.values()],
        }
        async with self._cursor() as cur:
            await cur.execute(checkpoint_load.load_sql(bool(checkpoint_id)), params)
            target, walks = checkpoint_load.split(await cur.fetchall())
        tracked = self.fence is not None and not checkpoint_ns
        if target is None:
            if tracked:
                self._sizes = dict.fromkeys(self.history, 0)
            return None
        if target["checkpoint"]["v"] < 4 and target["parent_checkpoint_id"]:
            # Pending sends of an old checkpoint need migrating, which the stock read does.
            self._sizes = None
            return await super().aget_tuple(config)
        if isinstance(self.serde, blob_cache.CachingSerializer):
            # Decode what this load read through the replica's cache, by row id.
            target = checkpoint_load.keyed_target(target, thread_id, checkpoint_ns, pinned)
            walks = checkpoint_load.keyed_walks(walks, thread_id, checkpoint_ns, pinned)
        if tracked:
            self._sizes = checkpoint_load.stored_sizes(target, walks, self.history)
        loaded = await self._load_checkpoint_tuple(
            {**target, "thread_id": thread_id, "checkpoint_ns": checkpoint_ns}
        )
        if walks.channels:
            self._preload(thread_id, checkpoint_ns, target["checkpoint_id"], walks)
        return loaded

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        await self.flush()
        async for item in super().alist(config, filter=filter, before=before, limit=limit):
            yield item

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        await self.flush()
        configurable = config["configurable"]
        key = (
            configurable["thread_id"],
            configurable.get("checkpoint_ns", ""),
            get_checkpoint_id(config) or "",
        )
        preloaded = self._preloaded.pop(key, None)
        if preloaded is not None and preloaded[0] == frozenset(channels):
            return {ch: preloaded[1][ch] for ch in channels}
        return await super().aget_delta_channel_history(config=config, channels=channels)

    def _preload(
        self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, walks: checkpoint_load.Walks
    ) -> None:
        histories = self._build_delta_channels_writes_history(
            channels=walks.channels,
            chain_by_ch=walks.chain_by_ch,
            seed_ver_by_ch=walks.seed_ver_by_ch,
            seed_inline_by_ch=walks.seed_inline_by_ch,
            stage2_rows=cast(Any, walks.stage2_rows),
        )
        self._preloaded[(thread_id, checkpoint_ns, checkpoint_id)] = (
            frozenset(walks.channels),
            histories,
        )
        if len(self._preloaded) > MAX_PRELOADED:
            del self._preloaded[next(iter(self._preloaded))]

    def _write_behind(self) -> None:
        self._timer = None
        if self._held:
            task = asyncio.create_task(self._write_after(self._writing, self._take_held()))
            # Whoever writes next awaits it and gets its failure; if the attempt stops first,
            # the failure (its lease was lost) has nobody left to tell.
            task.add_done_callback(_retrieved)
            self._writing = task

    async def _write_after(self, previous: asyncio.Task[None] | None, items: list[Held]) -> None:
        if previous is not None:
            await previous
        await self._write_now(items)

    async def _refused(self) -> None:
        """Raise the failure (a lost lease, the database) of a write that has already ended."""
        if self._writing is not None and self._writing.done():
            await self._written()
        self._refuse_after_failure()

    def _refuse_after_failure(self) -> None:
        failure = self._failure
        if failure is None:
            return
        if isinstance(failure, LeaseLostError):
            raise failure.with_traceback(None)
        raise EarlierWriteFailedError(
            f"an earlier write of this attempt failed ({type(failure).__name__}: {failure})"
        ) from failure

    async def _written(self) -> None:
        """Wait until no write-behind is under way; a failure (a lost lease) is this caller's.

        The window may end while this waits, and the write-behind it starts then (behind the
        one awaited) carries rows the caller counts on being written: it is awaited too.
        """
        while (task := self._writing) is not None:
            try:
                await task
            finally:
                if self._writing is task:
                    self._writing = None

    def _take_held(self) -> list[Held]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        self._held_keys = set()
        self._held_checkpoints = set()
        return held

    async def _write_now(self, items: list[Held]) -> None:
        batch = self._batch(items)
        await self._execute(batch_sql(batch.shape, batch.fenced), batch.params)
        batch.saved()

    @asynccontextmanager
    async def _failing_for_good(self) -> AsyncIterator[None]:
        """Around a fenced write: once one fails, every later call raises instead of writing.
        (A saver without a fence writes each call at once and holds nothing back.)"""
        if self.fence is None:
            yield
            return
        self._refuse_after_failure()
        try:
            yield
        except Exception as exc:
            self._failure = exc
            raise
        except BaseException:
            self._failure = WriteInterruptedError(
                f"run {self.fence.run_id} attempt {self.fence.attempt}: a write was cancelled"
            )
            raise

    def _batch(self, items: list[Held]) -> Batch:
        params: list[Any] = self._fence_params()
        for item in items:
            params.extend(item.params())
        shape = tuple(item.segment() for item in items)
        return Batch(shape, self.fence is not None, params, items)

    async def _load_checkpoint_tuple(self, value: DictRow) -> CheckpointTuple:
        # The stock method minus its thread hop for the pending writes.
        checkpoint = value["checkpoint"]
        thread = {"thread_id": value["thread_id"], "checkpoint_ns": value["checkpoint_ns"]}
        parent = value["parent_checkpoint_id"]
        loaded: dict[str, Any] = {
            **checkpoint,
            "channel_values": {
                **(checkpoint.get("channel_values") or {}),
                **self._load_blobs(value["channel_values"]),
            },
        }
        return CheckpointTuple(
            {"configurable": {**thread, "checkpoint_id": value["checkpoint_id"]}},
            cast(Checkpoint, loaded),
            value["metadata"],
            {"configurable": {**thread, "checkpoint_id": parent}} if parent else None,
            self._load_writes(value["pending_writes"]),
        )

    def _fence_params(self) -> list[Any]:
        return [self.fence.run_id, self.fence.attempt] if self.fence is not None else []

    def _lost(self) -> LeaseLostError:
        assert self.fence is not None
        return LeaseLostError(
            f"run {self.fence.run_id} attempt {self.fence.attempt} lost its lease"
        )

    async def _execute(self, query: bytes, params: Sequence[Any]) -> None:
        """One write statement in its own (implicit) transaction."""
        async with self._failing_for_good(), self.pool.connection() as conn:
            try:
                await AsyncRawCursor(conn).execute(query, params, binary=True)
            except FENCE_REFUSED:
                if self.fence is not None:
                    raise self._lost() from None
                raise

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        async with self.pool.connection() as conn:
            if pipeline and self.fence is not None:
                # One pipeline, no BEGIN/COMMIT: the statements between two Syncs run as one
                # implicit transaction, committed (or rolled back on any error) by the Sync the
                # pipeline sends on exit. The lease check is read first, so the run row is
                # share-locked before the caller's statements run.
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    await cur.execute(CHECK_LEASE_SQL, (self.fence.run_id, self.fence.attempt))
                    if await cur.fetchone() is None:
                        raise self._lost()
                    yield cur
            elif pipeline:
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            else:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
