"""The service's checkpoint saver: no global lock, and fenced writes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tests.support.statements import Statements
from threadkeeper.service import checkpointer, db
from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.checkpointer import Fence, FencedPostgresSaver, LeaseLostError
from threadkeeper.service.db import CONNECTION_KWARGS, Pool, make_pool
from threadkeeper.service.settings import Settings

HELLO = {"messages": [{"role": "user", "content": "what is 3*3"}]}


class CountingPool(AsyncConnectionPool):  # type: ignore[type-arg]
    """A real pool that records how many connections were lent out at once."""

    active = 0
    peak = 0

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109
        async with super().connection(timeout) as conn:
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                yield conn
            finally:
                self.active -= 1


async def _peak_for(database_url: str, make_saver: Any) -> int:
    pool = CountingPool(
        database_url, min_size=20, max_size=20, kwargs=CONNECTION_KWARGS, open=False
    )
    await pool.open(wait=True)
    try:
        graph = build_graph(OfflineChatModel()).compile(checkpointer=make_saver(pool))
        await asyncio.gather(
            *(
                graph.ainvoke(HELLO, {"configurable": {"thread_id": str(uuid.uuid4())}})
                for _ in range(50)
            )
        )
        return int(pool.peak)
    finally:
        await pool.close()


async def test_fifty_concurrent_runs_use_many_connections(database_url: str) -> None:
    """langgraph#7259: the stock saver takes one asyncio.Lock around every call."""
    stock = await _peak_for(database_url, AsyncPostgresSaver)
    ours = await _peak_for(database_url, FencedPostgresSaver)
    assert stock == 1
    assert ours > 1
    assert ours >= 5


async def _insert_run(
    conn: AsyncConnection[DictRow], thread_id: uuid.UUID, lease: float
) -> uuid.UUID:
    run_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO threads (thread_id, owner) VALUES (%s, 'local') ON CONFLICT DO NOTHING",
        (thread_id,),
    )
    await conn.execute(
        """INSERT INTO runs (run_id, thread_id, assistant_id, status, attempt, lease_holder,
                             lease_expires_at)
           VALUES (%s, %s, 'agent', 'running', 1, 'r1', now() + make_interval(secs => %s))""",
        (run_id, thread_id, lease),
    )
    return run_id


async def _rows(pool: Pool, thread_id: uuid.UUID) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s)
                    + (SELECT count(*) FROM checkpoint_writes WHERE thread_id = %(t)s)
                    + (SELECT count(*) FROM checkpoint_blobs WHERE thread_id = %(t)s) AS n""",
            {"t": str(thread_id)},
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row["n"])


async def _turn(pool: Pool, fence: Fence, config: Any) -> None:
    """One turn as the executor runs it: the graph on a fenced saver, then the saver's flush."""
    saver = FencedPostgresSaver(pool, fence)
    await build_graph(OfflineChatModel()).compile(checkpointer=saver).ainvoke(HELLO, config)
    await saver.flush()


async def test_fenced_writes_need_a_live_lease(pool: Pool) -> None:
    thread_id = uuid.uuid4()
    async with pool.connection() as conn:
        live = await _insert_run(conn, thread_id, 60)
    config = {"configurable": {"thread_id": str(thread_id)}}
    await _turn(pool, Fence(live, 1), config)
    written = await _rows(pool, thread_id)
    assert written > 0

    # The same run under a stale attempt number, an expired lease, or a deleted run row:
    with pytest.raises(LeaseLostError):
        await _turn(pool, Fence(live, 2), config)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE run_id = %s",
            (live,),
        )
    with pytest.raises(LeaseLostError):
        await _turn(pool, Fence(live, 1), config)
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM runs WHERE run_id = %s", (live,))
    with pytest.raises(LeaseLostError):
        await _turn(pool, Fence(live, 1), config)
    assert await _rows(pool, thread_id) == written


async def test_delete_waits_for_an_in_flight_fenced_write(pool: Pool) -> None:
    """A write that checked its lease holds the run row until it commits; a delete waits."""
    thread_id = uuid.uuid4()
    async with pool.connection() as conn:
        run_id = await _insert_run(conn, thread_id, 60)
    saver = FencedPostgresSaver(pool, Fence(run_id, 1))
    async with pool.connection() as other:
        async with saver._cursor(pipeline=True):
            await other.execute("SET lock_timeout = '200ms'")
            with pytest.raises(Exception, match="lock timeout"):
                await other.execute("DELETE FROM runs WHERE run_id = %s", (run_id,))
        await other.execute("DELETE FROM runs WHERE run_id = %s", (run_id,))


