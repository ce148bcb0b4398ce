"""A run's last events and its final status commit in one statement, fenced like the rest."""

from __future__ import annotations

import json

from service import events, runs
from service.db import Pool
from tests.support.runs import running_run


def _ending(first_seq: int) -> str:
    return json.dumps(
        [
            {"seq": first_seq, "event": "values", "data": {"messages": []}},
            {"seq": first_seq + 1, "event": "end", "data": None},
        ]
    )


async def test_the_ending_goes_in_with_the_final_status(pool: Pool) -> None:
    async with pool.connection() as conn:
        _, run_id = await running_run(conn, replica="ending-test")
        row = await runs.finish(
            conn,
            run_id=run_id,
            attempt=1,
            status="success",
            thread_status="idle",
            events=_ending(2),
        )
        assert row is not None and row["status"] == "success"
        recorded = await events.read_after(conn, run_id, 0)
    assert [(e.seq, e.event) for e in recorded] == [(2, "values"), (3, "end")]


async def test_an_attempt_that_lost_the_run_adds_no_ending(pool: Pool) -> None:
    async with pool.connection() as conn:
        _, run_id = await running_run(conn, replica="ending-test")
        # Another replica took the run over (attempt 2): the first attempt's ending is refused.
        await conn.execute("UPDATE runs SET attempt = 2 WHERE run_id = %s", (run_id,))
        row = await runs.finish(
            conn,
            run_id=run_id,
            attempt=1,
            status="success",
            thread_status="idle",
            events=_ending(1),
        )
        assert row is None
        assert await events.read_after(conn, run_id, 0) == []
        got = await runs.get_by_id(conn, run_id)
    assert got is not None and got["status"] == "running"


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
