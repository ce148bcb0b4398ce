"""The database goes away under a running service and comes back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.postgres import RestartableServer
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow


def _talk(base: str, tid: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{base}/threads/{tid}/runs/wait",
        json={"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}},
        timeout=30,
    )


def test_503_while_down_then_recovers_without_restart(tmp_path: Path) -> None:
    db = RestartableServer()
    service = ServiceProcess(db.url, tmp_path, "outage", THREADKEEPER_POOL_TIMEOUT="2")
    try:
        service.start()
        tid = httpx.post(f"{service.url}/threads", json={}).json()["thread_id"]
        assert _talk(service.url, tid, "before the outage").status_code == 200

        db.stop()
        r = httpx.post(f"{service.url}/threads/search", json={}, timeout=30)
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"]
        assert _talk(service.url, tid, "during").status_code == 503
        assert httpx.get(f"{service.url}/readyz", timeout=30).status_code == 503
        assert httpx.get(f"{service.url}/healthz").status_code == 200

        db.start()
        deadline = time.monotonic() + 60
        while httpx.get(f"{service.url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "service did not recover"
            time.sleep(0.2)
        r = _talk(service.url, tid, "after the outage")
        assert r.status_code == 200, r.text
        reply = r.json()["messages"][-1]["content"]
        assert "Turn 2." in reply
        assert "before the outage" in reply
        assert service.proc is not None and service.proc.poll() is None
    finally:
        service.kill()
        db.cleanup()
