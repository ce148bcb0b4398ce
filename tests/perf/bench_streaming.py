"""Benchmark 8: cross-replica streaming: event latency, produced on a, received on b.

Two replicas on one database. Runs are created on replica a and execute there (b is started with
``THREADKEEPER_WORKERS=0``: it only serves HTTP, so it can never claim them); a client follows
each run's stream from b (``GET /threads/{tid}/runs/{rid}/stream``), and, for comparison, another
client follows the same run from a.

What "produced" means. An event is produced when the graph hands it to the executor. The
executor does not stamp events, but LangGraph does stamp one kind: every ``debug`` event carries
``timestamp``, the wall clock of the executing replica taken when LangGraph put the event on the
run's stream, an instant before ``EventWriter.emit``. Replicas and client share one host, so
that clock is the client's clock (``time.time()``, CLOCK_REALTIME). The latency of a ``debug``
event is therefore "arrival at the client on b minus its own timestamp": the whole path, the
write batching (``events.FLUSH_SECONDS``), the insert and its commit, the NOTIFY, b's read and
the SSE hop. Only those events are timed; the token events (``messages-tuple``, a burst per
model call) are streamed alongside them, so the timed events share the pipe with a token stream.
(Comparing with a client of replica a alone would hide everything but the last hop: both
replicas deliver from the table after the same NOTIFY.)

The details split the path: ``run_events.created_at`` (``now()``, the start of the inserting
transaction, on the same host's clock) gives produced -> inserted (batching, pool); a listener
on the events channel in this process gives the commit (a NOTIFY is delivered at commit):
inserted -> notified; then notified -> at b (b's wake-up, read, SSE, this client). They also
give, for every event (tokens included), the arrival at b minus the arrival of the same ``seq``
at the client on a: what following from another replica costs over following the executor.

Every timed event was produced while its clients were following: a repetition queues chains of
runs on fresh threads, each behind a blocker run (``look up slowly``) that holds the thread
until every stream of the chain is open on a and b, and is then cancelled with
``action=rollback``. The offline model is paced with ``THREADKEEPER_OFFLINE_LATENCY_MS`` per
call; each measured run asks for the calculator: two plan calls, a tool call, a streamed reply.

A stream must not close without its ``end`` event: ``events.follow`` reads the run's status
before its events, so an ending seen there has every event already. Should a stream be cut all
the same, the client rejoins with ``Last-Event-ID`` so the figures can go on;
``streams_cut_before_end`` counts it (it should stay 0), and events received after a rejoin are
not timed. (The SDK would not rejoin: it asks for the run's status, sees it ended, and ends the
stream without the missing events.)

``load_average`` in the details is the host's (1, 5, 15 minute) load before and after: the
figures are tail latencies on a small machine and move with its neighbours.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import psycopg
import structlog

from tests.perf import servers
from tests.perf.harness import Bench, Row, alone
from tests.support.processes import ServiceProcess

NAME = "8. cross-replica streaming"
EVENTS_CHANNEL = "threadkeeper_events"  # service.notify.EVENTS_CHANNEL

MODEL_LATENCY_MS = 20
MODES = ["debug", "messages-tuple"]
MEASURED_TEXT = "what is 6*7?"
BLOCKER_TEXT = "look up slowly 600"
CONNECT_TIMEOUT = 60.0
STREAM_TIMEOUT = 120.0
GOAL_P99_MS = 50.0

log = structlog.get_logger("bench")


@dataclass
class SseEvent:
    seq: int
    event: str
    data: Any
    at: float  # time.time() when the client had parsed it
    at_monotonic: float  # the same instant, time.monotonic()


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse an Agent Server SSE body as it arrives; heartbeats (comments) are skipped."""
    name, data, ident = "message", list[str](), 0
    buffer = ""
    async for chunk in response.aiter_text():
        at, at_monotonic = time.time(), time.monotonic()
        buffer += chunk
        while "\r\n" in buffer:
            line, buffer = buffer.split("\r\n", 1)
            if line == "":
                if data:
                    yield SseEvent(ident, name, json.loads("\n".join(data)), at, at_monotonic)
                name, data, ident = "message", [], 0
            elif line.startswith(":"):
                continue
            else:
                key, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if key == "event":
                    name = value
                elif key == "data":
                    data.append(value)
                elif key == "id":
                    ident = int(value)


