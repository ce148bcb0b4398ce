"""Property: no policy the parser accepts deletes anything younger than its limits.

Whatever durations a policy carries (drawn across the whole grammar, up to nine digits of any
unit; the parser refuses those beyond 100 years and tests/reaper/test_crd_cluster.py shows the
API server refuses exactly the same ones) and whatever the clock says (from 1600, before the
earliest checkpoint id, to 150 years ahead), a run keeps every checkpoint younger than
``maxAge``, every unarchived thread active within ``maxIdle``, every archived thread archived or
spoken in within ``archivedFor``, and every orphan whose newest checkpoint is younger than
``olderThan``. The conversations are real (the agent graph); each example restores them from
copies kept in the same database and moves the threads' timestamps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.support import add_thread, chat, policy_document
from threadkeeper.reaper.durations import MAX_COUNT, UNIT_SECONDS
from threadkeeper.reaper.engine import prune
from threadkeeper.reaper.ids import id_time
from threadkeeper.reaper.policy import PolicyError, RetentionPolicy, parse_policy

TABLES = ("threads", "runs", "checkpoints", "checkpoint_blobs", "checkpoint_writes")
ORPHAN = "0b5a3c6e-1d2f-4e5a-9b8c-7d6e5f4a3b2c"
YEAR = timedelta(days=365)

SET_AGES_SQL = """
UPDATE threads SET created_at = %(created)s, updated_at = %(created)s,
    last_message_at = %(spoke)s, archived_at = %(archived)s
