"""Loading a checkpoint together with the history its ``DeltaChannel`` values are rebuilt from.

Starting a run, LangGraph reads the thread's latest checkpoint (``aget_tuple``) and then, for
each ``DeltaChannel`` the checkpoint stores no value for, the writes since that channel's last
snapshot (``aget_delta_channel_history``). The stock Postgres saver answers with three
statements: the checkpoint, a page of ancestors to walk, and the writes and seed found on the
walk. Here one statement returns all three, read from one snapshot of LangGraph's own tables:
the ancestor walk is a recursive CTE that follows ``parent_checkpoint_id`` and stops at a
checkpoint holding a value for the channel (a snapshot blob or an inline primitive), as the
stock walk does, or at a version whose value the replica holds (``blob_cache``: a held
snapshot, or a run's final value kept there): the walk then starts from what is held, and a
channel held at the checkpoint's own version is not walked at all.

Every read of those tables is a lateral subquery probed by key from the row that needs it
(``OFFSET 0`` keeps the planner from flattening it into a join it could reorder), and the
writes are read in primary-key order, which only the primary key gives without a sort. The plan
is then the same with or without statistics: on a database not yet analyzed the planner would
otherwise guess its sizes and, at each step of the walk, scan all of a thread's checkpoints or
writes; and a generic plan made while the tables were tiny, which a pooled connection keeps for
its prepared statement, would read writes through LangGraph's index on ``thread_id`` alone
(on a tiny table the two indexes cost the same): a cost that grows with the conversation
(tests/service/test_load_plan.py).

The result has one row per part, told apart by ``_kind``: ``t`` the checkpoint (the stock
``SELECT_SQL`` columns), ``c`` one per channel to replay (its chain of checkpoint ids, nearest
first, and its seed), ``w`` the channel's writes on the chain and ``b`` its seed blob. The ``w``
and ``b`` rows have the columns of the stock stage-2 rows, so the stock code assembles the
history from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from psycopg.rows import DictRow

from threadkeeper.service.blob_cache import (
    BlobId,
    ChannelBlob,
    Keyed,
    Pinned,
    channel_blob,
    keyed,
    task_write,
)

# The value a channel has at checkpoint ``c``: a snapshot blob, else an inline primitive (JSON
# null counts as none, as in the stock walk), or one the replica holds at that version.
_SEED_COLUMNS = """
    SELECT v.version,
           EXISTS (
               SELECT 1 FROM checkpoint_blobs b
               WHERE b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns
                 AND b.channel = w.channel AND b.version = v.version AND b.type <> 'empty'
           ) AS has_blob,
           nullif(c.checkpoint -> 'channel_values' -> w.channel, 'null'::jsonb) AS inline,
           w.channel || '/' || v.version = ANY(%(held)s::text[]) AS held
    FROM (SELECT c.checkpoint -> 'channel_versions' ->> w.channel AS version) v
