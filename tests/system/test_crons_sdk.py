"""Crons through langgraph-sdk, unchanged, on real service processes of one database.

Time is driven through the database: a tick is made due by moving the cron's ``next_run_date``
back (which is what the passing of time does to a stored cron), or by a per-second schedule;
waits poll for the awaited state with a deadline, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

Replicas = Callable[..., ServiceProcess]
FAST = {"THREADKEEPER_CRON_POLL_SECONDS": "0.1", "THREADKEEPER_POLL_SECONDS": "0.2"}
HEADER_AUTH = {"THREADKEEPER_AUTH": "header", **FAST}
DEADLINE = 60.0


def _say(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _as(replica: ServiceProcess, user: str) -> LangGraphClient:
    return get_client(url=replica.url, api_key=None, headers={"X-Forwarded-User": user})


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _make_due(database_url: str, cron_id: str, ago: timedelta = timedelta(0)) -> None:
    """The cron's next tick is now minus ``ago``, as if that much time had passed."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE crons SET next_run_date = now() - %s WHERE cron_id = %s", (ago, cron_id)
        )


def _fired(*replicas: ServiceProcess) -> list[dict[str, Any]]:
    """Every ``cron_fired`` event the replicas logged."""
    events = []
    for replica in replicas:
        for line in replica.logs().splitlines():
            if '"cron_fired"' in line:
                events.append(json.loads(line))
    return events


def _fired_for(cron_id: str, *replicas: ServiceProcess) -> list[dict[str, Any]]:
    return [e for e in _fired(*replicas) if e["cron_id"] == cron_id]


def _problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail: str = response.json()["detail"]
    return detail


async def test_crons_crud_owner_scoped_and_refused(replicas: Replicas) -> None:
    a = replicas("a", **HEADER_AUTH).start()
    ann, bob = _as(a, "ann"), _as(a, "bob")
    thread = await ann.threads.create()
    tid = thread["thread_id"]

    on_thread = await ann.crons.create_for_thread(
        tid, "agent", schedule="0 9 * * 1", input=_say("weekly"), timezone="Europe/Paris"
    )
    assert on_thread["thread_id"] == tid
    assert on_thread["schedule"] == "0 9 * * 1"
    assert on_thread["payload"]["input"] == _say("weekly")
    assert on_thread["on_run_completed"] is None and on_thread["enabled"] is True
    # The next Monday 09:00 in Paris.
    upcoming = datetime.fromisoformat(on_thread["next_run_date"])
    paris = upcoming.astimezone(ZoneInfo("Europe/Paris"))
    assert (paris.weekday(), paris.hour, paris.minute) == (0, 9, 0)
    assert upcoming > datetime.now(UTC)

    end = datetime.now(UTC) + timedelta(days=30)
    stateless = await ann.crons.create(
        "agent", schedule="*/5 * * * *", input=_say("hi"), metadata={"team": "x"}, end_time=end
    )
    assert stateless["thread_id"] is None
    assert stateless["on_run_completed"] == "delete"
    assert datetime.fromisoformat(stateless["end_time"]) == end

    assert await ann.crons.count() == 2
    assert await ann.crons.count(thread_id=tid) == 1
    assert await ann.crons.count(metadata={"team": "x"}) == 1
    assert await ann.crons.count(assistant_id="agent") == 2
    assert await ann.crons.count(assistant_id=str(uuid.uuid4())) == 0
    found = await ann.crons.search(sort_by="created_at", sort_order="asc")
    assert [c["cron_id"] for c in found] == [on_thread["cron_id"], stateless["cron_id"]]
    picked = await ann.crons.search(thread_id=tid, select=["cron_id", "schedule", "now"])
    assert set(picked[0]) == {"cron_id", "schedule", "now"}

    # Another owner sees none of it, and changes none of it.
    assert await bob.crons.count() == 0
    assert await bob.crons.search() == []
    async with httpx.AsyncClient(base_url=a.url, headers={"X-Forwarded-User": "bob"}) as raw:
        for method, path in (
            ("PATCH", f"/runs/crons/{on_thread['cron_id']}"),
            ("DELETE", f"/runs/crons/{on_thread['cron_id']}"),
            ("GET", f"/runs/crons/{on_thread['cron_id']}"),
        ):
            body = {"enabled": False} if method == "PATCH" else None
            _problem(await raw.request(method, path, json=body), 404)
        # Nor may bob put a cron on ann's thread.
        made = await raw.post(
            f"/threads/{tid}/runs/crons", json={"assistant_id": "agent", "schedule": "* * * * *"}
        )
        _problem(made, 404)

    updated = await ann.crons.update(
        stateless["cron_id"], schedule="0 12 * * *", enabled=False, end_time=None
    )
    assert updated["schedule"] == "0 12 * * *"
    assert updated["enabled"] is False
    assert updated["end_time"] is None
    assert datetime.fromisoformat(updated["next_run_date"]).hour == 12
    assert await ann.crons.count() == 2
    assert len(await ann.crons.search(enabled=False)) == 1

    await ann.crons.delete(stateless["cron_id"])
    assert await ann.crons.count() == 1
    # Deleting the thread deletes its crons.
    await ann.threads.delete(tid)
    assert await ann.crons.count() == 0