WAITING_ON_LOCK_SQL = """
SELECT count(*) AS n FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""


async def test_write_waits_for_a_takeover_in_flight_then_refuses(pool: Pool) -> None:
    """The one-statement fenced write share-locks the run row: while another replica's takeover
    of the run is uncommitted the write waits, and once it commits the write writes nothing."""
    thread_id = uuid.uuid4()
    async with pool.connection() as conn:
        run_id = await _insert_run(conn, thread_id, 60)
    saver = FencedPostgresSaver(pool, Fence(run_id, 1))
    config: Any = {
        "configurable": {
            "thread_id": str(thread_id),
            "checkpoint_ns": "",
            "checkpoint_id": "1ef00000-0000-6000-8000-000000000000",
        }
    }
    async with pool.connection() as other, pool.connection() as watcher:
        async with other.transaction():
            await other.execute(
                "UPDATE runs SET attempt = 2, lease_holder = 'r2' WHERE run_id = %s", (run_id,)
            )
            write = asyncio.create_task(_write_now(saver, config, [("messages", ["hi"])]))
            async with asyncio.timeout(30):
                while True:
                    cur = await watcher.execute(WAITING_ON_LOCK_SQL)
                    row = await cur.fetchone()
                    if row is not None and row["n"] >= 1:
                        break
                    assert not write.done(), "the write did not wait for the takeover"
                    await asyncio.sleep(0.02)
            assert not write.done()
        with pytest.raises(LeaseLostError):
            await write
    assert await _rows(pool, thread_id) == 0


async def _write_now(saver: FencedPostgresSaver, config: Any, writes: list[Any]) -> None:
    await saver.aput_writes(config, writes, "t1")
    await saver.flush()


def _config(thread_id: uuid.UUID, checkpoint_id: str | None = None) -> Any:
    configurable = {"thread_id": str(thread_id), "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


async def _table_rows(pool: Pool, table: str, thread_id: uuid.UUID) -> list[DictRow]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT * FROM {table} WHERE thread_id = %s ORDER BY 1, 2, 3",
            (str(thread_id),),
        )
        return await cur.fetchall()


async def _fenced_run(pool: Pool) -> tuple[uuid.UUID, uuid.UUID, FencedPostgresSaver, Any]:
    """A thread with a live run, its fenced saver, and the config of a first checkpoint."""
    thread_id = uuid.uuid4()
    async with pool.connection() as conn:
        run_id = await _insert_run(conn, thread_id, 60)
    saver = FencedPostgresSaver(pool, Fence(run_id, 1))
    first = await saver.aput(_config(thread_id), empty_checkpoint(), {"step": -1}, {})
    await saver.flush()
    return thread_id, run_id, saver, first


@pytest.mark.usefixtures("held_writes")
async def test_task_writes_and_checkpoints_go_together_in_one_statement(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_id, _run_id, saver, first = await _fenced_run(pool)
    statements = Statements(monkeypatch)
    await saver.aput_writes(first, [("messages", ["hi"]), ("route", "act")], "task-a")
    second = await saver.aput(first, empty_checkpoint(), {"step": 0}, {})
    await saver.aput_writes(second, [("messages", ["again"])], "task-b")
    await saver.aput(second, empty_checkpoint(), {"step": 1}, {})
    assert statements.sent == []
    assert await _table_rows(pool, "checkpoint_writes", thread_id) == []
    assert len(await _table_rows(pool, "checkpoints", thread_id)) == 1
    before = len(statements.sent)
    await saver.flush()
    assert len(statements.sent) - before == 1, statements.sent[before:]
    writes = await _table_rows(pool, "checkpoint_writes", thread_id)
    assert sorted((w["task_id"], w["idx"], w["channel"]) for w in writes) == [
        ("task-a", 0, "messages"),
        ("task-a", 1, "route"),
        ("task-b", 0, "messages"),
    ]
    rows = await _table_rows(pool, "checkpoints", thread_id)
    assert len(rows) == 3
    parents = {r["checkpoint_id"]: r["parent_checkpoint_id"] for r in rows}
    second_id, first_id = (c["configurable"]["checkpoint_id"] for c in (second, first))
    assert parents[second_id] == first_id


@pytest.mark.usefixtures("held_writes")
async def test_a_checkpoint_put_again_while_held_keeps_the_last_version(pool: Pool) -> None:
    """One statement cannot upsert a row twice: the first version goes out first."""
    thread_id, _run_id, saver, first = await _fenced_run(pool)
    checkpoint = empty_checkpoint()
    await saver.aput(first, checkpoint, {"step": 0, "source": "loop"}, {})
    await saver.aput(first, checkpoint, {"step": 0, "source": "update"}, {})
    await saver.flush()
    rows = await _table_rows(pool, "checkpoints", thread_id)
    again = [r for r in rows if r["checkpoint_id"] == checkpoint["id"]]
    assert len(again) == 1
    assert again[0]["metadata"]["source"] == "update"


@pytest.mark.usefixtures("held_writes")
async def test_held_writes_are_written_before_a_read_and_on_flush(pool: Pool) -> None:
    thread_id, _run_id, saver, first = await _fenced_run(pool)
    await saver.aput_writes(first, [("messages", ["read me"])], "task-a")
    read = await saver.aget_tuple(_config(thread_id))
    assert read is not None
    assert [w[0] for w in read.pending_writes or []] == ["task-a"]
    await saver.aput_writes(first, [("messages", ["flush me"])], "task-b")
    await saver.flush()
    tasks = [w["task_id"] for w in await _table_rows(pool, "checkpoint_writes", thread_id)]
    assert sorted(tasks) == ["task-a", "task-b"]


@pytest.mark.usefixtures("held_writes")
async def test_a_held_row_written_again_keeps_the_last_value(pool: Pool) -> None:
    """One statement cannot upsert a row twice: the first value is written before the second
    is held, and the second wins, as with the stock saver."""
    thread_id, _run_id, saver, first = await _fenced_run(pool)
    await saver.aput_writes(first, [("__error__", "first")], "task-a")
    await saver.aput_writes(first, [("__error__", "second")], "task-a")
    await saver.aput(first, empty_checkpoint(), {"step": 0}, {})
    await saver.flush()
    writes = await _table_rows(pool, "checkpoint_writes", thread_id)
    assert len(writes) == 1
    assert saver.serde.loads_typed((writes[0]["type"], writes[0]["blob"])) == "second"


async def test_writes_go_on_their_own_when_no_checkpoint_follows(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpointer, "WRITE_BEHIND_SECONDS", 0.0)
    thread_id, _run_id, saver, first = await _fenced_run(pool)
    await saver.aput_writes(first, [("messages", ["alone"])], "task-a")
    async with asyncio.timeout(30):
        # Polls the database: there is no event to wait on in another connection's commit.
        while not await _table_rows(pool, "checkpoint_writes", thread_id):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _ended_write_behind(saver: FencedPostgresSaver) -> asyncio.Task[None]:
    """End the write-behind window now, as the timer does, and wait for that write to end."""
    saver._write_behind()
    writing = saver._writing
    assert writing is not None
    async with asyncio.timeout(30):
        await asyncio.wait([writing])
    return writing


@pytest.mark.usefixtures("held_writes")
async def test_a_write_behind_refused_by_the_fence_fails_the_next_checkpoint(pool: Pool) -> None:
    thread_id, run_id, saver, first = await _fenced_run(pool)
    async with pool.connection() as conn:
        await conn.execute("UPDATE runs SET attempt = 2 WHERE run_id = %s", (run_id,))
    await saver.aput_writes(first, [("messages", ["too late"])], "task-a")
    refused = await _ended_write_behind(saver)
    assert isinstance(refused.exception(), LeaseLostError)
    with pytest.raises(LeaseLostError):
        await saver.aput(first, empty_checkpoint(), {"step": 0}, {})
    assert await _table_rows(pool, "checkpoint_writes", thread_id) == []
    assert len(await _table_rows(pool, "checkpoints", thread_id)) == 1


@pytest.mark.usefixtures("held_writes")
async def test_nothing_is_written_after_a_write_the_database_failed(
    pool: Pool, database_url: str
) -> None:
    """What is durable stays a prefix of what LangGraph handed over. Regression: a write-behind
    that found no connection in time failed only the next call, and the rows held after it were
    written: a checkpoint without the task writes it was made from, from which a DeltaChannel
    rebuilds a history that lacks their messages (a run resumed from it read a thread reduced to
    its last message)."""
    settings = Settings(
        database_url=database_url, pool_min_size=1, pool_max_size=1, pool_timeout=0.2
    )
    small = make_pool(database_url, settings)
    await small.open(wait=True)
    try:
        thread_id, _run_id, saver, first = await _fenced_run(small)
        await saver.aput_writes(first, [("messages", ["lost"])], "task-a")
        async with small.connection():  # every connection busy: the write-behind times out
            failed = await _ended_write_behind(saver)
        assert isinstance(failed.exception(), PoolTimeout)
        # Told to the next call, as before, and now to every call after it too.
        for step in range(3):
            with pytest.raises(Exception) as told:
                await saver.aput(first, empty_checkpoint(), {"step": step}, {})
            assert db.classify(told.value) is db.Failure.UNREACHABLE
        with pytest.raises(Exception) as told:
            await saver.aput_writes(first, [("messages", ["after"])], "task-b")
        assert db.classify(told.value) is db.Failure.UNREACHABLE
        for end in (saver.flush, saver.take_batch):
            with pytest.raises(Exception) as told:
                await end()
            assert db.classify(told.value) is db.Failure.UNREACHABLE
    finally:
        await small.close()
    assert await _table_rows(pool, "checkpoint_writes", thread_id) == []
    assert len(await _table_rows(pool, "checkpoints", thread_id)) == 1


# A backend of this database waiting for a lock in a fenced write (see test_executor_failures).
WAITING_WRITE_SQL = r"""
SELECT count(*) AS n FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
  AND query ~ '^\s*WITH fence AS'