"""

# A channel value's bytes, or NULL for one the replica holds decoded (``%(held)s``, named as
# ``blob_cache.held_key`` names them): Postgres then neither detoasts nor sends it.
_UNLESS_HELD = (
    "CASE WHEN {t}.channel || '/' || {t}.version = ANY(%(held)s::text[]) THEN NULL "
    "ELSE {t}.blob END"
)

# Placeholders for the columns a row kind does not use.
_NULLS_T = (
    "NULL::text AS channel, NULL::text[] AS chain, NULL::text AS version, NULL::jsonb AS inline"
)
_NULLS_W = (
    "NULL::text AS type, NULL::bytea AS blob, NULL::text AS task_id, NULL::text AS task_path, "
    "NULL::int AS idx"
)
_NULLS_CP = "NULL::text, NULL::text, NULL::jsonb, NULL::jsonb, NULL::bytea[], NULL::bytea[]"
# Past the first part of a UNION, a column's name is the first part's: these need no names.
_NULLS_W_UNNAMED = "NULL::text, NULL::bytea, NULL::text, NULL::text, NULL::int"

LOAD_TEMPLATE = f"""
WITH RECURSIVE target AS (
    SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata
    FROM checkpoints
    WHERE thread_id = %(thread_id)s AND checkpoint_ns = %(checkpoint_ns)s {{by_id}}
    ORDER BY checkpoint_id DESC
    LIMIT 1
),
-- The delta channels the target has a version of but stores no value for.
replay AS (
    SELECT ch.channel
    FROM target t, unnest(%(channels)s::text[]) AS ch(channel)
    WHERE (t.checkpoint -> 'channel_versions') ? ch.channel
      AND NOT ((t.checkpoint -> 'channel_values') ? ch.channel)
      AND NOT EXISTS (
          SELECT 1 FROM checkpoint_blobs b
          WHERE b.thread_id = t.thread_id AND b.checkpoint_ns = t.checkpoint_ns
            AND b.channel = ch.channel
            AND b.version = t.checkpoint -> 'channel_versions' ->> ch.channel
            AND b.type <> 'empty'
      )
      AND NOT ch.channel || '/' || (t.checkpoint -> 'channel_versions' ->> ch.channel)
          = ANY(%(held)s::text[])
),
-- Depth 0 is the target itself; the walk goes up while no value is found: stored, or held
-- by the replica at that version (``held``). Ancestors have smaller ids (uuid6), which the
-- stock walk relies on too and which bounds this one.
walk AS (
    SELECT r.channel, t.checkpoint_id, t.parent_checkpoint_id, 0 AS depth,
           NULL::text AS version, false AS has_blob, NULL::jsonb AS inline, false AS held
    FROM replay r, target t
  UNION ALL
    SELECT w.channel, c.checkpoint_id, c.parent_checkpoint_id, w.depth + 1,
           s.version, s.has_blob, s.inline, s.held
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT * FROM checkpoints c
        WHERE c.thread_id = %(thread_id)s AND c.checkpoint_ns = %(checkpoint_ns)s
          AND c.checkpoint_id = w.parent_checkpoint_id AND c.checkpoint_id < w.checkpoint_id
        OFFSET 0
    ) c
    CROSS JOIN LATERAL ({_SEED_COLUMNS}) s
    WHERE NOT w.has_blob AND w.inline IS NULL AND NOT w.held
)
SELECT 't'::text AS _kind, t.checkpoint_id, t.parent_checkpoint_id, t.checkpoint, t.metadata,
    (
        SELECT array_agg(array[bl.channel::bytea, bl.type::bytea, {_UNLESS_HELD.format(t="bl")}])
        FROM jsonb_each_text(t.checkpoint -> 'channel_versions') AS v
        CROSS JOIN LATERAL (
            SELECT * FROM checkpoint_blobs bl
            WHERE bl.thread_id = t.thread_id AND bl.checkpoint_ns = t.checkpoint_ns
              AND bl.channel = v.key AND bl.version = v.value
            OFFSET 0
        ) bl
    ) AS channel_values,
    (
        SELECT array_agg(array[cw.task_id::text::bytea, cw.channel::bytea, cw.type::bytea,
                               cw.blob, convert_to(cw.task_path, 'UTF8'), cw.idx::text::bytea]
                         ORDER BY cw.task_id, cw.idx)
        FROM checkpoint_writes cw
        WHERE cw.thread_id = t.thread_id AND cw.checkpoint_ns = t.checkpoint_ns
          AND cw.checkpoint_id = t.checkpoint_id
    ) AS pending_writes,
    {_NULLS_T}, {_NULLS_W}
FROM target t
UNION ALL
SELECT 'c', {_NULLS_CP}, w.channel,
    array_agg(w.checkpoint_id ORDER BY w.depth) FILTER (WHERE w.depth > 0),
    max(w.version) FILTER (WHERE w.has_blob OR w.inline IS NOT NULL OR w.held),
    (array_agg(w.inline) FILTER (WHERE NOT w.has_blob AND w.inline IS NOT NULL))[1],
    {_NULLS_W_UNNAMED}
