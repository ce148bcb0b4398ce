"""Several real ``threadkeeper-service serve`` processes on one database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

Replicas = Callable[..., ServiceProcess]


def talk(base: str, tid: str, text: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{base}/threads/{tid}/runs/wait",
        json={"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}},
        timeout=timeout,
    )


def last_reply(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    content: str = r.json()["messages"][-1]["content"]
    return content


def test_conversation_alternates_and_survives_kills_and_restarts(replicas: Replicas) -> None:
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    first = "my name is Grace and I collect teapots"
    for turn in range(1, 11):
        replica = a if turn % 2 else b
        if turn == 5:
            a.kill()  # between messages, with no warning
            replica = b
        if turn == 7:
            a.start(migrate=False)
        reply = last_reply(talk(replica.url, tid, first if turn == 1 else f"message {turn}"))
        assert f"Turn {turn}." in reply
        assert first in reply
    before = httpx.get(f"{b.url}/threads/{tid}/state").json()["values"]
    a.terminate()
    b.terminate()

    c = replicas("c").start()
    thread = httpx.get(f"{c.url}/threads/{tid}").json()
    assert thread["title"] == first
    assert thread["status"] == "idle"
    assert thread["values"] == before
    assert len(before["messages"]) == 20
    assert "Turn 11." in last_reply(talk(c.url, tid, "still there?"))


def test_kill_during_slow_tool_frees_thread_and_resumes(replicas: Replicas) -> None:
    env = {"THREADKEEPER_LEASE_SECONDS": "3"}
    a = replicas("a", **env).start()
    b = replicas("b", **env).start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    last_reply(talk(a.url, tid, "hello, remember the word zebra"))

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(talk, a.url, tid, "please look up slowly 120")
        _wait_until(lambda: _state(b.url, tid)["next"] == ["act"], "run reached the tool")
        assert httpx.get(f"{b.url}/threads/{tid}").json()["status"] == "busy"
        a.kill()
        with pytest.raises(httpx.TransportError):
            pending.result()
    killed_at = time.monotonic()
    _wait_until(
        lambda: httpx.get(f"{b.url}/threads/{tid}").json()["status"] != "busy",
        "thread freed",
        timeout=30,
    )
    assert time.monotonic() - killed_at < 30
    state = _state(b.url, tid)
    assert state["next"] == ["act"]
    ai = state["values"]["messages"][-1]
    assert ai["tool_calls"][0]["name"] == "slow_lookup"
    assert httpx.get(f"{b.url}/threads/{tid}").json()["status"] == "interrupted"

    # The tool call the dead replica never finished would run for two minutes again; resume
    # instead from the checkpoint with a short lookup written in its place.
    ai["tool_calls"][0]["args"] = {"seconds": 0.1}
    r = httpx.post(
        f"{b.url}/threads/{tid}/state",
        json={"values": {"messages": [ai]}, "as_node": "plan"},
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{b.url}/threads/{tid}/runs/wait",
        json={"assistant_id": "agent", "input": None},
        timeout=60,
    )
    reply = last_reply(r)
    assert "Turn 2." in reply
    assert "looked up slowly for 0.1s" in reply
    runs = httpx.get(f"{b.url}/threads/{tid}/runs").json()
    assert [run["status"] for run in runs] == ["success", "error", "success"]
    assert runs[1]["error"]["error"] == "LeaseExpired"


def test_resume_with_null_input_finishes_the_interrupted_step(replicas: Replicas) -> None:
    env = {"THREADKEEPER_LEASE_SECONDS": "2"}
    a = replicas("a", **env).start()
    b = replicas("b", **env).start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(talk, a.url, tid, "look up slowly 4")
        _wait_until(lambda: _state(b.url, tid)["next"] == ["act"], "run reached the tool")
        a.kill()
        with pytest.raises(httpx.TransportError):
            pending.result()
    _wait_until(
        lambda: httpx.get(f"{b.url}/threads/{tid}").json()["status"] == "interrupted",
        "thread freed",
        timeout=30,
    )
    r = httpx.post(
        f"{b.url}/threads/{tid}/runs/wait",
        json={"assistant_id": "agent", "input": None},
        timeout=60,
    )
    reply = last_reply(r)
    assert "Turn 1." in reply
    assert "looked up slowly for 4s" in reply
    messages = _state(b.url, tid)["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "tool", "ai"]


def test_six_replicas_start_together_on_an_empty_database(
    empty_database_url: str, tmp_path: object
) -> None:
    from pathlib import Path

    procs = [ServiceProcess(empty_database_url, Path(str(tmp_path)), f"r{i}") for i in range(6)]
    try:
        for p in procs:
            p.start(wait=False)
        for p in procs:
            p.wait_ready(timeout=120)
        for p in procs:
            assert httpx.get(f"{p.url}/readyz").json() == {"status": "ready"}
    finally:
        for p in procs:
            p.kill()


def test_logs_are_json_lines_with_context(replicas: Replicas) -> None:
    a = replicas("logger").start()
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    r = talk(a.url, tid, "hello logs")
    last_reply(r)
    a.terminate()
    events = [json.loads(line) for line in a.logs().splitlines() if line.strip()]
    finished = [e for e in events if e.get("event") == "run_finished"]
    assert finished, a.logs()[-2000:]
    event = finished[-1]
    assert event["thread_id"] == tid
    assert event["run_id"]
    assert event["replica"] == "logger"
    assert event["request_id"]
    requests = [e for e in events if e.get("event") == "request"]
    assert any(e["route"] == "/threads/{thread_id}/runs/wait" for e in requests)


def _state(base: str, tid: str) -> dict[str, object]:
    r = httpx.get(f"{base}/threads/{tid}/state", timeout=10)
    assert r.status_code == 200, r.text
    state: dict[str, object] = r.json()
    return state


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")