async def test_cron_failure_paths(replicas: Replicas) -> None:
    a = replicas("a").start()
    client = get_client(url=a.url, api_key=None)
    tid = (await client.threads.create())["thread_id"]
    cron = await client.crons.create_for_thread(tid, "agent", schedule="* * * * *")
    async with httpx.AsyncClient(base_url=a.url) as raw:
        missing = str(uuid.uuid4())
        _problem(
            await raw.post("/runs/crons", json={"assistant_id": missing, "schedule": "* * * * *"}),
            404,
        )
        _problem(
            await raw.post(
                f"/threads/{missing}/runs/crons",
                json={"assistant_id": "agent", "schedule": "* * * * *"},
            ),
            404,
        )
        _problem(await raw.patch(f"/runs/crons/{missing}", json={"enabled": False}), 404)
        _problem(await raw.delete(f"/runs/crons/{missing}"), 404)
        _problem(await raw.get("/runs/crons/not-a-uuid"), 422)
        _problem(await raw.patch(f"/runs/crons/{cron['cron_id']}", json={}), 400)
        says = _problem(
            await raw.patch(f"/runs/crons/{cron['cron_id']}", json={"on_run_completed": "keep"}),
            422,
        )
        assert "stateless" in says
        _problem(
            await raw.patch(f"/runs/crons/{cron['cron_id']}", json={"timezone": "Nowhere/X"}), 422
        )
        says = _problem(
            await raw.patch(f"/runs/crons/{cron['cron_id']}", json={"stream_mode": "bogus"}), 422
        )
        assert "bogus" in says
        # A cron whose end time has passed waits for no tick.
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        ended = await raw.post(
            "/runs/crons", json={"assistant_id": "agent", "schedule": "* * * * *", "end_time": past}
        )
        assert ended.json()["next_run_date"] is None
        says = _problem(await raw.post("/runs/crons/search", json={"assistant_id": "nope"}), 422)
        assert "assistant_id" in says
        # Nothing was changed by the refused requests.
        kept = (await raw.get(f"/runs/crons/{cron['cron_id']}")).json()
        assert kept["timezone"] is None and kept["enabled"] is True


