"""Re-snapshotting ``DeltaChannel`` values so a thread's older history can be cut.

A ``DeltaChannel`` stores no value at most checkpoints: a reader rebuilds it by walking the
parent chain, collecting the channel's ``checkpoint_writes`` of every ancestor, until it reaches
one where a value is stored (a ``_DeltaSnapshot`` blob, written every ``snapshot_frequency``
updates). Deleting ancestors would silently empty the channel, which is why LangGraph's own
``aprune`` refuses such threads.

Before the prune deletes the ancestors of a kept checkpoint, this module reads the channel's
value at that checkpoint the way LangGraph does (``aget_delta_channel_history`` + the channel's
reducer, before anything is deleted) and stores it exactly as ``AsyncPostgresSaver.aput`` stores a
snapshot: a ``checkpoint_blobs`` row at the checkpoint's channel version holding
``_DeltaSnapshot(value)``, and ``true`` inline in ``channel_values``. Readers stop their walk at
that checkpoint from then on. Blobs are keyed by (channel, version), and a version names one
value, so every other checkpoint at that version reads the same, correct, value.

The stored rows do not name the reducer, so the reducers are configured per channel name.
A channel without a configured reducer is not rebuilt: the prune keeps its ancestors instead,
back to the nearest stored value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.graph.message import _messages_delta_reducer
from psycopg import AsyncConnection
from psycopg.rows import DictRow

Reducer = Callable[[Any, Sequence[Any]], Any]

# The batched messages reducer LangGraph ships for DeltaChannel message lists; it is what the
# threadkeeper agent graph (and any ``Annotated[list, DeltaChannel(_messages_delta_reducer)]``
# state) uses for its "messages" channel.
DEFAULT_REDUCERS: Mapping[str, Reducer] = {"messages": cast(Reducer, _messages_delta_reducer)}

# What each checkpoint stores for its channels. A channel's value is "stored" when a non-empty
# blob exists at its version or a non-null value is inline: the same test the reader's ancestor
# walk uses to stop. Delta channels are the ones named in the update counters LangGraph keeps
# in the metadata of every checkpoint that is not itself a snapshot of them.
DETAILS_SQL = """
SELECT
    c.checkpoint_id,
    c.checkpoint -> 'channel_versions' AS versions,
    coalesce(c.metadata -> 'counters_since_delta_snapshot', '{}'::jsonb) AS counters,
    ARRAY(
        SELECT v.key FROM jsonb_each(c.checkpoint -> 'channel_values') AS v
        WHERE v.value <> 'null'::jsonb
    ) AS inline_channels,
    ARRAY(
        SELECT b.channel
        FROM jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
        JOIN checkpoint_blobs b
          ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
         AND b.channel = v.key AND b.version = v.value AND b.type <> 'empty'
    ) AS blob_channels
FROM checkpoints c
WHERE c.thread_id = %s AND c.checkpoint_ns = %s AND c.checkpoint_id = ANY(%s)
"""

# As AsyncPostgresSaver.aput stores a snapshot. An existing row can only be an 'empty'
# placeholder (a stored value would have made the snapshot unnecessary).
UPSERT_SNAPSHOT_BLOB_SQL = """
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (thread_id, checkpoint_ns, channel, version)
DO UPDATE SET type = EXCLUDED.type, blob = EXCLUDED.blob
"""

MARK_SNAPSHOT_SQL = """
UPDATE checkpoints
SET checkpoint = jsonb_set(checkpoint, ARRAY['channel_values', %s], 'true'::jsonb, true)
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s
"""


@dataclass(frozen=True)
class Stored:
    """Which delta channels of one checkpoint a reader would have to rebuild from ancestors."""

    checkpoint_id: str
    versions: Mapping[str, str]
    needs_replay: frozenset[str]


async def describe(
    conn: AsyncConnection[DictRow], thread_id: str, ns: str, checkpoint_ids: Sequence[str]
) -> dict[str, Stored]:
    cur = await conn.execute(DETAILS_SQL, (thread_id, ns, list(checkpoint_ids)))
    result: dict[str, Stored] = {}
    for row in await cur.fetchall():
        versions = {k: str(v) for k, v in (row["versions"] or {}).items()}
        stored = set(row["inline_channels"]) | set(row["blob_channels"])
        needs = frozenset(ch for ch in row["counters"] if ch in versions and ch not in stored)
        result[row["checkpoint_id"]] = Stored(row["checkpoint_id"], versions, needs)
    return result


class Snapshotter:
    """Reads delta channel values with LangGraph's own reader and stores them as snapshots."""

    def __init__(
        self,
        conn: AsyncConnection[DictRow],
        reducers: Mapping[str, Reducer],
        serde: SerializerProtocol | None,
    ) -> None:
        self.conn = conn
        self.reducers = reducers
        # The saver is only used to read, on the caller's connection and so in its transaction.
        self.saver = AsyncPostgresSaver(conn, serde=serde)

    def can_rebuild(self, channel: str) -> bool:
        return channel in self.reducers

    async def value_at(self, thread_id: str, ns: str, checkpoint_id: str, channel: str) -> Any:
        """The channel's value at the checkpoint, exactly as ``graph.aget_state`` rebuilds it."""
        config = {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint_id,
            }
        }
        histories = await self.saver.aget_delta_channel_history(
            config=config,  # type: ignore[arg-type]
            channels=[channel],
        )
        history = histories[channel]
        replay: DeltaChannel[Any] = DeltaChannel(self.reducers[channel])
        replay = replay.from_checkpoint(history.get("seed"))
        replay.replay_writes(history["writes"])
        return replay.value

    async def snapshot(self, thread_id: str, ns: str, targets: Sequence[Stored]) -> int:
        """Store every rebuildable channel the targets need; returns the blobs written.

        All values are read before any is written, while every ancestor is still in place.
        """
        values: dict[tuple[str, str], Any] = {}
        markers: list[tuple[str, str]] = []
        for target in targets:
            for channel in sorted(target.needs_replay):
                if not self.can_rebuild(channel):
                    continue
                key = (channel, target.versions[channel])
                if key not in values:
                    # Same version, same value: two kept checkpoints at one version share a blob.
                    values[key] = await self.value_at(thread_id, ns, target.checkpoint_id, channel)
                markers.append((channel, target.checkpoint_id))
        for (channel, version), value in values.items():
            type_, blob = self.saver.serde.dumps_typed(_DeltaSnapshot(value))
            await self.conn.execute(
                UPSERT_SNAPSHOT_BLOB_SQL, (thread_id, ns, channel, version, type_, blob)
            )
        for channel, checkpoint_id in markers:
            await self.conn.execute(MARK_SNAPSHOT_SQL, (channel, thread_id, ns, checkpoint_id))
        return len(values)
