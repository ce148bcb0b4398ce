"""Streaming runs in the Agent Server wire format, followed from any replica."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.support.processes import ServiceProcess
from tests.support.sse import Event, events
from threadkeeper.service.events import first_seq

pytestmark = pytest.mark.slow

Replicas = Callable[..., ServiceProcess]


def _body(text: str, **extra: object) -> dict[str, object]:
    return {
        "assistant_id": "agent",
        "input": {"messages": [{"role": "user", "content": text}]},
        **extra,
    }


def _stream(base: str, tid: str, body: dict[str, object]) -> tuple[httpx.Response, list[Event]]:
    with httpx.stream("POST", f"{base}/threads/{tid}/runs/stream", json=body, timeout=60) as r:
        return r, list(events(r)) if r.status_code == 200 else []


def test_stream_wire_format(replicas: Replicas) -> None:
    a = replicas("a").start()
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    modes = ["values", "updates", "messages-tuple", "custom", "debug"]
    with httpx.stream(
        "POST",
        f"{a.url}/threads/{tid}/runs/stream",
        json=_body("please look up slowly 0.2", stream_mode=modes),
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    run_path = r.headers["content-location"]
    assert r.headers["location"] == f"{run_path}/stream"
    assert run_path.startswith(f"/threads/{tid}/runs/")
    assert "\r\n\r\n" in raw
    parsed = list(events(httpx.Response(200, content=raw.encode())))
    assert parsed[0].event == "metadata"
    assert parsed[0].data == {"run_id": run_path.rsplit("/", 1)[1], "attempt": 1}
    assert parsed[-1].event == "end"
    assert [e.id for e in parsed] == list(range(1, len(parsed) + 1))
    names = {e.event for e in parsed}
    assert {"values", "updates", "messages", "custom", "debug"} <= names
    tokens = [e.data for e in parsed if e.event == "messages"]
    chunk, meta = tokens[-1]
    assert meta["langgraph_node"] == "reply"
    reply_tokens = [c["content"] for c, m in tokens if m["langgraph_node"] == "reply"]
    assert len(reply_tokens) > 5
    final = [e.data for e in parsed if e.event == "values"][-1]
    assert "".join(reply_tokens) == final["messages"][-1]["content"]
    custom = [e.data for e in parsed if e.event == "custom"]
    assert [c["status"] for c in custom] == ["started", "done"]
    assert chunk["type"] == "AIMessageChunk"


def test_unsupported_stream_mode_is_422_before_streaming(replicas: Replicas) -> None:
    a = replicas("a").start()
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    r, _ = _stream(a.url, tid, _body("hi", stream_mode=["values", "lifecycle"]))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{a.url}/threads/{tid}/runs").json() == []


def test_rejoin_on_another_replica_with_last_event_id(replicas: Replicas) -> None:
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    body = _body("look up slowly 1.5", stream_mode=["updates", "messages-tuple", "custom"])
    seen: list[Event] = []
    with httpx.stream("POST", f"{a.url}/threads/{tid}/runs/stream", json=body, timeout=60) as r:
        stream_path = r.headers["location"]
        for event in events(r):
            seen.append(event)
            if event.event == "custom":
                break  # the client hangs up mid-run
    with httpx.stream(
        "GET",
        f"{b.url}{stream_path}",
        headers={"Last-Event-ID": str(seen[-1].id)},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        rest = list(events(r))
    assert rest[0].id == seen[-1].id + 1
    assert rest[-1].event == "end"
    with httpx.stream("GET", f"{b.url}{stream_path}", timeout=60) as r:
        everything = list(events(r))
    assert [(e.id, e.event, e.data) for e in seen + rest] == [
        (e.id, e.event, e.data) for e in everything
    ]
    only = httpx.stream  # a rejoin may narrow the modes
    with only("GET", f"{b.url}{stream_path}?stream_mode=custom", timeout=60) as r:
        narrowed = [e.event for e in events(r)]
    assert set(narrowed) == {"metadata", "custom", "end"}


def test_stream_survives_the_executing_replica_dying(replicas: Replicas) -> None:
    env = {"THREADKEEPER_LEASE_SECONDS": "2"}
    a = replicas("a", **env).start()
    b = replicas("b", **env).start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    body = _body("look up slowly 3", stream_mode=["updates", "custom"])
    seen: list[Event] = []
    with (
        pytest.raises(httpx.TransportError),
        httpx.stream("POST", f"{a.url}/threads/{tid}/runs/stream", json=body, timeout=60) as r,
    ):
        stream_path = r.headers["location"]
        for event in events(r):
            seen.append(event)
            if event.event == "custom":
                a.kill()
    killed_at = time.monotonic()
    with httpx.stream(
        "GET", f"{b.url}{stream_path}", headers={"Last-Event-ID": str(seen[-1].id)}, timeout=60
    ) as r:
        rest = list(events(r))
    # Each attempt's events without a gap, in order; the second numbers from its own base.
    ids = [e.id for e in seen + rest]
    first, second = [i for i in ids if i < first_seq(2)], [i for i in ids if i >= first_seq(2)]
    assert first + second == ids
    assert first == list(range(1, len(first) + 1))
    assert second == list(range(first_seq(2), first_seq(2) + len(second)))
    assert rest[-1].event == "end"
    restarted = [e for e in rest if e.event == "metadata"]
    assert restarted and restarted[0].data["attempt"] == 2
    assert restarted[0].id == first_seq(2)
    assert any(e.event == "updates" and "reply" in e.data for e in rest)
    assert time.monotonic() - killed_at < 2 + 3 + 15
    run = httpx.get(f"{b.url}{stream_path.removesuffix('/stream')}").json()
    assert run["status"] == "success"


def test_cancel_from_another_replica(replicas: Replicas) -> None:
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    run = httpx.post(f"{a.url}/threads/{tid}/runs", json=_body("look up slowly 60")).json()
    assert run["status"] in ("pending", "running")
    run_url = f"/threads/{tid}/runs/{run['run_id']}"
    deadline = time.monotonic() + 20
    while httpx.get(f"{b.url}/threads/{tid}/state").json()["next"] != ["act"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(f"{b.url}{run_url}").json()["replica"] == "a"
    started = time.monotonic()
    r = httpx.post(f"{b.url}{run_url}/cancel?wait=1&action=interrupt", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "interrupted"
    assert time.monotonic() - started < 5
    state = httpx.get(f"{b.url}/threads/{tid}/state").json()
    assert state["next"] == ["act"]  # interrupt keeps the completed plan step
    assert httpx.get(f"{a.url}/threads/{tid}").json()["status"] == "interrupted"
    nothing = httpx.post(f"{b.url}/runs/cancel", json={"thread_id": tid})
    assert nothing.status_code == 404


def test_errors_heartbeats_and_cancel_on_disconnect(replicas: Replicas) -> None:
    a = replicas("a").start()
    tid = httpx.post(f"{a.url}/threads", json={}).json()["thread_id"]
    failing = _body("what is 2+2", config={"recursion_limit": 1})
    _, got = _stream(a.url, tid, failing)
    assert [e.event for e in got][-2:] == ["error", "end"]
    assert got[-2].data["error"] == "GraphRecursionError"

    with httpx.stream(
        "POST", f"{a.url}/threads/{tid}/runs/stream", json=_body("look up slowly 6"), timeout=60
    ) as r:
        raw = r.read().decode()
    assert ": heartbeat\r\n" in raw

    body = _body("look up slowly 60", stream_mode=["custom"], on_disconnect="cancel")
    with httpx.stream("POST", f"{a.url}/threads/{tid}/runs/stream", json=body, timeout=60) as r:
        run_path = r.headers["content-location"]
        for event in events(r):
            if event.event == "custom":
                break  # hang up while the run waits in its tool
    deadline = time.monotonic() + 20
    while httpx.get(f"{a.url}{run_path}").json()["status"] != "interrupted":
        assert time.monotonic() < deadline, "disconnect did not cancel the run"
        time.sleep(0.05)
