"""``after_seconds``: a run no replica starts before then, whichever replica received it."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from tests.support.fixtures import app_client
from threadkeeper.service.app import create_app
from threadkeeper.service.db import Pool
from threadkeeper.service.settings import Settings

HELLO = {"messages": [{"role": "user", "content": "hi"}]}
DELAY = 1.5

DELAY_SQL = """
SELECT extract(epoch FROM started_at - created_at) AS waited, attempt FROM runs WHERE run_id = %s
"""


async def _waited(pool: Pool, run_id: str) -> tuple[float, int]:
    async with pool.connection() as conn:
        cur = await conn.execute(DELAY_SQL, (UUID(run_id),))
        row = await cur.fetchone()
    assert row is not None
    return float(row["waited"]), int(row["attempt"])


async def test_a_delayed_run_starts_after_its_seconds_on_another_replica(
    settings_for: Callable[..., Settings], pool: Pool
) -> None:
    """Received by a replica that executes nothing; the other one starts it, once due."""
    front = create_app(settings_for(workers=0, replica="front"), run_migrations=False)
    worker = create_app(settings_for(poll_seconds=0.1, replica="worker"), run_migrations=False)
    async with app_client(front) as on_front, app_client(worker):
        tid = (await on_front.post("/threads", json={})).json()["thread_id"]
        created = await on_front.post(
            f"/threads/{tid}/runs",
            json={"assistant_id": "agent", "input": HELLO, "after_seconds": DELAY},
        )
        assert created.status_code == 200, created.text
        run = created.json()
        assert run["status"] == "pending"
        joined = await on_front.get(f"/threads/{tid}/runs/{run['run_id']}/join")
        assert "Turn 1." in joined.json()["messages"][-1]["content"]
        ended = (await on_front.get(f"/threads/{tid}/runs/{run['run_id']}")).json()
        assert (ended["status"], ended["replica"]) == ("success", "worker")
    waited, attempt = await _waited(pool, run["run_id"])
    assert waited >= DELAY
    assert attempt == 1


async def test_a_delayed_wait_and_a_stateless_run(
    settings_for: Callable[..., Settings], pool: Pool
) -> None:
    """Even the replica that received the run and has room waits for it to be due."""
    app = create_app(settings_for(poll_seconds=0.1), run_migrations=False)
    async with app_client(app) as client:
        answer = await client.post(
            "/runs/wait",
            json={
                "assistant_id": "agent",
                "input": HELLO,
                "after_seconds": DELAY,
                "on_completion": "keep",
            },
        )
        assert answer.status_code == 200, answer.text
        assert "Turn 1." in answer.json()["messages"][-1]["content"]
        run_id = answer.headers["content-location"].rsplit("/", 1)[1]
    waited, _ = await _waited(pool, run_id)
    assert waited >= DELAY
