"""History depth of a live thread: which checkpoints to keep, and deleting the rest.

Per checkpoint namespace, a checkpoint is kept when it is among the newest ``keepLast`` or (with
``maxAge``) younger than the cutoff. Deleted checkpoints take their pending writes with them;
blobs that no remaining checkpoint references go too; a kept checkpoint whose parent is gone
gets its ``parent_checkpoint_id`` cleared. A subgraph call's namespace (``node:task``) belongs to
the root checkpoint its call started from and is removed whole once that one is not kept.

Kept checkpoints must load as before, so ``DeltaChannel`` values that a kept checkpoint rebuilds
from deleted ancestors are first stored as snapshots on it (see ``reaper.delta``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Self

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from threadkeeper.reaper.delta import Snapshotter, Stored, describe
from threadkeeper.reaper.summary import RowCounts

# The shape of the thread's history: small columns only, read through the primary key.
# Checkpoints older than format v4 read their pending sends from their parent's writes.
INDEX_SQL = """
SELECT checkpoint_ns, checkpoint_id, parent_checkpoint_id,
       metadata -> 'parents' ->> '' AS root,
       coalesce((checkpoint ->> 'v')::int, 0) < 4 AS legacy
FROM checkpoints
WHERE thread_id = %s
"""

DELETE_WRITES_SQL = """
DELETE FROM checkpoint_writes
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""

DELETE_CHECKPOINTS_SQL = """
DELETE FROM checkpoints
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""

CLEAR_PARENTS_SQL = """
UPDATE checkpoints SET parent_checkpoint_id = NULL
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""

# Blobs are garbage once no checkpoint of their namespace names their (channel, version): the
# ones of deleted checkpoints, old snapshots, and what a rolled-back run left behind. With the
# thread locked and no run alive, nothing can be writing a blob for a checkpoint to come.


@dataclass(frozen=True)
class Indexed:
    """One checkpoint of the thread, as ``INDEX_SQL`` lists it."""

    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    root: str | None  # the root-namespace checkpoint a subgraph call started from
    legacy: bool  # older than format v4

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Self:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


class BlobKey(NamedTuple):
    channel: str
    version: str


BLOB_KEYS_SQL = """
SELECT channel, version FROM checkpoint_blobs WHERE thread_id = %s AND checkpoint_ns = %s
"""

REFERENCED_BLOBS_SQL = """
SELECT DISTINCT v.key AS channel, v.value AS version
FROM checkpoints c
CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
WHERE c.thread_id = %s AND c.checkpoint_ns = %s
"""

DELETE_BLOBS_SQL = """
DELETE FROM checkpoint_blobs b
USING unnest(%s::text[], %s::text[]) AS g(channel, version)
WHERE b.thread_id = %s AND b.checkpoint_ns = %s
  AND b.channel = g.channel AND b.version = g.version
"""

DELETE_NAMESPACE_WRITES_SQL = (
    "DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_ns = ANY(%s)"
)
DELETE_NAMESPACE_BLOBS_SQL = (
    "DELETE FROM checkpoint_blobs WHERE thread_id = %s AND checkpoint_ns = ANY(%s)"
)
DELETE_NAMESPACE_CHECKPOINTS_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ANY(%s)"
)


@dataclass
class Namespace:
    """One namespace's checkpoints and the choice made about them."""

    name: str
    parent: dict[str, str | None] = field(default_factory=dict)
    root: dict[str, str | None] = field(default_factory=dict)
    legacy: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)

    @property
    def newest_first(self) -> list[str]:
        return sorted(self.parent, reverse=True)

    @property
    def deleted(self) -> list[str]:
        return sorted(set(self.parent) - self.kept)

    @property
    def is_call(self) -> bool:
        # A subgraph call's namespace carries its task id after ":"; a `checkpointer=True`
        # subgraph's namespace does not, and its state outlives every call.
        return ":" in self.name

    def cut_points(self) -> list[str]:
        """Kept checkpoints whose parent is about to be deleted (so their chain ends here)."""
        return sorted(
            k
            for k in self.kept
            if (p := self.parent[k]) is not None and p in self.parent and p not in self.kept
        )

    def dangling(self) -> list[str]:
        """Kept checkpoints whose parent will not exist after the prune."""
        return sorted(
            k for k in self.kept if (p := self.parent[k]) is not None and p not in self.kept
        )