FROM walk w
GROUP BY w.channel
UNION ALL
SELECT 'w', cw.checkpoint_id, NULL, NULL, NULL, NULL, NULL, cw.channel, NULL, NULL, NULL,
    cw.type, cw.blob, cw.task_id, cw.task_path, cw.idx
FROM walk w
CROSS JOIN LATERAL (
    SELECT * FROM checkpoint_writes cw
    WHERE cw.thread_id = %(thread_id)s AND cw.checkpoint_ns = %(checkpoint_ns)s
      AND cw.checkpoint_id = w.checkpoint_id AND cw.channel = w.channel
    ORDER BY cw.task_id, cw.idx OFFSET 0
) cw
WHERE w.depth > 0
UNION ALL
SELECT 'b', NULL, NULL, NULL, NULL, NULL, NULL, b.channel, NULL, b.version, NULL,
    b.type, {_UNLESS_HELD.format(t="b")}, NULL, NULL, NULL
FROM walk w
CROSS JOIN LATERAL (
    SELECT * FROM checkpoint_blobs b
    WHERE b.thread_id = %(thread_id)s AND b.checkpoint_ns = %(checkpoint_ns)s
      AND b.channel = w.channel AND b.version = w.version
    OFFSET 0
) b
WHERE w.has_blob
"""


# The type of a value that no row stores, held by the replica (``blob_cache.Pinned``): only
# the cache's serializer decodes it.
HELD_TYPE = "held"


@lru_cache(maxsize=2)
def load_sql(by_id: bool) -> bytes:
    """The statement for a given checkpoint id, or for the thread's latest checkpoint."""
    by_id_clause = "AND checkpoint_id = %(checkpoint_id)s" if by_id else ""
    # Sent without comments, indentation and the spaces after commas and around `=`, `->`,
    # `->>` and `||` (no literal in it holds any): psycopg caches how it parsed a query only
    # for queries of up to 4096 bytes; a longer one is parsed again on every load.
    lines = (line.strip() for line in LOAD_TEMPLATE.format(by_id=by_id_clause).splitlines())
    kept = "\n".join(line for line in lines if line and not line.startswith("--"))
    for spaced in (", ", " = ", " -> ", " ->> ", " || "):
        kept = kept.replace(spaced, spaced.strip())
    return kept.encode()


@dataclass(frozen=True)
class Walks:
    """What the ancestor walks found, in the shapes the stock history assembly takes."""

    channels: list[str]
    chain_by_ch: dict[str, list[str]]
    seed_ver_by_ch: dict[str, str | None]
    seed_inline_by_ch: dict[str, Any]
    stage2_rows: list[Mapping[str, Any]]


def split(rows: Sequence[DictRow]) -> tuple[DictRow | None, Walks]:
    """The checkpoint row (None if there is none) and the walks, from one result."""
    target: DictRow | None = None
    walks = Walks([], {}, {}, {}, [])
    for row in rows:
        kind = row["_kind"]
        if kind == "t":
            target = row
        elif kind == "c":
            channel = row["channel"]
            walks.channels.append(channel)
            walks.chain_by_ch[channel] = row["chain"] or []
            walks.seed_ver_by_ch[channel] = row["version"]
            if row["inline"] is not None:
                walks.seed_inline_by_ch[channel] = row["inline"]
        else:
            walks.stage2_rows.append(row)
    return target, walks


