"""How the executing replica writes a run's events: their numbers across attempts, and how
their batches commit."""

from __future__ import annotations

from uuid import UUID

import pytest
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.support.runs import running_run
from threadkeeper.service import events
from threadkeeper.service.db import Pool, connect
from threadkeeper.service.notify import EVENTS_CHANNEL

# The backend's own WAL fsyncs (Postgres 18+). The forced flush publishes its pending
# statistics when the statement ends, so the next read sees them.
FORCE_STATS_FLUSH_SQL = "SELECT pg_stat_force_next_flush()"
WAL_FSYNCS_SQL = """
SELECT coalesce(sum(fsyncs), 0)::bigint AS n
FROM pg_stat_get_backend_io(pg_backend_pid()) WHERE object = 'wal'
"""


async def _write(pool: Pool, run_id: UUID, attempt: int, names: list[str]) -> None:
    writer = await events.EventWriter.open(pool, run_id, attempt)
    for name in names:
        writer.emit(name, None)
    await writer.close()


async def _take_over(conn: AsyncConnection[DictRow], run_id: UUID) -> None:
    """What another replica's claim of an expired lease leaves: attempt 2, its own lease."""
    await conn.execute(
        """UPDATE runs SET attempt = 2, lease_holder = 'other-replica',
                          lease_expires_at = now() + interval '30 seconds'
           WHERE run_id = %s""",
        (run_id,),
    )


async def _lose_suffix(conn: AsyncConnection[DictRow], run_id: UUID, kept: int) -> None:
    """Stands in for a Postgres crash right after asynchronous commits: the stream keeps only
    its first ``kept`` events (what such a crash loses is always a suffix). The shared test
    server cannot be crashed."""
    await conn.execute("DELETE FROM run_events WHERE run_id = %s AND seq > %s", (run_id, kept))


async def test_a_later_attempt_numbers_its_events_after_a_lost_suffix(pool: Pool) -> None:
    """A client that saw events which were then lost still gets every event of the next
    attempt when it resumes after the last one it saw."""
    async with pool.connection() as conn:
        _, run_id = await running_run(conn)
    await _write(pool, run_id, 1, ["metadata", "updates", "updates"])
    async with pool.connection() as conn:
        seen = [e.seq for e in await events.read_after(conn, run_id, 0)]
        assert seen == [1, 2, 3]
        await _lose_suffix(conn, run_id, kept=1)
        await _take_over(conn, run_id)
    await _write(pool, run_id, 2, ["metadata", "updates"])
    async with pool.connection() as conn:
        resumed = await events.read_after(conn, run_id, seen[-1])
        everything = await events.read_after(conn, run_id, 0)
    assert [e.event for e in resumed] == ["metadata", "updates"]
    assert [e.seq for e in resumed] == [events.first_seq(2), events.first_seq(2) + 1]
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)


async def test_an_ending_appended_after_the_attempts_is_not_skipped(pool: Pool) -> None:
    """A run given up on gets its ending appended by another replica: numbered above anything
    its attempts may have numbered, not just above what survived."""
    async with pool.connection() as conn:
        _, run_id = await running_run(conn)
    await _write(pool, run_id, 1, ["metadata", "updates", "updates"])
    async with pool.connection() as conn:
        await _lose_suffix(conn, run_id, kept=1)
        await events.append(conn, run_id, [("error", {"error": "LeaseExpired"}), ("end", None)])
        resumed = await events.read_after(conn, run_id, 3)
    assert [e.event for e in resumed] == ["error", "end"]


async def test_a_run_that_never_ran_numbers_its_ending_from_1(pool: Pool) -> None:
    async with pool.connection() as conn:
        _, run_id = await running_run(conn)
        await conn.execute("UPDATE runs SET attempt = 0 WHERE run_id = %s", (run_id,))
        await events.append(conn, run_id, [("end", None)])
        assert [e.seq for e in await events.read_after(conn, run_id, 0)] == [1]


async def test_event_batches_commit_without_waiting_for_the_wal_flush(database_url: str) -> None:
    """An event batch's commit does not fsync the WAL; the connection's next transaction
    commits synchronously again (the setting must not leak to the pool's other users)."""
    conn = await connect(database_url)
    try:
        if conn.info.server_version < 180000:
            pytest.skip("per-backend I/O statistics need Postgres 18")
        _, run_id = await running_run(conn)

        async def fsyncs() -> int:
            await conn.execute(FORCE_STATS_FLUSH_SQL)
            row = await (await conn.execute(WAL_FSYNCS_SQL)).fetchone()
            assert row is not None
            return int(row["n"])

        before = await fsyncs()
        cur = await conn.execute(
            events.INSERT_SQL,
            {
                "run_id": run_id,
                "attempt": 1,
                "events": '[{"seq": 1, "event": "metadata", "data": null}]',
                "channel": EVENTS_CHANNEL,
                "payload": str(run_id),
            },
        )
        assert await cur.fetchone() is not None  # inserted and notified
        assert await fsyncs() == before
        await conn.execute("UPDATE runs SET updated_at = now() WHERE run_id = %s", (run_id,))
        assert await fsyncs() == before + 1
    finally:
        await conn.close()


async def test_a_failed_write_is_counted_and_the_stream_goes_on(pool: Pool) -> None:
    """Postgres refuses a batch (a NUL character cannot be stored in jsonb): the writer counts
    the events it lost and writes the next batch."""
    async with pool.connection() as conn:
        _, run_id = await running_run(conn)
    unwritten: list[int] = []
    writer = await events.EventWriter.open(pool, run_id, 1, on_unwritten=unwritten.append)
    writer.emit("custom", "\x00")
    writer.emit("custom", "\x00")
    await writer.close()
    writer = await events.EventWriter.open(pool, run_id, 1, on_unwritten=unwritten.append)
    writer.emit("values", {"ok": True})
    await writer.close()
    assert unwritten == [2]
    async with pool.connection() as conn:
        assert [e.event for e in await events.read_after(conn, run_id, 0)] == ["values"]
