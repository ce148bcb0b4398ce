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


def _kill_during_lookup(a: ServiceProcess, b: ServiceProcess, tid: str, text: str) -> None:
    """Start a turn on ``a`` and SIGKILL ``a`` while the turn sits in slow_lookup."""
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(talk, a.url, tid, text)
        _wait_until(lambda: _state(b.url, tid)["next"] == ["act"], "run reached the tool")
        assert httpx.get(f"{b.url}/threads/{tid}").json()["status"] == "busy"
        a.kill()
        with pytest.raises(httpx.TransportError):
            pending.result()


def test_kill_during_slow_tool_frees_thread_then_null_input_resumes(replicas: Replicas) -> None:
    """With resumption switched off (one attempt), the thread is freed and resumable by hand."""
    env = {"THREADKEEPER_LEASE_SECONDS": "3", "THREADKEEPER_MAX_ATTEMPTS": "1"}
    a = replicas("a", **env).start()
    b = replicas("b", **env).start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    last_reply(talk(a.url, tid, "hello, remember the word zebra"))
    _kill_during_lookup(a, b, tid, "please look up slowly 3")
    killed_at = time.monotonic()
    _wait_until(
        lambda: httpx.get(f"{b.url}/threads/{tid}/runs").json()[0]["status"] == "error",
        "the dead replica's run given up",
        timeout=30,
    )
    assert time.monotonic() - killed_at < 30
    assert httpx.get(f"{b.url}/threads/{tid}").json()["status"] == "error"
    state = _state(b.url, tid)
    assert state["next"] == ["act"]
    messages = state["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "human", "ai"]
    assert messages[-1]["tool_calls"][0]["name"] == "slow_lookup"
    runs = httpx.get(f"{b.url}/threads/{tid}/runs").json()
    assert [run["status"] for run in runs] == ["error", "success"]
    assert runs[0]["error"]["error"] == "LeaseExpired"

    r = httpx.post(
        f"{b.url}/threads/{tid}/runs/wait",
        json={"assistant_id": "agent", "input": None},
        timeout=60,
    )
    reply = last_reply(r)
    assert "Turn 2." in reply
    assert "zebra" in reply
    assert "looked up slowly for 3s" in reply
    messages = _state(b.url, tid)["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "human", "ai", "tool", "ai"]


def test_run_of_a_killed_replica_is_resumed_by_another(replicas: Replicas) -> None:
    env = {"THREADKEEPER_LEASE_SECONDS": "2"}
    a = replicas("a", **env).start()
    b = replicas("b", **env).start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    _kill_during_lookup(a, b, tid, "look up slowly 3")
    run_id = httpx.get(f"{b.url}/threads/{tid}/runs").json()[0]["run_id"]
    joined = httpx.get(f"{b.url}/threads/{tid}/runs/{run_id}/join", timeout=60)
    assert "looked up slowly for 3s" in joined.text
    run = httpx.get(f"{b.url}/threads/{tid}/runs/{run_id}").json()
    assert run["status"] == "success"
    assert run["attempt"] == 2
    assert run["replica"] == "b"
    messages = _state(b.url, tid)["values"]["messages"]
    # The plan step finished before the kill: it was not executed again.
    assert [m["type"] for m in messages] == ["human", "ai", "tool", "ai"]


def test_a_killed_run_that_checkpoints_only_at_exit_starts_again_from_its_input(
    replicas: Replicas,
) -> None:
    """With ``durability: exit`` the dead attempt wrote no checkpoint: the next one runs the
    turn from its input, and the thread gets the turn once."""
    env = {"THREADKEEPER_LEASE_SECONDS": "2"}
    a = replicas("a", **env).start()
    b = replicas("b", **env).start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    last_reply(talk(a.url, tid, "hello, remember the word zebra"))
    body = {
        "assistant_id": "agent",
        "input": {"messages": [{"role": "user", "content": "look up slowly 3"}]},
        "durability": "exit",
        "stream_mode": ["updates"],
    }
    run_id = httpx.post(f"{a.url}/threads/{tid}/runs", json=body).json()["run_id"]
    # Followed from b: the plan step's update means the attempt on a sits in the tool.
    with httpx.stream("GET", f"{b.url}/threads/{tid}/runs/{run_id}/stream", timeout=30) as s:
        planned = any(line.startswith("data:") and '"plan"' in line for line in s.iter_lines())
    assert planned
    assert _state(b.url, tid)["next"] == [], "a checkpoint was written before the run ended"
    a.kill()
    joined = httpx.get(f"{b.url}/threads/{tid}/runs/{run_id}/join", timeout=60)
    assert "looked up slowly for 3s" in joined.text
    run = httpx.get(f"{b.url}/threads/{tid}/runs/{run_id}").json()
    assert (run["status"], run["attempt"], run["replica"]) == ("success", 2, "b")
    messages = _state(b.url, tid)["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "human", "ai", "tool", "ai"]


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