async def test_each_tick_fires_once_across_three_replicas(replicas: Replicas) -> None:
    """Three replicas look for due crons ten times a second; a per-second cron fires each of its
    ticks once, in one run each, whichever replica fires it."""
    started = [replicas(name, **FAST).start(wait=False) for name in ("a", "b", "c")]
    for replica in started:
        replica.wait_ready()
    client = get_client(url=started[0].url, api_key=None)
    tid = (await client.threads.create())["thread_id"]
    cron = await client.crons.create_for_thread(
        tid, "agent", schedule="* * * * * *", input=_say("tick"), multitask_strategy="enqueue"
    )
    ticks = 6

    async def enough() -> bool:
        return len(await client.runs.list(tid, limit=100)) >= ticks

    await _until(enough, f"{ticks} cron runs")
    await client.crons.update(cron["cron_id"], enabled=False)
    runs = await client.runs.list(tid, limit=100)
    fired = _fired_for(cron["cron_id"], *started)
    tick_times = [e["tick"] for e in fired]
    assert len(tick_times) == len(set(tick_times)), f"a tick fired twice: {sorted(tick_times)}"
    assert sorted(e["run_id"] for e in fired) == sorted(r["run_id"] for r in runs)
    assert all(r["metadata"]["cron_id"] == cron["cron_id"] for r in runs)
    # Every run is a turn on the thread, one after another.
    await _until(
        lambda: _all_ended(client, tid),
        "the cron's runs to end",
    )
    state = await client.threads.get_state(tid)
    assert len(state["values"]["messages"]) == 2 * len(runs)


async def _all_ended(client: LangGraphClient, tid: str) -> bool:
    runs = await client.runs.list(tid, limit=100)
    return all(r["status"] == "success" for r in runs)


async def test_missed_ticks_fire_once_on_recovery(replicas: Replicas, database_url: str) -> None:
    """Five daily ticks pass while no replica runs: the first replica back fires one run, and
    the cron waits for its next tick after now."""
    a = replicas("a", **FAST).start()
    client = get_client(url=a.url, api_key=None)
    tid = (await client.threads.create())["thread_id"]
    cron = await client.crons.create_for_thread(
        tid, "agent", schedule="0 0 * * *", input=_say("daily")
    )
    a.terminate()
    _make_due(database_url, cron["cron_id"], ago=timedelta(days=5, minutes=1))

    b = replicas("b", **FAST).start(migrate=False)
    client = get_client(url=b.url, api_key=None)

    async def one_run() -> list[Any]:
        return await client.runs.list(tid)

    runs = await _until(one_run, "the recovered tick's run")
    [after] = await client.crons.search(thread_id=tid)
    assert datetime.fromisoformat(after["next_run_date"]) > datetime.now(UTC)
    # Fired once: with the next tick in the future, no more runs come of the missed ones.
    assert len(runs) == 1
    assert len(_fired_for(cron["cron_id"], a, b)) == 1


async def test_stateless_crons_keep_or_delete_their_threads(
    replicas: Replicas, database_url: str
) -> None:
    a = replicas("a", **FAST).start()
    b = replicas("b", **FAST).start(migrate=False)
    client = get_client(url=a.url, api_key=None)
    keep = await client.crons.create(
        "agent", schedule="0 0 1 1 *", input=_say("kept"), on_run_completed="keep"
    )
    drop = await client.crons.create("agent", schedule="0 0 1 1 *", input=_say("dropped"))
    for cron in (keep, drop):
        _make_due(database_url, cron["cron_id"])

    async def kept_thread() -> list[Any]:
        found = await client.threads.search(metadata={"cron_id": keep["cron_id"]})
        return [t for t in found if t["status"] == "idle"]

    [thread] = await _until(kept_thread, "the kept cron's thread, idle after its run")
    [run] = await client.runs.list(thread["thread_id"])
    assert run["status"] == "success"
    said = json.dumps((await client.threads.get_state(thread["thread_id"]))["values"])
    assert "kept" in said and "dropped" not in said

    [event] = await _until(_wrap(lambda: _fired_for(drop["cron_id"], a, b)), "the dropped tick")
    assert event["run_id"] is not None

    async def gone() -> bool:
        left = await client.threads.search(metadata={"cron_id": drop["cron_id"]})
        deleted = any('"cron_thread_deleted"' in r.logs() for r in (a, b))
        return not left and deleted

    await _until(gone, "the dropped cron's thread to be deleted")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM cron_threads").fetchone() == (0,)
    # Each stateless cron fired once, each on its own new thread.
    assert await client.crons.count() == 2


