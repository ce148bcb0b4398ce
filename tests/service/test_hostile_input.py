"""Hostile input gets a 4xx problem that says what is wrong, and nothing is stored."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.problems import PROBLEM, assert_problem

HELLO = {"messages": [{"role": "user", "content": "hi"}]}


async def _everything(client: httpx.AsyncClient, tid: str) -> object:
    """What a client can read back: threads, the thread's state, history and runs."""
    threads = await client.post("/threads/search", json={"limit": 1000, "archived": None})
    state = await client.get(f"/threads/{tid}/state")
    history = await client.post(f"/threads/{tid}/history", json={"limit": 1000})
    runs = await client.get(f"/threads/{tid}/runs")
    return threads.json(), state.json(), history.json(), runs.json()


async def _thread_with_a_turn(client: httpx.AsyncClient) -> str:
    tid: str = (await client.post("/threads", json={"metadata": {"k": 1}})).json()["thread_id"]
    r = await client.post(
        f"/threads/{tid}/runs/wait", json={"assistant_id": "agent", "input": HELLO}
    )
    assert r.status_code == 200, r.text
    return tid


def _raw(text: str) -> bytes:
    return text.encode()


# Bodies as raw JSON text: httpx would refuse to encode some of them (a lone surrogate, NaN).
DEEP = "[" * 900 + "]" * 900
BODY_CASES: list[tuple[str, str, int, str]] = [
    ("/threads", '{"metadata": {"k": "a\\u0000b"}}', 422, "NUL"),
    ("/threads", '{"metadata": {"a\\u0000b": 1}}', 422, "NUL"),
    ("/threads", '{"title": "a\\u0000b"}', 422, "NUL"),
    ("/threads", '{"metadata": {"k": "\\ud800"}}', 422, "surrogate"),
    ("/threads", '{"metadata": {"k": "\\udfff x"}}', 422, "surrogate"),
    ("/threads", '{"metadata": {"k": NaN}}', 400, "NaN"),
    ("/threads", '{"metadata": {"k": Infinity}}', 400, "Infinity"),
    ("/threads", '{"metadata": {"k": -Infinity}}', 400, "Infinity"),
    ("/threads", '{"metadata": {"k": 1e400}}', 400, "1e400"),
    ("/threads", '{"metadata": {"k": ' + "9" * 5000 + "}}", 400, "digits"),
    ("/threads", '{"metadata": {"k": 18446744073709551616}}', 422, "64 bits"),
    ("/threads", '{"metadata": {"k": -9223372036854775809}}', 422, "64 bits"),
    ("/threads", '{"metadata": {"k": ' + DEEP + "}}", 422, "deep"),
    ("/threads", '{"metadata": {"k": ' + "[" * 5000 + "]" * 5000 + "}}", 422, "deep"),
    ("/threads/search", '{"metadata": {"k": "a\\u0000"}}', 422, "NUL"),
    ("/threads/search", '{"offset": 9223372036854775808}', 422, "offset"),
    ("/threads/search", '{"offset": 9223372036854775807}', 422, "offset"),
    ("/threads/count", '{"metadata": {"k": "a\\u0000"}}', 422, "NUL"),
]


@pytest.mark.parametrize(("path", "raw", "status", "mentions"), BODY_CASES)
async def test_hostile_bodies_are_refused(
    client: httpx.AsyncClient, path: str, raw: str, status: int, mentions: str
) -> None:
    tid = await _thread_with_a_turn(client)
    before = await _everything(client, tid)
    r = await client.post(path, content=_raw(raw), headers={"content-type": "application/json"})
    assert_problem(r, status, mentions)
    assert await _everything(client, tid) == before