def choose(
    checkpoints: Iterable[Indexed], keep_last: int, cutoff_id: str | None
) -> tuple[dict[str, Namespace], list[str]]:
    """Kept checkpoints per namespace, and the call namespaces to drop whole."""
    spaces: dict[str, Namespace] = {}
    for c in checkpoints:
        ns = spaces.setdefault(c.checkpoint_ns, Namespace(c.checkpoint_ns))
        ns.parent[c.checkpoint_id] = c.parent_checkpoint_id
        ns.root[c.checkpoint_id] = c.root
        if c.legacy:
            ns.legacy.add(c.checkpoint_id)
    for ns in spaces.values():
        ordered = ns.newest_first
        ns.kept = set(ordered[:keep_last])
        if cutoff_id is not None:
            ns.kept |= {i for i in ordered if i >= cutoff_id}
        # A pre-v4 checkpoint loads its pending sends from its parent: keep that too.
        while extra := {
            p
            for k in ns.kept & ns.legacy
            if (p := ns.parent[k]) is not None and p in ns.parent and p not in ns.kept
        }:
            ns.kept |= extra
    root_kept = spaces[""].kept if "" in spaces else set()
    dropped = []
    for ns in spaces.values():
        if not ns.is_call:
            continue
        head = ns.newest_first[0]
        root = ns.root[head]
        if root is not None and root not in root_kept:
            dropped.append(ns.name)
    return spaces, sorted(dropped)


async def _keep_chains_of_unknown_channels(
    conn: AsyncConnection[DictRow], thread_id: str, ns: Namespace, snapshotter: Snapshotter
) -> dict[str, Stored]:
    """Extend the kept set upwards while a cut point needs a channel nobody can rebuild.

    Returns the details of the final cut points.
    """
    known: dict[str, Stored] = {}
    while True:
        cuts = ns.cut_points()
        missing = [c for c in cuts if c not in known]
        if missing:
            known.update(await describe(conn, thread_id, ns.name, missing))
        extend = {
            parent
            for c in cuts
            if c in known
            and any(not snapshotter.can_rebuild(ch) for ch in known[c].needs_replay)
            and (parent := ns.parent[c]) is not None
        }
        if not extend:
            return {c: known[c] for c in cuts if c in known}
        ns.kept |= extend


async def _index(conn: AsyncConnection[DictRow], thread_id: str) -> list[Indexed]:
    cur = await conn.execute(INDEX_SQL, (thread_id,))
    return [Indexed.of(row) for row in await cur.fetchall()]


async def _blob_keys(
    conn: AsyncConnection[DictRow], query: str, thread_id: str, ns: str
) -> set[BlobKey]:
    cur = await conn.execute(query, (thread_id, ns))
    return {BlobKey(row["channel"], row["version"]) for row in await cur.fetchall()}


def _garbage(stored: set[BlobKey], referenced: set[BlobKey]) -> tuple[list[str], list[str]]:
    """(channels, versions) of the stored blobs no checkpoint references, for DELETE_BLOBS_SQL."""
    pairs = sorted(stored - referenced)
    return [key.channel for key in pairs], [key.version for key in pairs]


async def _prune_namespace(
    conn: AsyncConnection[DictRow], thread_id: str, ns: Namespace, snapshotter: Snapshotter
) -> RowCounts:
    counts = RowCounts()
    if not ns.deleted:
        return counts
    cuts = await _keep_chains_of_unknown_channels(conn, thread_id, ns, snapshotter)
    deleted = ns.deleted
    if not deleted:
        return counts
    counts.snapshots = await snapshotter.snapshot(thread_id, ns.name, list(cuts.values()))
    cur = await conn.execute(DELETE_WRITES_SQL, (thread_id, ns.name, deleted))
    counts.writes = max(cur.rowcount, 0)
    cur = await conn.execute(DELETE_CHECKPOINTS_SQL, (thread_id, ns.name, deleted))
    counts.checkpoints = max(cur.rowcount, 0)
    if dangling := ns.dangling():
        await conn.execute(CLEAR_PARENTS_SQL, (thread_id, ns.name, dangling))
    stored = await _blob_keys(conn, BLOB_KEYS_SQL, thread_id, ns.name)
    referenced = await _blob_keys(conn, REFERENCED_BLOBS_SQL, thread_id, ns.name)
    channels, versions = _garbage(stored, referenced)
    if channels:
        cur = await conn.execute(DELETE_BLOBS_SQL, (channels, versions, thread_id, ns.name))
        counts.blobs = max(cur.rowcount, 0)
    return counts


async def prune_history(
    conn: AsyncConnection[DictRow],
    thread_id: str,
    *,
    keep_last: int,
    cutoff_id: str | None,
    snapshotter: Snapshotter,
) -> RowCounts:
    """Prune one locked thread's history; the counts are zero when nothing was due."""
    spaces, dropped = choose(await _index(conn, thread_id), keep_last, cutoff_id)
    counts = RowCounts()
    if dropped:
        params = (thread_id, dropped)
        cur = await conn.execute(DELETE_NAMESPACE_WRITES_SQL, params)
        counts.writes += max(cur.rowcount, 0)
        cur = await conn.execute(DELETE_NAMESPACE_BLOBS_SQL, params)
        counts.blobs += max(cur.rowcount, 0)
        cur = await conn.execute(DELETE_NAMESPACE_CHECKPOINTS_SQL, params)
        counts.checkpoints += max(cur.rowcount, 0)
    for name in sorted(spaces):
        if name in dropped:
            continue
        counts.add(await _prune_namespace(conn, thread_id, spaces[name], snapshotter))
    return counts
