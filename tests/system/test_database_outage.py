"""The database goes away under a running service and comes back."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.postgres import RestartableServer
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow


def _talk(base: str, tid: str, text: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(
        f"{base}/threads/{tid}/runs/wait",
        json={"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}},
        timeout=timeout,
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


def test_a_wait_across_an_outage_longer_than_the_lease_gets_the_runs_real_end(
    tmp_path: Path,
) -> None:
    """Regression: the attempt that lost its lease in the outage answered the wait with
    ``__error__: LeaseLost``, though the run was resumed after the outage and succeeded."""
    db = RestartableServer()
    lease = 1.5
    service = ServiceProcess(
        db.url,
        tmp_path,
        "blip",
        THREADKEEPER_POOL_TIMEOUT="1",
        THREADKEEPER_LEASE_SECONDS=str(lease),
    )
    try:
        service.start()
        tid = httpx.post(f"{service.url}/threads", json={}).json()["thread_id"]
        with ThreadPoolExecutor(max_workers=1) as waiter:
            # The tool outlasts the outage: the attempt is still running when the database
            # is back, and only then learns that its lease is gone.
            waited = waiter.submit(_talk, service.url, tid, "please look up slowly 8", 90)
            service.wait_for_runs(1)
            db.stop()
            time.sleep(2 * lease)  # the outage itself: longer than the lease
            db.start()
            r = waited.result(timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert "__error__" not in body, body
        assert "looked up slowly for 8s" in body["messages"][-1]["content"]
        (run,) = httpx.get(f"{service.url}/threads/{tid}/runs").json()
        assert run["status"] == "success"
        assert '"lease_lost"' in service.logs()  # the outage did take the run from the attempt
    finally:
        service.kill()
        db.cleanup()