def _wrap(check: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return check()

    return run


async def test_cron_runs_follow_the_threads_multitask_rules(
    replicas: Replicas, database_url: str
) -> None:
    """A ``reject`` cron's tick on a busy thread queues nothing (and is spent); an ``enqueue``
    cron's run waits for the thread's run to end."""
    a = replicas("a", **FAST).start()
    client = get_client(url=a.url, api_key=None)
    tid = (await client.threads.create())["thread_id"]
    busy = await client.runs.create(tid, "agent", input=_say("please look up slowly 30"))
    await _until(lambda: _status(client, tid, busy["run_id"], "running"), "the slow run")
    reject = await client.crons.create_for_thread(
        tid, "agent", schedule="0 0 1 1 *", input=_say("rejected"), multitask_strategy="reject"
    )
    enqueue = await client.crons.create_for_thread(
        tid, "agent", schedule="0 0 1 1 *", input=_say("queued"), multitask_strategy="enqueue"
    )
    _make_due(database_url, reject["cron_id"])

    await _until(_wrap(lambda: _fired_for(reject["cron_id"], a)), "the rejected tick")
    [event] = [e for e in _fired(a) if e["cron_id"] == reject["cron_id"]]
    assert event["run_id"] is None
    assert '"cron_tick_skipped"' in a.logs()
    assert [r["run_id"] for r in await client.runs.list(tid)] == [busy["run_id"]]

    _make_due(database_url, enqueue["cron_id"])

    async def queued() -> list[Any]:
        return [r for r in await client.runs.list(tid) if r["run_id"] != busy["run_id"]]

    [waiting] = await _until(queued, "the enqueued cron run")
    assert waiting["status"] == "pending"
    assert (await client.runs.get(tid, busy["run_id"]))["status"] == "running"
    await client.runs.cancel(tid, busy["run_id"])
    await _until(lambda: _status(client, tid, waiting["run_id"], "success"), "the cron run")


async def _status(client: LangGraphClient, tid: str, run_id: str, status: str) -> bool:
    return bool((await client.runs.get(tid, run_id))["status"] == status)


async def test_a_stateless_threads_deletion_survives_the_replica_that_ran_it(
    replicas: Replicas, database_url: str
) -> None:
    """The replica executing a ``delete`` cron's run dies mid-run: another resumes the run, and
    the thread is deleted after it all the same."""
    env = {**FAST, "THREADKEEPER_LEASE_SECONDS": "2"}
    a = replicas("a", **env).start()
    client = get_client(url=a.url, api_key=None)
    cron = await client.crons.create("agent", schedule="0 0 1 1 *", input=_say("look up slowly 5"))
    _make_due(database_url, cron["cron_id"])

    async def running() -> list[Any]:
        found = await client.threads.search(metadata={"cron_id": cron["cron_id"]})
        return [t for t in found if t["status"] == "busy"]

    [thread] = await _until(running, "the cron's run executing on a")
    tid = thread["thread_id"]
    a.kill()
    b = replicas("b", **env).start(migrate=False)
    client = get_client(url=b.url, api_key=None)

    def deleted() -> list[str]:
        lines = b.logs().splitlines()
        return [json.loads(x)["thread_id"] for x in lines if '"cron_thread_deleted"' in x]

    assert await _until(_wrap(deleted), "the thread's deletion by b") == [tid]
    assert await client.threads.search(metadata={"cron_id": cron["cron_id"]}) == []
    finished = [json.loads(line) for line in b.logs().splitlines() if '"run_finished"' in line]
    assert [(e["thread_id"], e["status"]) for e in finished] == [(tid, "success")]