def keyed_target(
    target: DictRow, thread_id: str, checkpoint_ns: str, pinned: Mapping[BlobId, Pinned]
) -> DictRow:
    """The checkpoint row with each stored value's bytes wrapped with its row's id
    (``blob_cache.Keyed``), for the decoding that follows to go through the cache; a value the
    statement left out as held is its ``pinned`` one. A value held at one of the checkpoint's
    own versions that no row stores (a run's final value, ``BlobCache.keep``) is added: the
    statement replays no history for it."""
    versions = target["checkpoint"].get("channel_versions") or {}
    blobs = []
    for channel, type_, blob in target["channel_values"] or ():
        blob_id = _blob_id(thread_id, checkpoint_ns, channel, versions)
        blobs.append([channel, type_, _stand_in(blob_id, blob, pinned)])
    stored = {channel.decode() for channel, _, _ in blobs}
    stored.update(target["checkpoint"].get("channel_values") or ())
    blobs.extend(
        [held.id.channel.encode(), HELD_TYPE.encode(), held]
        for held in pinned.values()
        if held.id.channel not in stored and str(versions.get(held.id.channel)) == held.id.version
    )
    writes = [
        [
            task_id, channel, type_,
            keyed(
                task_write(
                    thread_id, checkpoint_ns, target["checkpoint_id"], task_id.decode(), int(idx)
                ),
                blob,
            ),
            task_path, idx,
        ]
        for task_id, channel, type_, blob, task_path, idx in target["pending_writes"] or ()
    ]  # fmt: skip
    return {**target, "channel_values": blobs, "pending_writes": writes}


def keyed_walks(
    walks: Walks, thread_id: str, checkpoint_ns: str, pinned: Mapping[BlobId, Pinned]
) -> Walks:
    """The walks with each write's and seed's bytes wrapped with its row's id, as
    ``keyed_target``; a seed no row stores, where a walk stopped because the replica holds its
    version, is added as its pinned value."""
    rows: list[Mapping[str, Any]] = [
        {**row, "blob": _stand_in(_row_id(row, thread_id, checkpoint_ns), row["blob"], pinned)}
        for row in walks.stage2_rows
    ]
    stored = {(row["channel"], row["version"]) for row in rows if row["_kind"] == "b"}
    for channel in walks.channels:
        version = walks.seed_ver_by_ch.get(channel)
        if version is None or (channel, version) in stored:
            continue
        held = pinned.get(ChannelBlob(thread_id, checkpoint_ns, channel, version))
        if held is not None:  # the walk stopped at a value held here, which no row stores
            rows.append(
                {
                    "_kind": "b",
                    "channel": channel,
                    "version": version,
                    "type": HELD_TYPE,
                    "blob": held,
                }
            )
    return Walks(
        walks.channels, walks.chain_by_ch, walks.seed_ver_by_ch, walks.seed_inline_by_ch, rows
    )


def stored_sizes(target: DictRow, walks: Walks, channels: Sequence[str]) -> dict[str, int]:
    """The stored bytes each of ``channels``' values was loaded from: its value at the
    checkpoint, or its seed and the writes replayed on it."""
    sizes = dict.fromkeys(channels, 0)
    for channel, _, blob in target["channel_values"] or ():
        name = channel.decode()
        if name in sizes:
            sizes[name] = _size(blob)
    for row in walks.stage2_rows:
        if row["channel"] in sizes:
            sizes[row["channel"]] += _size(row["blob"])
    return sizes


def _size(blob: bytes | Keyed | Pinned | None) -> int:
    if isinstance(blob, Pinned):
        return blob.size
    if isinstance(blob, Keyed):
        return len(blob.data)
    return len(blob or b"")


def _stand_in(
    blob_id: BlobId | None, blob: bytes, pinned: Mapping[BlobId, Pinned]
) -> bytes | Keyed | Pinned:
    if blob_id is None:
        return blob
    held = pinned.get(blob_id)
    return keyed(blob_id, blob) if held is None else held


def _blob_id(
    thread_id: str, checkpoint_ns: str, channel: bytes, versions: Mapping[str, Any]
) -> BlobId | None:
    name = channel.decode()
    version = versions.get(name)
    return None if version is None else channel_blob(thread_id, checkpoint_ns, name, str(version))


def _row_id(row: Mapping[str, Any], thread_id: str, checkpoint_ns: str) -> BlobId | None:
    if row["_kind"] == "b":
        return channel_blob(thread_id, checkpoint_ns, row["channel"], row["version"])
    return task_write(thread_id, checkpoint_ns, row["checkpoint_id"], row["task_id"], row["idx"])