@contextmanager
def logs_on_failure(*replicas: ServiceProcess) -> Iterator[None]:
    """The scratch folder goes away with the run: on a failure, log the replicas' last lines."""
    try:
        yield
    except BaseException:
        for replica in replicas:
            log.error("replica_log_tail", replica=replica.name, tail=replica.logs()[-3000:])
        raise


def run_body(text: str, modes: list[str]) -> dict[str, Any]:
    return {
        "assistant_id": "agent",
        "input": {"messages": [{"role": "user", "content": text}]},
        "stream_mode": modes,
    }


async def post_json(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await http.post(url, json=body)
    if r.status_code != 200:
        raise RuntimeError(f"POST {url}: {r.status_code} {r.text[:300]}")
    result: dict[str, Any] = r.json()
    return result


def percentile(values: list[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


@dataclass
class Followed:
    """What one client received from one run's stream."""

    connected_at: float = 0.0
    events: list[SseEvent] = field(default_factory=list)
    cuts: int = 0  # times the stream closed before its end event
    rejoined: set[int] = field(default_factory=set)  # seqs received after a rejoin

    def by_seq(self) -> dict[int, SseEvent]:
        return {e.seq: e for e in self.events}


MAX_CUTS = 3


async def follow(http: httpx.AsyncClient, url: str, connected: asyncio.Event) -> Followed:
    """Follow a stream until its ``end`` event; ``connected`` is set once the headers are in."""
    followed = Followed()
    while True:
        last = followed.events[-1].seq if followed.events else None
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        async with http.stream("GET", url, headers=headers, timeout=STREAM_TIMEOUT) as r:
            if r.status_code != 200:
                await r.aread()
                raise RuntimeError(f"GET {url}: {r.status_code} {r.text[:300]}")
            if not connected.is_set():
                followed.connected_at = time.time()
                connected.set()
            async for event in sse_events(r):
                followed.events.append(event)
                if followed.cuts:
                    followed.rejoined.add(event.seq)
                if event.event == "end":
                    return followed
        followed.cuts += 1
        log.warning("stream_cut_before_end", url=url, last_seq=last, cuts=followed.cuts)
        if followed.cuts > MAX_CUTS:
            raise RuntimeError(f"{url}: the stream keeps closing before its end event")


class NotifyProbe:
    """Listens on the events channel from its own thread: when each run's batches committed.

    A notification is sent inside the inserting transaction and delivered at its commit, so its
    arrival here (a third listener, like b's) splits "inserted -> at b" into the commit and what
    the replica does after the notification. The split is approximate: this thread needs the GIL
    to stamp a notification, and the streaming clients share it.
    """

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.seen: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="notify-probe", daemon=True)

    def __enter__(self) -> NotifyProbe:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the notify probe did not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _listen(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(f"LISTEN {EVENTS_CHANNEL}")
            self._ready.set()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=0.2):
                    self.seen.setdefault(note.payload, []).append(time.time())

    def committed(self, run_id: str, inserted_at: float) -> float | None:
        """The first notification of the run at or after its insert began."""
        times = self.seen.get(run_id, [])
        i = bisect.bisect_left(times, inserted_at)
        return times[i] if i < len(times) else None


@dataclass
class Sample:
    latency_ms: list[float] = field(default_factory=list)  # produced -> at b (debug events)
    to_insert_ms: list[float] = field(default_factory=list)  # produced -> created_at
    insert_to_notified_ms: list[float] = field(default_factory=list)  # created_at -> commit
    notified_to_b_ms: list[float] = field(default_factory=list)  # commit -> at b
    a_to_b_ms: list[float] = field(default_factory=list)  # at a -> at b, every event
    events: int = 0  # events each client received, all runs
    cuts: int = 0  # streams closed before their end event (a and b)
    untimed: int = 0  # debug events received after a rejoin, or produced before connecting

    def add(self, other: Sample) -> None:
        for name in ("latency_ms", "to_insert_ms", "insert_to_notified_ms", "notified_to_b_ms"):
            getattr(self, name).extend(getattr(other, name))
        self.a_to_b_ms.extend(other.a_to_b_ms)
        self.events += other.events
        self.cuts += other.cuts
        self.untimed += other.untimed


@dataclass(frozen=True)
class Setup:
    http: httpx.AsyncClient
    a: str
    b: str
    db_url: str
    probe: NotifyProbe


async def chain(s: Setup, runs: int) -> Sample:
    """A fresh thread: a blocker, ``runs`` measured runs queued behind it, followed on a and b."""
    tid = (await post_json(s.http, f"{s.a}/threads", {}))["thread_id"]
    blocker = await post_json(
        s.http, f"{s.a}/threads/{tid}/runs", run_body(BLOCKER_TEXT, ["custom"])
    )
    run_ids: list[str] = []
    for _ in range(runs):
        row = await post_json(s.http, f"{s.a}/threads/{tid}/runs", run_body(MEASURED_TEXT, MODES))
        run_ids.append(row["run_id"])
    connected = [asyncio.Event() for _ in range(2 * runs)]
    tasks: list[asyncio.Task[Followed]] = []
    for i, rid in enumerate(run_ids):
        for j, base in enumerate((s.b, s.a)):  # b at even indexes, a at odd ones
            url = f"{base}/threads/{tid}/runs/{rid}/stream"
            tasks.append(asyncio.create_task(follow(s.http, url, connected[2 * i + j])))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await asyncio.gather(*(c.wait() for c in connected))
        # Every stream is open: let the measured runs go.
        r = await s.http.post(
            f"{s.a}/threads/{tid}/runs/{blocker['run_id']}/cancel",
            params={"action": "rollback"},
        )
        if r.status_code != 202:
            raise RuntimeError(f"cancel the blocker: {r.status_code} {r.text[:300]}")
        followed = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async with await psycopg.AsyncConnection.connect(s.db_url) as conn:
        cur = await conn.execute(
            "SELECT run_id::text, seq, extract(epoch FROM created_at)::float8 FROM run_events"
            " WHERE run_id = ANY(%s::uuid[])",
            (run_ids,),
        )
        inserted = {(str(row[0]), int(row[1])): float(row[2]) for row in await cur.fetchall()}
    for rid in run_ids:
        row = (await s.http.get(f"{s.b}/threads/{tid}/runs/{rid}")).json()
        if (row["status"], row["replica"]) != ("success", "a"):
            raise RuntimeError(f"run {rid} ended {row['status']} on {row['replica']}")
    sample = Sample()
    for i, rid in enumerate(run_ids):
        sample.add(measure(rid, followed[2 * i], followed[2 * i + 1], inserted, s.probe))
    return sample


def measure(
    rid: str,
    at_b: Followed,
    at_a: Followed,
    inserted: dict[tuple[str, int], float],
    probe: NotifyProbe,
) -> Sample:
    b_seq, a_seq = at_b.by_seq(), at_a.by_seq()
    if sorted(b_seq) != sorted(a_seq) or sorted(b_seq) != list(range(1, len(b_seq) + 1)):
        raise RuntimeError(f"run {rid}: a and b did not both receive every event")
    if any(e.event == "error" for e in at_b.events):
        raise RuntimeError(f"run {rid} streamed an error")
    sample = Sample(events=len(at_b.events), cuts=at_a.cuts + at_b.cuts)
    for seq, event in b_seq.items():
        if seq not in at_a.rejoined and seq not in at_b.rejoined:
            sample.a_to_b_ms.append((event.at - a_seq[seq].at) * 1000)
        if event.event != "debug":
            continue
        produced = datetime.fromisoformat(event.data["timestamp"]).timestamp()
        if produced < at_b.connected_at or seq in at_b.rejoined:
            sample.untimed += 1
            continue
        sample.latency_ms.append((event.at - produced) * 1000)
        sample.to_insert_ms.append((inserted[(rid, seq)] - produced) * 1000)
        committed = probe.committed(rid, inserted[(rid, seq)])
        if committed is not None:
            sample.insert_to_notified_ms.append((committed - inserted[(rid, seq)]) * 1000)
            sample.notified_to_b_ms.append((event.at - committed) * 1000)
    return sample


async def repetition(s: Setup, chains: int, runs: int) -> Sample:
    began = time.monotonic()
    sample = Sample()
    for _ in range(chains):
        sample.add(await chain(s, runs))
    if not sample.latency_ms:
        raise RuntimeError("no timed events")
    log.info(
        "streaming_repetition",
        runs=chains * runs,
        seconds=round(time.monotonic() - began, 2),
        p50_ms=round(percentile(sample.latency_ms, 50), 2),
        p99_ms=round(percentile(sample.latency_ms, 99), 2),
        cuts=sample.cuts,
    )
    return sample


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 50), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
    }