WHERE thread_id = %(thread_id)s
"""


@dataclass(frozen=True)
class Dataset:
    live: str  # unarchived, spoken in
    silent: str  # unarchived, nobody ever spoke
    archived: str  # archived, spoken in


@pytest.fixture
async def dataset(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
) -> AsyncIterator[Dataset]:
    data = Dataset(
        live=await add_thread(conn),
        silent=await add_thread(conn, spoke=None),
        archived=await add_thread(conn, archived=timedelta(0)),
    )
    await chat(graph, data.live, "hello", "what is 2+3", "bye")
    await chat(graph, data.archived, "hello", "bye")
    await chat(graph, ORPHAN, "hello", "bye")
    for table in TABLES:
        await conn.execute(f"CREATE TABLE kept_{table} AS SELECT * FROM {table}")
    yield data


async def _restore(conn: AsyncConnection[DictRow]) -> None:
    await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    for table in TABLES:
        await conn.execute(f"INSERT INTO {table} SELECT * FROM kept_{table}")


async def _checkpoints(conn: AsyncConnection[DictRow]) -> dict[str, set[str]]:
    cur = await conn.execute("SELECT thread_id, checkpoint_id FROM checkpoints")
    found: dict[str, set[str]] = {}
    for row in await cur.fetchall():
        found.setdefault(row["thread_id"], set()).add(row["checkpoint_id"])
    return found


async def _threads(conn: AsyncConnection[DictRow]) -> set[str]:
    cur = await conn.execute("SELECT thread_id::text AS id FROM threads")
    return {row["id"] for row in await cur.fetchall()}


def _delta(text: str | None) -> timedelta | None:
    if text is None:
        return None
    return timedelta(seconds=int(text[:-1]) * UNIT_SECONDS[text[-1]])


# Small counts, counts near each unit's 100-year limit, and anything up to nine digits.
durations = st.one_of(
    st.none(),
    st.builds(
        lambda unit, count: f"{count}{unit}",
        st.sampled_from(sorted(UNIT_SECONDS)),
        st.integers(1, 60),
    ),
    st.sampled_from(sorted(UNIT_SECONDS)).flatmap(
        lambda unit: st.integers(max(MAX_COUNT[unit] - 2, 1), MAX_COUNT[unit] + 2).map(
            lambda count: f"{count}{unit}"
        )
    ),
    st.builds(
        lambda unit, count: f"{count}{unit}",
        st.sampled_from(sorted(UNIT_SECONDS)),
        st.integers(1, 999_999_999),
    ),
)
ages = st.integers(0, 200 * 365 * 86400).map(lambda s: timedelta(seconds=s))
clocks = st.one_of(
    st.just(timedelta(0)),
    st.integers(0, 150 * 365 * 86400).map(lambda s: timedelta(seconds=s)),
    st.just(datetime(1600, 1, 1, tzinfo=UTC) - datetime.now(UTC)),
)


def _policy(
    max_idle: str | None,
    archived_for: str | None,
    max_age: str | None,
    keep_last: int,
    older_than: str | None,
) -> RetentionPolicy | None:
    spec: dict[str, Any] = {"checkpoints": {"keepLast": keep_last}}
    threads = {k: v for k, v in (("maxIdle", max_idle), ("archivedFor", archived_for)) if v}
    if threads:
        spec["threads"] = threads
    if max_age:
        spec["checkpoints"]["maxAge"] = max_age
    if older_than:
        spec["orphans"] = {"olderThan": older_than}
    try:
        return parse_policy(policy_document(**spec))
    except PolicyError:
        return None


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    max_idle=durations,
    archived_for=durations,
    max_age=durations,
    keep_last=st.integers(1, 3),
    older_than=durations,
    clock=clocks,
    live_spoke=ages,
    silent_created=ages,
    archived_spoke=ages,
    archived_at=ages,
)
async def test_no_accepted_policy_deletes_anything_younger_than_its_limits(
    conn: AsyncConnection[DictRow],
    dataset: Dataset,
    max_idle: str | None,
    archived_for: str | None,
    max_age: str | None,
    keep_last: int,
    older_than: str | None,
    clock: timedelta,
    live_spoke: timedelta,
    silent_created: timedelta,
    archived_spoke: timedelta,
    archived_at: timedelta,
) -> None:
    rules = _policy(max_idle, archived_for, max_age, keep_last, older_than)
    assume(rules is not None)
    assert rules is not None
    now = datetime.now(UTC) + clock
    await _restore(conn)
    activity = {
        dataset.live: now - live_spoke,
        dataset.silent: now - silent_created,
        dataset.archived: max(now - archived_spoke, now - archived_at),
    }
    for thread_id, created, spoke, archived in (
        (dataset.live, now - live_spoke - YEAR, now - live_spoke, None),
        (dataset.silent, now - silent_created, None, None),
        (dataset.archived, now - archived_spoke - YEAR, now - archived_spoke, now - archived_at),
    ):
        await conn.execute(
            SET_AGES_SQL,
            {"thread_id": thread_id, "created": created, "spoke": spoke, "archived": archived},
        )
    before = await _checkpoints(conn)

    await prune(conn, rules, now=now)

    threads_after = await _threads(conn)
    checkpoints_after = await _checkpoints(conn)
    limits = {
        dataset.live: _delta(max_idle),
        dataset.silent: _delta(max_idle),
        dataset.archived: _delta(archived_for),
    }
    for thread_id, limit in limits.items():
        if limit is None or activity[thread_id] > now - limit:
            assert thread_id in threads_after, (thread_id, limit, now)
    age_limit = _delta(max_age)
    orphan_limit = _delta(older_than)
    newest_orphan = max(t for c in before[ORPHAN] if (t := id_time(c)) is not None)
    if orphan_limit is None or newest_orphan > now - orphan_limit:
        assert checkpoints_after.get(ORPHAN) == before[ORPHAN]
    for thread_id, ids in before.items():
        # Without maxAge, keepLast alone decides (tests/reaper/test_property.py).
        if age_limit is None or thread_id == ORPHAN or thread_id not in threads_after:
            continue
        for checkpoint_id in ids:
            created = id_time(checkpoint_id)
            assert created is not None
            if created > now - age_limit:
                assert checkpoint_id in checkpoints_after.get(thread_id, set()), (
                    checkpoint_id,
                    created,
                    now,
                    max_age,
                )
