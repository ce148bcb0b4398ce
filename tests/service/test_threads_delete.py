"""Deleting a thread while its runs end: one lock order, so no deadlock (and no 503)."""

from __future__ import annotations

import httpx

TRIES = 60


def turn(text: str) -> dict[str, object]:
    return {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}}


async def test_delete_right_after_queueing_two_runs_never_fails(client: httpx.AsyncClient) -> None:
    """The first run ends (locking its run row, then the thread's) while the delete, holding
    the thread's row lock, asks the runs to stop (locking their rows): every try answers 204."""
    answers: list[int] = []
    deleted: list[str] = []
    for i in range(TRIES):
        tid = (await client.post("/threads", json={})).json()["thread_id"]
        for n in (1, 2):
            r = await client.post(f"/threads/{tid}/runs", json=turn(f"try {i} run {n}"))
            assert r.status_code == 200, r.text
        answers.append((await client.delete(f"/threads/{tid}")).status_code)
        deleted.append(tid)
    assert answers == [204] * TRIES
    for tid in deleted:
        assert (await client.get(f"/threads/{tid}")).status_code == 404
