"""Benchmark 9: failover, from SIGKILL of the executing replica to the run's next event elsewhere.

Two replicas with a short lease (``THREADKEEPER_LEASE_SECONDS``) and a short poll interval
(``THREADKEEPER_POLL_SECONDS``, how often idle workers look for expired leases) so that each
repetition takes seconds. A run is created on the executing replica; its act node waits in
``slow_lookup``. A client follows the run's stream from the other replica; as soon as the tool's
``custom`` "started" event reaches it (the run is executing, inside the act node), the executing
replica is SIGKILLed. The figure is the time from the kill to the arrival, at that client, of the
resumed attempt's first event (its ``metadata`` event, ``attempt`` 2): lease expiry, the other
replica's next look for expired leases, the claim, the attempt's start and the event path.
The kill lands a fraction of a second after the attempt claimed its lease (renewed every third
of the lease), so nearly the whole lease has to run out: close to the worst case. A kill at a
random moment would wait about lease * 5/6 on average.

Each repetition then checks that the run completes on the surviving replica: ``end`` with no
``error`` on the stream, status ``success``, attempt 2, executed by the survivor. The killed
replica is restarted once the run has been claimed (not before, so the survivor is the only
candidate) and the two swap roles for the next repetition. Before each repetition the survivor
serves one short run, as a replica taking over in production would be warm.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
import structlog

from tests.perf import servers
from tests.perf.bench_streaming import logs_on_failure, post_json, run_body, sse_events
from tests.perf.harness import Bench, Row, alone
from tests.support.processes import ServiceProcess

NAME = "9. failover"

LEASE_SECONDS = 3.0
POLL_SECONDS = 0.25
LOOKUP_SECONDS = 1.0
MODES = ["custom", "updates"]
STREAM_TIMEOUT = 60.0
GOAL_MARGIN_SECONDS = 2.0

log = structlog.get_logger("bench")


class FailoverError(RuntimeError):
    pass


async def warm(http: httpx.AsyncClient, replica: ServiceProcess) -> None:
    """One short run on the replica, so the takeover is not its first run since start."""
    thread = await post_json(http, f"{replica.url}/threads", {})
    await post_json(
        http, f"{replica.url}/threads/{thread['thread_id']}/runs/wait", run_body("hello", [])
    )


async def follow_through_kill(
    http: httpx.AsyncClient,
    run_path: str,
    executing: ServiceProcess,
    survivor: ServiceProcess,
    on_resumed: Callable[[], None],
) -> tuple[float, float, int, list[tuple[str, Any]]]:
    """Follow the run from the survivor, kill the executing replica once the tool started.

    Returns when the kill happened, when the resumed attempt's first event arrived (monotonic),
    how many events of the dead attempt arrived in between, and every event.
    """
    killed_at: float | None = None
    resumed_at: float | None = None
    stale = 0
    events: list[tuple[str, Any]] = []
    async with http.stream("GET", f"{survivor.url}{run_path}/stream") as r:
        if r.status_code != 200:
            await r.aread()
            raise FailoverError(f"GET stream: {r.status_code} {r.text[:300]}")
        async for event in sse_events(r):
            events.append((event.event, event.data))
            if event.event == "end":
                break
            if killed_at is None:
                if event.event == "custom" and event.data.get("status") == "started":
                    row = (await http.get(f"{survivor.url}{run_path}")).json()
                    if row["replica"] != executing.name or row["status"] != "running":
                        raise FailoverError(f"not running on {executing.name}: {row}")
                    killed_at = time.monotonic()
                    executing.kill()
            elif resumed_at is None:
                if event.event == "metadata" and event.data.get("attempt", 1) >= 2:
                    resumed_at = event.at_monotonic
                    on_resumed()
                else:
                    stale += 1
    if killed_at is None or resumed_at is None:
        raise FailoverError(f"the stream ended without a kill and a resumed attempt: {events}")
    return killed_at, resumed_at, stale, events


async def repetition(
    http: httpx.AsyncClient, executing: ServiceProcess, survivor: ServiceProcess, restart: bool
) -> tuple[float, asyncio.Task[ServiceProcess] | None]:
    """Seconds from the kill to the resumed attempt's first event, and the dead one's restart.

    The restart begins once the survivor has claimed the run (so it cannot take the run) and
    overlaps the rest of the run.
    """
    await warm(http, survivor)
    thread = await post_json(http, f"{executing.url}/threads", {})
    tid = thread["thread_id"]
    body = run_body(f"look up slowly {LOOKUP_SECONDS:g}", MODES)
    run = await post_json(http, f"{executing.url}/threads/{tid}/runs", body)
    run_path = f"/threads/{tid}/runs/{run['run_id']}"
    restarting: list[asyncio.Task[ServiceProcess]] = []

    def resumed() -> None:
        if restart:
            restarting.append(
                asyncio.create_task(asyncio.to_thread(executing.start, migrate=False))
            )

    try:
        killed_at, resumed_at, stale, events = await follow_through_kill(
            http, run_path, executing, survivor, resumed
        )
        if any(name == "error" for name, _ in events) or events[-1][0] != "end":
            raise FailoverError(f"the run did not end well: {events}")
        # The end event is written just before the run's status: join waits for the status.
        joined = await http.get(f"{survivor.url}{run_path}/join")
        if joined.status_code != 200:
            raise FailoverError(f"join: {joined.status_code} {joined.text[:300]}")
        row = (await http.get(f"{survivor.url}{run_path}")).json()
        if (row["status"], row["attempt"], row["replica"]) != ("success", 2, survivor.name):
            raise FailoverError(f"unexpected end: {row}")
    except BaseException:
        # Let a restart in flight finish, so that the exit stack kills what it started.
        await asyncio.gather(*restarting, return_exceptions=True)
        raise
    seconds = resumed_at - killed_at
    log.info("failover_repetition", seconds=round(seconds, 3), stale_events=stale)
    return seconds, restarting[0] if restarting else None


async def run(bench: Bench) -> list[Row]:
    env = {
        "THREADKEEPER_LEASE_SECONDS": f"{LEASE_SECONDS:g}",
        "THREADKEEPER_POLL_SECONDS": f"{POLL_SECONDS:g}",
    }
    # A repetition costs a replica restart (seconds of imports): quick mode keeps to two.
    repetitions = bench.size(bench.repetitions, 2)
    samples: list[float] = []
    load_before = os.getloadavg()
    with ExitStack() as stack:
        db_url = stack.enter_context(bench.database())
        a = stack.enter_context(servers.ours(db_url, bench.work, name="a", **env))
        b = stack.enter_context(servers.ours(db_url, bench.work, name="b", **env))
        stack.enter_context(logs_on_failure(a, b))
        a.start(wait=False)
        b.start(migrate=False, wait=False)
        began = time.monotonic()
        await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
        log.info("failover_replicas_ready", seconds=round(time.monotonic() - began, 2))
        executing, survivor = a, b
        async with httpx.AsyncClient(timeout=STREAM_TIMEOUT) as http:
            for rep in range(repetitions):
                last = rep == repetitions - 1
                seconds, restarting = await repetition(http, executing, survivor, not last)
                samples.append(seconds)
                if restarting is not None:
                    began = time.monotonic()
                    await restarting
                    log.info("failover_restarted", waited=round(time.monotonic() - began, 2))
                    executing, survivor = survivor, executing

    goal = LEASE_SECONDS + GOAL_MARGIN_SECONDS
    details = {
        "lease_seconds": LEASE_SECONDS,
        "poll_seconds": POLL_SECONDS,
        "max_seconds": round(max(samples), 3),
        "samples": [round(s, 3) for s in samples],
        "load_average": [
            [round(x, 2) for x in load_before],
            [round(x, 2) for x in os.getloadavg()],
        ],
    }
    return [
        alone(
            NAME, "SIGKILL -> next event on the other replica", "s", samples,
            goal=f"< lease + {GOAL_MARGIN_SECONDS:g} s ({goal:g} s)",
            goal_check=lambda v: v < goal, details=details,
        )
    ]  # fmt: skip