async def test_hostile_run_and_state_input_is_refused(client: httpx.AsyncClient) -> None:
    tid = await _thread_with_a_turn(client)
    before = await _everything(client, tid)
    nul_message = '{"messages": [{"role": "user", "content": "a\\u0000b"}]}'
    nul_run = f'{{"assistant_id": "agent", "input": {nul_message}}}'
    state = f"/threads/{tid}/state"
    cases: list[tuple[str, str, int, str]] = [
        (f"/threads/{tid}/runs/wait", nul_run, 422, "NUL"),
        (f"/threads/{tid}/runs", nul_run, 422, "NUL"),
        (
            f"/threads/{tid}/runs/stream",
            '{"assistant_id": "agent", "input": "\\ud800"}',
            422,
            "sur",
        ),
        ("/chat", '{"message": "a\\u0000b"}', 422, "NUL"),
        (state, f'{{"values": {nul_message}}}', 422, "NUL"),
        (state, '{"values": {"messages": []}, "as_node": "nobody"}', 422, "nobody"),
        (state, '{"values": {"messages": [{"role": "nobody"}]}}', 422, "cannot update"),
        (state, '{"values": [1, 2, 3]}', 422, "values"),
        (state, '{"values": "text"}', 422, "values"),
        (
            f"/threads/{tid}/runs/wait",
            '{"assistant_id": "agent", "input": {"n": 1e999}}',
            400,
            "1e999",
        ),
        (
            f"/threads/{tid}/runs",
            '{"assistant_id": "agent", "input": {"n": 20000000000000000000000}}',
            422,
            "64",
        ),
        (f"/threads/{tid}/history", '{"before": "a\\u0000"}', 422, "before"),
        (f"/threads/{tid}/history", '{"metadata": {"k": "a\\u0000"}}', 422, "NUL"),
    ]
    for path, raw, status, mentions in cases:
        r = await client.post(path, content=_raw(raw), headers={"content-type": "application/json"})
        assert_problem(r, status, mentions)
    assert_problem(await client.get(f"/threads/{tid}/state/%00"), 422, "checkpoint_id")
    assert_problem(await client.get(f"/threads/{tid}/history?before=%00"), 422, "before")
    assert await _everything(client, tid) == before


async def test_unknown_checkpoints_are_404(client: httpx.AsyncClient) -> None:
    tid = await _thread_with_a_turn(client)
    before = await _everything(client, tid)
    unknown = str(uuid.uuid4())
    r = await client.get(f"/threads/{tid}/state/{unknown}")
    assert_problem(r, 404, unknown)
    r = await client.post(
        f"/threads/{tid}/state/checkpoint", json={"checkpoint": {"checkpoint_id": unknown}}
    )
    assert_problem(r, 404, unknown)
    for body in (
        {"values": {"messages": []}, "checkpoint_id": unknown},
        {"values": {"messages": []}, "checkpoint": {"checkpoint_id": unknown}},
    ):
        assert_problem(await client.post(f"/threads/{tid}/state", json=body), 404, unknown)
    r = await client.post(f"/threads/{tid}/history", json={"before": unknown})
    assert_problem(r, 404, unknown)
    r = await client.post(
        f"/threads/{tid}/state/checkpoint", json={"checkpoint": {"checkpoint_ns": "nowhere"}}
    )
    assert_problem(r, 404, "nowhere")
    assert await _everything(client, tid) == before


async def test_known_checkpoints_still_answer(client: httpx.AsyncClient) -> None:
    """The 404s above are about the id, not the endpoints: a real checkpoint id answers 200."""
    tid = await _thread_with_a_turn(client)
    state = (await client.get(f"/threads/{tid}/state")).json()
    cid = state["checkpoint"]["checkpoint_id"]
    r = await client.get(f"/threads/{tid}/state/{cid}")
    assert r.status_code == 200 and r.json()["values"] == state["values"]
    r = await client.post(
        f"/threads/{tid}/state/checkpoint", json={"checkpoint": {"checkpoint_id": cid}}
    )
    assert r.status_code == 200 and r.json()["values"] == state["values"]
    r = await client.post(
        f"/threads/{tid}/state", json={"values": {"messages": []}, "checkpoint_id": cid}
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/threads/{tid}/history", json={"before": cid})
    assert r.status_code == 200 and r.json()


async def test_method_not_allowed_lists_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    r = await client.put(f"/threads/{tid}", json={})
    assert r.status_code == 405
    assert r.headers["content-type"] == PROBLEM
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD", "PATCH", "DELETE"}
    r = await client.delete(f"/threads/{tid}/state")
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}
