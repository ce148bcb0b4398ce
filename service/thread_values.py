"""What ``threads.search`` reads of a thread's state: the ``values`` filter and ``extract``.

A thread's values live in its checkpoints (blobs, for all but plain values), not in a row
Postgres could index, so both read the latest state of each thread concerned, through the
thread's graph as ``GET /threads/{id}`` does. The filter is Postgres's own JSON containment
(``@>``, as the Agent Server filters its ``values`` column), applied to a batch of threads'
values at once; ``extract`` follows the Agent Server's paths (``values.messages[-1].content``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from threadkeeper.service import state, threads
from threadkeeper.service.domain import SortOrder
from threadkeeper.service.registry import GraphNotServed
from threadkeeper.service.serialize import jsonable
from threadkeeper.service.threads import SortBy, Thread, ThreadFilter

if TYPE_CHECKING:
    from threadkeeper.service.services import Services

# The parts of a thread an extract path may start with (as the Agent Server allows).
EXTRACTABLE = ("config", "interrupts", "metadata", "values")
# What a path reads only with the thread's state loaded.
STATE_ROOTS = frozenset({"values", "interrupts"})
MAX_EXTRACT_PATHS = 10
# Thread fields, which an extract alias may not shadow.
THREAD_FIELDS = frozenset(
    {
        "thread_id",
        "created_at",
        "updated_at",
        "state_updated_at",
        "metadata",
        "config",
        "status",
        "values",
        "interrupts",
    }
)
ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PATH_PART = re.compile(r"\.|\[")
# Threads whose state is read at once (each read takes a pool connection).
READ_CONCURRENCY = 8
# Candidates of a values filter read per round.
SCAN_BATCH = 200

# The positions (1-based) of the values, of those given, that contain ``wanted``.
CONTAINING_SQL = """
SELECT ord FROM jsonb_array_elements(%(values)s::jsonb) WITH ORDINALITY AS v(doc, ord)
WHERE v.doc @> %(wanted)s::jsonb
ORDER BY ord
"""


@dataclass(frozen=True)
class ThreadState:
    """A thread's latest values and pending interrupts, as JSON."""

    values: Any
    interrupts: dict[str, Any]


def check_extract(extract: Mapping[str, str]) -> dict[str, str]:
    """``extract`` as the Agent Server accepts it; ValueError naming what is wrong."""
    if len(extract) > MAX_EXTRACT_PATHS:
        raise ValueError(f"at most {MAX_EXTRACT_PATHS} extract paths, got {len(extract)}")
    shadowing = sorted(extract.keys() & THREAD_FIELDS)
    if shadowing:
        raise ValueError(f"extract aliases cannot be thread fields: {', '.join(shadowing)}")
    for alias, path in extract.items():
        if not ALIAS.fullmatch(alias):
            raise ValueError(f"extract alias {alias!r} must be letters, digits and underscores")
        if _root(path) not in EXTRACTABLE:
            raise ValueError(
                f"extract path {path!r} must start with one of: {', '.join(EXTRACTABLE)}"
            )
    return dict(extract)


def needs_state(extract: Mapping[str, str] | None) -> bool:
    return bool(extract) and any(_root(p) in STATE_ROOTS for p in (extract or {}).values())


def _root(path: str) -> str:
    return PATH_PART.split(path, maxsplit=1)[0]


def extract_path(thread: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` (``root.key[index].key``) of a thread's JSON; None where the path
    leads nowhere (a missing key, an index out of range, a key of a list)."""
    root, *parts = PATH_PART.split(path)
    current = thread.get(root)
    for part in parts:
        if current is None:
            return None
        if part.endswith("]"):
            current = _at_index(current, part[:-1])
        elif isinstance(current, Mapping):
            current = current.get(part)
        else:
            return None
    return current


def _at_index(current: Any, index: str) -> Any:
    if not isinstance(current, list):
        return None
    try:
        return current[int(index)]
    except (ValueError, IndexError):
        return None


def extracted(thread: Mapping[str, Any], extract: Mapping[str, str]) -> dict[str, Any]:
    return {alias: extract_path(thread, path) for alias, path in extract.items()}


async def read(svc: Services, rows: Sequence[Thread]) -> list[ThreadState]:
    """The latest state of each thread, in order, a few threads at a time."""
    limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(row: Thread) -> ThreadState:
        async with limit:
            try:
                graph = await state.of_thread(svc, row)
            except GraphNotServed:
                # Its graph left the deployment: its state cannot be read, so it holds nothing
                # a search could find (rather than failing the caller's whole search).
                return ThreadState(None, {})
            snapshot = await state.latest(graph, row.thread_id)
        interrupts = {t.id: list(t.interrupts) for t in snapshot.tasks if t.interrupts}
        return ThreadState(jsonable(snapshot.values), jsonable(interrupts))

    return list(await asyncio.gather(*(one(row) for row in rows)))


async def containing(
    conn: AsyncConnection[DictRow], states: Sequence[ThreadState], wanted: dict[str, Any]
) -> list[int]:
    """The indexes of the states whose values contain ``wanted`` (Postgres's ``@>``)."""
    if not states:
        return []
    cur = await conn.execute(
        CONTAINING_SQL, {"values": Jsonb([s.values for s in states]), "wanted": Jsonb(wanted)}
    )
    return [int(row["ord"]) - 1 for row in await cur.fetchall()]


@dataclass(frozen=True)
class Order:
    by: SortBy
    direction: SortOrder


def with_state(thread: dict[str, Any], found: ThreadState) -> dict[str, Any]:
    """A thread's JSON with its latest values and interrupts."""
    return {**thread, "values": found.values, "interrupts": found.interrupts}


async def search(
    svc: Services,
    flt: ThreadFilter,
    wanted: dict[str, Any],
    order: Order,
    *,
    limit: int,
    offset: int,
) -> tuple[list[Thread], list[ThreadState], int]:
    """One page of the threads passing ``flt`` whose values contain ``wanted``, their states,
    and how many match in all: every candidate's state is read, in the search's order."""
    page: list[Thread] = []
    states: list[ThreadState] = []
    total = 0
    async for batch, found, hits in _matches(svc, flt, wanted, order):
        for i in hits:
            if offset <= total < offset + limit:
                page.append(batch[i])
                states.append(found[i])
            total += 1
    return page, states, total


async def count(svc: Services, flt: ThreadFilter, wanted: dict[str, Any]) -> int:
    """How many threads passing ``flt`` have values containing ``wanted``."""
    n = 0
    async for _, _, hits in _matches(svc, flt, wanted, Order("created_at", SortOrder.DESC)):
        n += len(hits)
    return n


async def _matches(
    svc: Services, flt: ThreadFilter, wanted: dict[str, Any], order: Order
) -> AsyncIterator[tuple[list[Thread], list[ThreadState], list[int]]]:
    """Batches of candidates in the search's order, their states, and which of them match."""
    seen = 0
    while True:
        async with svc.pool.connection() as conn:
            batch, _ = await threads.search(
                conn,
                flt,
                limit=SCAN_BATCH,
                offset=seen,
                sort_by=order.by,
                sort_order=order.direction,
            )
        if not batch:
            return
        found = await read(svc, batch)
        async with svc.pool.connection() as conn:
            hits = await containing(conn, found, wanted)
        yield batch, found, hits
        seen += len(batch)
        if len(batch) < SCAN_BATCH:
            return
