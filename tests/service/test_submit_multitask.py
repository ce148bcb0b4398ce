"""Multitask strategies, enforced across replicas."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

Replicas = Callable[..., ServiceProcess]


def _body(text: str, strategy: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "assistant_id": "agent",
        "input": {"messages": [{"role": "user", "content": text}]},
    }
    if strategy:
        body["multitask_strategy"] = strategy
    return body


def _pair(replicas: Replicas) -> tuple[ServiceProcess, ServiceProcess, str]:
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    return a, b, tid


def _busy_on_a(a: ServiceProcess, b: ServiceProcess, tid: str, seconds: float) -> dict[str, str]:
    run = httpx.post(f"{a.url}/threads/{tid}/runs", json=_body(f"look up slowly {seconds}"))
    deadline = time.monotonic() + 20
    while httpx.get(f"{b.url}/threads/{tid}/state").json()["next"] != ["act"]:
        assert time.monotonic() < deadline, "first run never reached its tool"
        time.sleep(0.05)
    first: dict[str, str] = run.json()
    return first


def _humans(base: str, tid: str) -> list[str]:
    messages = httpx.get(f"{base}/threads/{tid}/state").json()["values"]["messages"]
    return [m["content"] for m in messages if m["type"] == "human"]


def _run(base: str, tid: str, run_id: str) -> httpx.Response:
    return httpx.get(f"{base}/threads/{tid}/runs/{run_id}")


def test_reject(replicas: Replicas) -> None:
    a, b, tid = _pair(replicas)
    first = _busy_on_a(a, b, tid, 3)
    r = httpx.post(f"{b.url}/threads/{tid}/runs/wait", json=_body("no", "reject"), timeout=30)
    assert r.status_code == 409
    done = httpx.get(f"{b.url}/threads/{tid}/runs/{first['run_id']}/join", timeout=30)
    assert "looked up slowly for 3s" in done.text
    assert _humans(b.url, tid) == ["look up slowly 3"]


def test_enqueue_runs_in_order(replicas: Replicas) -> None:
    a, b, tid = _pair(replicas)
    first = _busy_on_a(a, b, tid, 2)
    r = httpx.post(f"{b.url}/threads/{tid}/runs/wait", json=_body("second", "enqueue"), timeout=60)
    assert r.status_code == 200, r.text
    assert "Turn 2." in r.json()["messages"][-1]["content"]
    assert _run(a.url, tid, first["run_id"]).json()["status"] == "success"
    messages = httpx.get(f"{a.url}/threads/{tid}/state").json()["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "tool", "ai", "human", "ai"]


def test_interrupt_keeps_completed_steps(replicas: Replicas) -> None:
    a, b, tid = _pair(replicas)
    first = _busy_on_a(a, b, tid, 60)
    r = httpx.post(
        f"{b.url}/threads/{tid}/runs/wait", json=_body("instead", "interrupt"), timeout=60
    )
    assert r.status_code == 200, r.text
    assert _run(a.url, tid, first["run_id"]).json()["status"] == "interrupted"
    assert _humans(b.url, tid) == ["look up slowly 60", "instead"]


def test_rollback_removes_the_earlier_run(replicas: Replicas) -> None:
    a, b, tid = _pair(replicas)
    httpx.post(f"{a.url}/threads/{tid}/runs/wait", json=_body("kept"), timeout=30)
    first = _busy_on_a(a, b, tid, 60)
    r = httpx.post(
        f"{b.url}/threads/{tid}/runs/wait", json=_body("instead", "rollback"), timeout=60
    )
    assert r.status_code == 200, r.text
    assert "Turn 2." in r.json()["messages"][-1]["content"]
    assert _run(a.url, tid, first["run_id"]).status_code == 404
    assert _humans(b.url, tid) == ["kept", "instead"]


def test_simultaneous_messages_never_interleave(replicas: Replicas) -> None:
    """Two clients on two replicas send to one thread at the same instant, many times."""
    a, b, tid = _pair(replicas)
    texts = [f"message {i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: httpx.post(
                    f"{(a, b)[i % 2].url}/threads/{tid}/runs/wait",
                    json=_body(texts[i], "enqueue"),
                    timeout=120,
                ),
                range(8),
            )
        )
    assert all(r.status_code == 200 for r in results)
    messages = httpx.get(f"{a.url}/threads/{tid}/state").json()["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai"] * 8
    assert sorted(m["content"] for m in messages if m["type"] == "human") == sorted(texts)
    for turn, (human, ai) in enumerate(zip(messages[::2], messages[1::2], strict=True), start=1):
        assert f"Turn {turn}." in ai["content"]
        assert human["content"] in ai["content"]
