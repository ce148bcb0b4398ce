"""A run's last events and its final status commit in one statement, fenced like the rest."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from tests.support.runs import running_run
from tests.support.statements import Statements, naming
from threadkeeper.service import checkpointer, events, runs
from threadkeeper.service.checkpointer import Batch, Fence, FencedPostgresSaver
from threadkeeper.service.db import Pool


def _ending(first_seq: int) -> str:
    return json.dumps(
        [
            {"seq": first_seq, "event": "values", "data": {"messages": []}},
            {"seq": first_seq + 1, "event": "end", "data": None},
        ]
    )


async def _finish_with(
    conn: Any, run_id: UUID, batch: Batch | None = None, first_seq: int = 1
) -> Any:
    """Attempt 1 of ``run_id`` ends in success, with two events and, given, held rows."""
    run = await runs.get_by_id(conn, run_id)
    assert run is not None
    return await runs.finish(
        conn,
        run_id=run_id,
        thread_id=run.thread_id,
        attempt=1,
        status="success",
        thread_status="idle",
        events=_ending(first_seq),
        before=batch,
    )


async def test_the_ending_goes_in_with_the_final_status(pool: Pool) -> None:
    async with pool.connection() as conn:
        _, run_id = await running_run(conn, replica="ending-test")
        row = await _finish_with(conn, run_id, first_seq=2)
        assert row is not None and row.status == "success"
        recorded = await events.read_after(conn, run_id, 0)
    assert [(e.seq, e.event) for e in recorded] == [(2, "values"), (3, "end")]


async def test_an_attempt_that_lost_the_run_adds_no_ending(pool: Pool) -> None:
    async with pool.connection() as conn:
        _, run_id = await running_run(conn, replica="ending-test")
        # Another replica took the run over (attempt 2): the first attempt's ending is refused.
        await conn.execute("UPDATE runs SET attempt = 2 WHERE run_id = %s", (run_id,))
        row = await _finish_with(conn, run_id)
        assert row is None
        assert await events.read_after(conn, run_id, 0) == []
        got = await runs.get_by_id(conn, run_id)
    assert got is not None and got.status == "running"


async def test_a_quiet_writer_hands_over_everything(pool: Pool) -> None:
    async with pool.connection() as conn:
        _, run_id = await running_run(conn, replica="ending-test")
    writer = await events.EventWriter.open(pool, run_id, 1, live=False)
    for name in ("metadata", "values", "end"):
        writer.emit(name, None)
    rest = json.loads(await writer.hand_over())
    assert [(e["seq"], e["event"]) for e in rest] == [(1, "metadata"), (2, "values"), (3, "end")]
    async with pool.connection() as conn:
        assert await events.read_after(conn, run_id, 0) == []


async def test_a_live_writer_hands_over_only_what_it_has_not_written(pool: Pool) -> None:
    """However the hand-over meets a flush in flight, every event is either written (before
    the hand-over returns) or handed over, never both and never neither."""
    async with pool.connection() as conn:
        _, run_id = await running_run(conn, replica="ending-test")
    writer = await events.EventWriter.open(pool, run_id, 1)
    for name in ("metadata", "updates", "updates", "end"):
        writer.emit(name, None)
    rest = [e["seq"] for e in json.loads(await writer.hand_over())]
    async with pool.connection() as conn:
        written = [e.seq for e in await events.read_after(conn, run_id, 0)]
    assert sorted(written + rest) == [1, 2, 3, 4]
    assert not set(written) & set(rest)
    # What is handed over comes after everything written: the ending commits last.
    assert written + rest == [1, 2, 3, 4]


async def test_an_end_gathering_for_the_next_write_is_handed_over_not_written(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Followers take ``end`` to mean the run is over and its state readable, so it must
    commit with the ending. A live writer that has written once gathers the next events for
    the rest of the flush interval; a hand-over then must take them, not let the flusher write
    them (the run's last checkpoints would commit after the ``end`` they precede)."""
    monkeypatch.setattr(events, "FLUSH_SECONDS", 3600.0)
    async with pool.connection() as conn:
        _, run_id = await running_run(conn, replica="ending-test")
    writer = await events.EventWriter.open(pool, run_id, 1)
    wrote = asyncio.Event()
    write = writer._write

    async def recorded(batch: list[dict[str, Any]]) -> None:
        await write(batch)
        wrote.set()

    monkeypatch.setattr(writer, "_write", recorded)
    writer.emit("metadata", None)
    await wrote.wait()
    writer.emit("values", None)
    for _ in range(3):  # the flusher wakes, then settles into the gathering wait
        await asyncio.sleep(0)
    writer.emit("end", None)
    async with asyncio.timeout(5):
        rest = [(e["seq"], e["event"]) for e in json.loads(await writer.hand_over())]
    assert rest == [(2, "values"), (3, "end")]
    async with pool.connection() as conn:
        assert [e.seq for e in await events.read_after(conn, run_id, 0)] == [1]