async def run(bench: Bench) -> list[Row]:
    chains = bench.size(3, 1)
    runs = bench.size(10, 5)
    env = {"THREADKEEPER_OFFLINE_LATENCY_MS": str(MODEL_LATENCY_MS)}
    load_before = os.getloadavg()
    with ExitStack() as stack:
        db_url = stack.enter_context(bench.database())
        a = stack.enter_context(servers.ours(db_url, bench.work, name="a", **env))
        b = stack.enter_context(
            servers.ours(db_url, bench.work, name="b", THREADKEEPER_WORKERS="0", **env)
        )
        stack.enter_context(logs_on_failure(a, b))
        a.start(wait=False)
        b.start(migrate=False, wait=False)
        await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
        probe = stack.enter_context(NotifyProbe(db_url))
        limits = httpx.Limits(max_connections=4 * runs + 16, max_keepalive_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=STREAM_TIMEOUT) as http:
            setup = Setup(http, a.url, b.url, db_url, probe)
            # One untimed chain: imports, pools and caches warm up before anything counts.
            await chain(setup, 2)
            reps = [await repetition(setup, chains, runs) for _ in range(bench.repetitions)]

    p50 = [percentile(r.latency_ms, 50) for r in reps]
    p99 = [percentile(r.latency_ms, 99) for r in reps]
    details: dict[str, Any] = {
        "runs_per_repetition": chains * runs,
        "events_per_repetition": [r.events for r in reps],
        "timed_events_per_repetition": [len(r.latency_ms) for r in reps],
        "untimed_debug_events": sum(r.untimed for r in reps),
        "streams_cut_before_end": sum(r.cuts for r in reps),
        "model_latency_ms": MODEL_LATENCY_MS,
        "stream_modes": MODES,
        "load_average": [
            [round(x, 2) for x in load_before],
            [round(x, 2) for x in os.getloadavg()],
        ],
        "all_timed_ms": _ms([x for r in reps for x in r.latency_ms]),
        "produced_to_inserted_ms": _ms([x for r in reps for x in r.to_insert_ms]),
        "inserted_to_notified_ms": _ms([x for r in reps for x in r.insert_to_notified_ms]),
        "notified_to_b_ms": _ms([x for r in reps for x in r.notified_to_b_ms]),
        "at_a_to_at_b_ms": _ms([x for r in reps for x in r.a_to_b_ms]),
    }
    return [
        alone(NAME, "event latency a->b p50", "ms", p50, details=details),
        alone(
            NAME, "event latency a->b p99", "ms", p99,
            goal=f"p99 < {GOAL_P99_MS:g} ms", goal_check=lambda v: v < GOAL_P99_MS,
            details=details,
        ),
    ]  # fmt: skip