"""


@pytest.mark.usefixtures("held_writes")
async def test_nothing_is_written_after_a_write_that_was_cancelled(pool: Pool) -> None:
    """A stop cancels a write whose commit nobody saw: the saver writes nothing after it, as
    after a lost lease, so a flush on the way out cannot commit rows that may follow a gap."""
    thread_id, run_id, saver, first = await _fenced_run(pool)
    await saver.aput_writes(first, [("messages", ["cut"])], "task-a")
    async with pool.connection() as locker:
        await locker.execute("BEGIN")
        await locker.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (run_id,))
        flushing = asyncio.create_task(saver.flush())
        async with asyncio.timeout(30):
            # Polls the activity view: the wait is in another backend (as in WriteKiller).
            while True:
                await locker.execute("SELECT pg_stat_clear_snapshot()")
                row = await (await locker.execute(WAITING_WRITE_SQL)).fetchone()
                if row is not None and row["n"] > 0:
                    break
                await asyncio.sleep(0.01)
        flushing.cancel()
        await asyncio.wait([flushing])
        await locker.execute("ROLLBACK")
    with pytest.raises(LeaseLostError):
        await saver.aput(first, empty_checkpoint(), {"step": 0}, {})
    with pytest.raises(LeaseLostError):
        await saver.flush()
    assert await _table_rows(pool, "checkpoint_writes", thread_id) == []
    assert len(await _table_rows(pool, "checkpoints", thread_id)) == 1


@pytest.mark.usefixtures("held_writes")
async def test_the_batch_waits_for_a_write_behind_that_starts_while_it_waits(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the ending waited for the write-behind under way, not for the one the timer
    started meanwhile with the run's last checkpoint. The ending then committed first, pointing
    at a checkpoint not yet written, and the late write, refused by the fence of a finished run,
    never came (a join answered ``{}``: test_resilience in CI)."""
    thread_id, _run_id, saver, first = await _fenced_run(pool)
    gate, entered = asyncio.Event(), asyncio.Event()
    real_execute, real_written = saver._execute, saver._written
    calls = 0

    async def held_back(query: bytes, params: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
        await real_execute(query, params)

    async def waiting() -> None:
        entered.set()
        await real_written()

    monkeypatch.setattr(saver, "_execute", held_back)
    monkeypatch.setattr(saver, "_written", waiting)
    second = await saver.aput(first, empty_checkpoint(), {"step": 0}, {})
    saver._write_behind()  # the window ends: the first write-behind starts and is held back
    last = await saver.aput(second, empty_checkpoint(), {"step": 1}, {})
    taking = asyncio.create_task(saver.take_batch())
    async with asyncio.timeout(30):
        await entered.wait()  # the ending waits for the write-behind under way
    saver._write_behind()  # meanwhile the window ends again, with the last checkpoint
    gate.set()
    async with asyncio.timeout(30):
        batch = await taking
    committed = {r["checkpoint_id"] for r in await _table_rows(pool, "checkpoints", thread_id)}
    in_batch = {i.params()[2] for i in batch.items} if batch is not None else set()
    assert last["configurable"]["checkpoint_id"] in committed | in_batch


PREPARED_SQL = "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE %s"


@pytest.mark.parametrize("prepared", [True, False])
async def test_the_pool_prepares_statements_unless_told_not_to(
    database_url: str, prepared: bool
) -> None:
    """Prepared statements spare Postgres a plan per call; PgBouncer setups turn them off."""
    settings = Settings(database_url=database_url, prepared_statements=prepared)
    pool = make_pool(database_url, settings)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1 AS threadkeeper_probe")
            cur = await conn.execute(PREPARED_SQL, ("%threadkeeper_probe%",))
            row = await cur.fetchone()
    finally:
        await pool.close()
    assert row is not None
    assert (row["n"] > 0) is prepared