async def _held_turn(pool: Pool) -> tuple[UUID, UUID, Batch]:
    """A running run whose fenced saver holds two checkpoints and a task's writes, handed over.
    The holding window is made long enough that nothing is written on its own."""
    async with pool.connection() as conn:
        thread_id, run_id = await running_run(conn, replica="ending-test")
    saver = FencedPostgresSaver(pool, Fence(run_id, 1))
    config: Any = {"configurable": {"thread_id": str(thread_id), "checkpoint_ns": ""}}
    first = await saver.aput(config, empty_checkpoint(), {"step": -1}, {})
    await saver.aput_writes(first, [("messages", ["hello"])], "task-a")
    await saver.aput(first, empty_checkpoint(), {"step": 0}, {})
    batch = await saver.take_batch()
    assert batch is not None
    assert await saver.take_batch() is None  # handed over: the saver holds nothing more
    return thread_id, run_id, batch


async def _checkpoint_rows(conn: Any, thread_id: UUID) -> int:
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %(t)s)"
        " + (SELECT count(*) FROM checkpoint_writes WHERE thread_id = %(t)s) AS n",
        {"t": str(thread_id)},
    )
    row = await cur.fetchone()
    return int(row["n"])


@pytest.mark.usefixtures("held_writes")
async def test_held_checkpoints_commit_with_the_ending(pool: Pool) -> None:
    thread_id, run_id, batch = await _held_turn(pool)
    async with pool.connection() as conn:
        assert await _checkpoint_rows(conn, thread_id) == 0
        row = await _finish_with(conn, run_id, batch)
        assert row is not None and row.status == "success"
        assert await _checkpoint_rows(conn, thread_id) == 3
        recorded = await events.read_after(conn, run_id, 0)
    assert [e.event for e in recorded] == ["values", "end"]


@pytest.mark.usefixtures("held_writes")
async def test_an_ending_refused_by_the_fence_commits_nothing(pool: Pool) -> None:
    thread_id, run_id, batch = await _held_turn(pool)
    async with pool.connection() as conn:
        await conn.execute("UPDATE runs SET attempt = 2 WHERE run_id = %s", (run_id,))
        with pytest.raises(psycopg.Error) as refused:
            await _finish_with(conn, run_id, batch)
        assert checkpointer.refused_by_fence(refused.value)
        assert await _checkpoint_rows(conn, thread_id) == 0
        assert await events.read_after(conn, run_id, 0) == []
        got = await runs.get_by_id(conn, run_id)
    assert got is not None and got.status == "running"


def turn(text: str) -> dict[str, Any]:
    return {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}}


async def test_a_quick_turn_of_a_known_thread_costs_three_statements(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queue-and-claim, the one-statement load, and the ending carrying the turn's checkpoints:
    the turn ends within the saver's holding window, so nothing is written on its own. The
    window is widened here, as a loaded machine can take longer than 0.1 s for a turn."""
    monkeypatch.setattr(checkpointer, "WRITE_BEHIND_SECONDS", 60.0)
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    for text in ("hello", "again"):
        r = await client.post(f"/threads/{tid}/runs/wait", json=turn(text))
        assert r.status_code == 200, r.text
    statements = Statements(monkeypatch, keep=naming(tid))
    r = await client.post(f"/threads/{tid}/runs/wait", json=turn("once more"))
    assert r.status_code == 200, r.text
    claim, load, ending = statements.sent
    assert "FROM threads" in claim and "INSERT INTO runs" in claim
    assert load.startswith("WITH RECURSIVE") and "FROM checkpoints" in load
    # The thread row is locked before the fence locks the run row (see runs.FINISH_SQL).
    assert ending.startswith("WITH thread_lock AS") and "fence AS" in ending
    assert "INSERT INTO checkpoints" in ending and "UPDATE runs SET status" in ending
    state = (await client.get(f"/threads/{tid}/state")).json()
    assert [m["content"] for m in state["values"]["messages"] if m["type"] == "human"] == [
        "hello",
        "again",
        "once more",
    ]
