"""Benchmark 10: what token streaming costs: server CPU per turn, ``messages`` against ``values``.

One replica. Each turn is the first of a fresh thread, streamed with ``POST
/threads/{tid}/runs/stream`` and read to its ``end``; the user's message is chosen so that the
offline model's reply is exactly ``REPLY_TOKENS`` tokens (checked on every ``messages`` turn).
A turn streams either ``values`` (the state after each step: three events for the graph's
steps) or the Agent Server's legacy ``messages`` (per token, the message so far:
``messages/partial``), or ``messages-tuple`` (per token, the chunk). The figure is the replica's
own CPU seconds (``/proc``, user + system) over a batch of turns, per turn; contenders take
turns within each repetition, rotating who goes first.

Write volume: a listener on the events channel counts the statements that wrote each run's
events (every batch insert, and the run's ending, sends one notification), against the
number of events they carried. The machine is shared (2 cores, other work on them):
``load_average`` in the details says how busy it was; the ratio, measured within one
repetition, is what to read.
"""

from __future__ import annotations

import os
import statistics
from contextlib import ExitStack
from typing import Any

import httpx

from tests.perf import cpu, servers
from tests.perf.bench_streaming import NotifyProbe, logs_on_failure, post_json, sse_events
from tests.perf.harness import Bench, Row, alone, compare, interleave

NAME = "10. token streaming cost"
REPLY_TOKENS = 100
# The reply reads 'Turn 1. You first said: "<text>". You just said: "<text>".': 8 tokens of
# its own and the message's words twice.
WORDS = (REPLY_TOKENS - 8) // 2
TEXT = " ".join(f"w{i}" for i in range(WORDS))
CONTENDERS = {"values": ["values"], "messages": ["messages"], "messages-tuple": ["messages-tuple"]}
GOAL_RATIO = 2.0
STREAM_TIMEOUT = 60.0


async def turn(http: httpx.AsyncClient, base: str, modes: list[str]) -> tuple[str, list[Any]]:
    """One streamed first turn of a new thread: its run id and events."""
    tid = (await post_json(http, f"{base}/threads", {}))["thread_id"]
    body = {
        "assistant_id": "agent",
        "input": {"messages": [{"role": "user", "content": TEXT}]},
        "stream_mode": modes,
    }
    received: list[Any] = []
    async with http.stream("POST", f"{base}/threads/{tid}/runs/stream", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"stream: {r.status_code} {r.text[:300]}")
        async for event in sse_events(r):
            received.append(event)
    if received[-1].event != "end" or any(e.event == "error" for e in received):
        raise RuntimeError(f"turn did not end cleanly: {[e.event for e in received][-3:]}")
    return received[0].data["run_id"], received


def reply_tokens(events: list[Any]) -> int:
    """Tokens of the reply, counted from a ``messages`` stream's partials of its message."""
    partials = [e.data[0] for e in events if e.event == "messages/partial"]
    reply_id = partials[-1]["id"]
    return sum(1 for p in partials if p["id"] == reply_id)


async def run(bench: Bench) -> list[Row]:
    turns = bench.size(40, 5)
    load_before = os.getloadavg()
    batches: dict[str, list[int]] = {name: [] for name in CONTENDERS}
    events: dict[str, list[int]] = {name: [] for name in CONTENDERS}
    with ExitStack() as stack:
        db_url = stack.enter_context(bench.database())
        server = stack.enter_context(servers.ours(db_url, bench.work, name="a"))
        stack.enter_context(logs_on_failure(server))
        server.start()
        probe = stack.enter_context(NotifyProbe(db_url))
        async with httpx.AsyncClient(timeout=STREAM_TIMEOUT) as http:

            def contender(name: str) -> Any:
                async def measure(_: int) -> float:
                    spent: list[cpu.Snapshot] = []
                    meter = cpu.Meter({"server": server.pid}, spent)
                    meter.start()
                    runs = [await turn(http, server.url, CONTENDERS[name]) for _ in range(turns)]
                    meter.stop()
                    if not spent:
                        raise RuntimeError("no /proc here: CPU cannot be measured")
                    for run_id, received in runs:
                        if name == "messages" and reply_tokens(received) != REPLY_TOKENS:
                            raise RuntimeError(f"the reply was {reply_tokens(received)} tokens")
                        events[name].append(len(received))
                        batches[name].append(len(probe.seen.get(run_id, [])))
                    return spent[0].processes["server"] / turns * 1000

                return measure

            # One untimed round: imports, pools and caches warm up before anything counts.
            for modes in CONTENDERS.values():
                await turn(http, server.url, modes)
            cpu_ms = await interleave(
                bench.repetitions, {name: contender(name) for name in CONTENDERS}
            )

    details: dict[str, Any] = {
        "turns_per_repetition": turns,
        "reply_tokens": REPLY_TOKENS,
        "events_per_turn": {n: statistics.median(v) for n, v in events.items()},
        "event_writes_per_turn": {n: statistics.median(v) for n, v in batches.items()},
        "load_average": [
            [round(x, 2) for x in load_before],
            [round(x, 2) for x in os.getloadavg()],
        ],
    }
    return [
        alone(NAME, "server CPU per turn, values", "ms", cpu_ms["values"], details=details),
        compare(
            NAME, "server CPU per turn, messages", "ms", cpu_ms["messages"],
            "values", cpu_ms["values"],
            goal=f"ratio <= {GOAL_RATIO:g}", goal_check=lambda r: r <= GOAL_RATIO,
            details=details,
        ),
        compare(
            NAME, "server CPU per turn, messages-tuple", "ms", cpu_ms["messages-tuple"],
            "values", cpu_ms["values"], details=details,
        ),
    ]  # fmt: skip
