"""No run is lost when replicas die or restart under load."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from tests.support.load import Conversation, Fleet, new_conversations, run_load
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

Replicas = Callable[..., ServiceProcess]
Trio = tuple[ServiceProcess, ServiceProcess, ServiceProcess]


@pytest.fixture
def three_replicas(replicas: Replicas) -> Callable[..., Trio]:
    """Starts replicas a, b and c with the given environment (a migrates the database)."""

    def start(**env: str) -> Trio:
        a = replicas("a", **env).start()
        return (
            a,
            replicas("b", **env).start(migrate=False),
            replicas("c", **env).start(migrate=False),
        )

    return start


def _turns(turns: int, slow: float) -> Callable[[int], list[str]]:
    """Turns of conversation i; every other turn waits in slow_lookup, so runs overlap kills."""

    def make(i: int) -> list[str]:
        return [
            f"conversation {i} turn {t}" + (f" look up slowly {slow}" if (i + t) % 2 else "")
            for t in range(1, turns + 1)
        ]

    return make


def _check(fleet: Fleet, conversations: list[Conversation]) -> None:
    base = fleet.urls()[0]
    for convo in conversations:
        runs = httpx.get(f"{base}/threads/{convo.thread_id}/runs?limit=100").json()
        assert sorted(r["run_id"] for r in runs) == sorted(convo.run_ids)
        assert {r["status"] for r in runs} == {"success"}, runs
        messages = httpx.get(f"{base}/threads/{convo.thread_id}/state").json()["values"]["messages"]
        humans = [m["content"] for m in messages if m["type"] == "human"]
        assert humans == convo.texts
        replies = [m for m in messages if m["type"] == "ai" and not m.get("tool_calls")]
        assert len(replies) == len(convo.texts)
        for turn, reply in enumerate(replies, start=1):
            assert f"Turn {turn}." in reply["content"]


def test_sigkill_twice_under_load_loses_nothing(three_replicas: Callable[..., Trio]) -> None:
    a, b, c = three_replicas(THREADKEEPER_LEASE_SECONDS="3", THREADKEEPER_LOG_LEVEL="debug")
    fleet = Fleet([a, b, c])
    conversations = new_conversations(fleet, 30, _turns(5, 1.5))
    for i, convo in enumerate(conversations):
        convo.more = lambda t, i=i: _turns(t, 1.5)(i)[-1]
    failures: list[BaseException] = []

    def chaos() -> None:
        try:
            for _ in range(2):
                c.wait_for_runs(1)
                c.kill()
                time.sleep(1.0)  # let its leases age a little before it returns
                c.start(migrate=False)
        except BaseException as exc:  # surfaced after the load
            failures.append(exc)

    killer = threading.Thread(target=chaos)
    killer.start()
    try:
        # Conversations keep talking until both kills have landed on a busy replica.
        run_load(fleet, conversations, workers=30, keep_going=killer.is_alive)
    finally:
        killer.join()
    assert not failures, failures
    _check(fleet, conversations)

    # Each task whose writes were saved ran once: a finished node never ran again.
    saved = Counter()
    for replica in (a, b, c):
        for line in replica.logs().splitlines():
            if '"task_writes_saved"' in line:
                event = json.loads(line)
                saved[(event["thread_id"], event["task_id"])] += 1
    assert saved
    assert [k for k, n in saved.items() if n > 1] == []
    resumed = sum(r.logs().count('"run_resuming"') for r in (a, b))
    assert resumed > 0, "the kills never hit a running run"
    # Every attempt, also those stopped by a lost lease, gave its connections back.
    for replica in (a, b):
        assert replica.gauge("threadkeeper_runs_in_flight") == 0
        assert replica.gauge("threadkeeper_db_pool_in_use") == 0, replica.name


def test_rolling_restart_under_load_fails_no_run(three_replicas: Callable[..., Trio]) -> None:
    a, b, c = three_replicas(THREADKEEPER_LEASE_SECONDS="3", THREADKEEPER_DRAIN_SECONDS="1")
    fleet = Fleet([a, b, c])
    conversations = new_conversations(fleet, 12, _turns(3, 2))
    for i, convo in enumerate(conversations):
        convo.more = lambda t, i=i: _turns(t, 2)(i)[-1]
    failures: list[BaseException] = []
    codes: list[int | None] = []

    def roll() -> None:
        try:
            for replica in (a, b, c):
                replica.wait_for_runs(1)
                codes.append(replica.terminate(timeout=60))
                replica.start(migrate=False)
        except BaseException as exc:
            failures.append(exc)

    roller = threading.Thread(target=roll)
    roller.start()
    try:
        # Conversations keep talking until every replica has been restarted.
        run_load(fleet, conversations, workers=12, keep_going=roller.is_alive)
    finally:
        roller.join()
    assert not failures, failures
    # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
    assert codes == [-15, -15, -15]
    for replica in (a, b, c):
        assert replica.logs().count('"service_stopped"') == 1
    _check(fleet, conversations)


def test_sigterm_hands_back_an_unfinished_run(replicas: Replicas) -> None:
    env = {"THREADKEEPER_DRAIN_SECONDS": "0.5"}
    a = replicas("a", **env).start()
    b = replicas("b", **env).start(migrate=False)
    tid = httpx.post(f"{b.url}/threads", json={}).json()["thread_id"]
    run = httpx.post(
        f"{a.url}/threads/{tid}/runs",
        json={
            "assistant_id": "agent",
            "input": {"messages": [{"role": "user", "content": "look up slowly 8"}]},
        },
    ).json()
    a.wait_for_runs(1)
    a.terminate(timeout=60)
    assert '"run_handed_back"' in a.logs()
    joined = httpx.get(f"{b.url}/threads/{tid}/runs/{run['run_id']}/join", timeout=60)
    assert "looked up slowly for 8s" in joined.text
    done = httpx.get(f"{b.url}/threads/{tid}/runs/{run['run_id']}").json()
    assert done["status"] == "success"
    assert done["replica"] == "b"
