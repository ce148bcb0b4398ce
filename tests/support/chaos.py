"""Clients that talk through chaos, and keep score of every answer they get.

Each conversation takes its turns one after another, each turn through one of the three ways a
client asks for a reply (``/runs/wait``, ``/runs`` then ``/join``, ``/runs/stream`` with rejoin),
always with an ``Idempotency-Key``, so a retry after a lost response can never queue the turn
twice. A client retries on a transport error or a 5xx (on another replica), and rejoins a stream
that ends without ``end``. Every answer is recorded: what a client was told must be true.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx

from tests.support import sse
from tests.support.processes import ServiceProcess

TURN_DEADLINE = 120.0
REQUEST_TIMEOUT = 30.0
# A user reads the reply before the next turn: it spreads the conversations over the chaos.
THINK_SECONDS = 2.0
# Between a failed try and the next one, which goes to a replica picked at random.
RETRY_SECONDS = 0.2


class Rejoin(Enum):
    """Why a streaming client rejoined its run's stream."""

    # The stream broke mid-body (its replica was killed, or cut it while draining).
    CUT = "cut"
    # The replica it picked for the rejoin was down (killed, or still starting).
    REFUSED = "refused"
    # Nothing arrived for REQUEST_TIMEOUT, heartbeats included (a starved replica).
    TIMED_OUT = "timed out"
    # The body ended normally without ``end``: a stream that lies about being complete.
    ENDED_EARLY = "ended without end"


def rejoin_cause(exc: httpx.TransportError) -> Rejoin:
    if isinstance(exc, httpx.ConnectError):
        return Rejoin.REFUSED
    if isinstance(exc, httpx.TimeoutException):
        return Rejoin.TIMED_OUT
    return Rejoin.CUT


class Way(Enum):
    WAIT = "wait"
    JOIN = "join"
    STREAM = "stream"


@dataclass(frozen=True)
class Answer5xx:
    at: float
    status: int
    retry_after: str | None
    path: str


@dataclass
class Score:
    """What the clients saw, shared by their threads."""

    tried: int = 0
    acknowledged: int = 0
    failed_turns: list[str] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)
    # 200s whose body carried an error, kept until the run's real ending is known.
    errors_told: list[tuple[str, str, Any]] = field(default_factory=list)
    server_errors: list[Answer5xx] = field(default_factory=list)
    stream_rejoins: int = 0
    rejoin_causes: Counter[Rejoin] = field(default_factory=Counter)
    # Streams whose body ended normally without ``end``, by run.
    ended_early: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, item: Any) -> None:
        with self.lock:
            getattr(self, name).append(item)

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def rejoined(self, cause: Rejoin) -> None:
        with self.lock:
            self.stream_rejoins += 1
            self.rejoin_causes[cause] += 1


@dataclass
class Conversation:
    index: int
    thread_id: str
    acknowledged: list[str] = field(default_factory=list)


class Retry(Exception):
    """This try's answer was not the reply; try again (same key)."""


class RunFailed(Exception):
    """The run told an error as its end: asking again would only hear it again (the verdict
    checks that the run really ended with it), so the turn has failed."""


class Fleet:
    """The replicas clients may talk to; the chaos swaps processes underneath."""

    def __init__(self, replicas: Sequence[ServiceProcess]) -> None:
        self.replicas = list(replicas)
        self.started = time.monotonic()

    def url(self) -> str:
        return random.choice(self.replicas).url

    def who(self, r: httpx.Response) -> str:
        """Which replica answered, and when (seconds into the test), for the record."""
        names = [p.name for p in self.replicas if p.port == r.url.port]
        return f"{names[0] if names else r.url.port} at {time.monotonic() - self.started:.0f}s"


def turn_text(convo: int, turn: int) -> str:
    # Every other turn waits in a tool, so kills and drains land mid-run.
    slow = " look up slowly 1.5" if (convo + turn) % 2 == 0 else ""
    return f"conversation {convo} turn {turn}{slow}"


def way_of(convo: int, turn: int) -> Way:
    return list(Way)[(convo + turn) % len(Way)]


class Client:
    def __init__(self, fleet: Fleet, score: Score) -> None:
        self.fleet = fleet
        self.score = score
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def converse(self, convo: Conversation, turns: int) -> None:
        for turn in range(1, turns + 1):
            time.sleep(THINK_SECONDS)
            text = turn_text(convo.index, turn)
            self.score.count("tried")
            reply = self._take_turn(convo, turn, text)
            if reply is None:
                self.score.add("failed_turns", f"{convo.thread_id} turn {turn}")
                return  # later turns would not know what the thread holds
            convo.acknowledged.append(text)
            self.score.count("acknowledged")
            if f"Turn {turn}." not in reply or f'You just said: "{text}"' not in reply:
                self.score.add("wrong_answers", f"{convo.thread_id} turn {turn}: {reply!r}")

    def _take_turn(self, convo: Conversation, turn: int, text: str) -> str | None:
        body = {
            "assistant_id": "agent",
            "input": {"messages": [{"role": "user", "content": text}]},
            "multitask_strategy": "enqueue",
        }
        key = f"{convo.thread_id}-{turn}"
        way = way_of(convo.index, turn)
        base = f"/threads/{convo.thread_id}"
        deadline = time.monotonic() + TURN_DEADLINE
        run_path: str | None = None
        while time.monotonic() < deadline:
            try:
                if way is Way.WAIT:
                    return self._wait(base, body, key)
                if way is Way.JOIN:
                    if run_path is None:
                        run_path = self._create(base, body, key)
                    return self._join(run_path)
                return self._stream(base, body, key, deadline)
            except (Retry, httpx.TransportError):
                time.sleep(RETRY_SECONDS)
            except RunFailed:
                return None
        return None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = self.http.request(method, self.fleet.url() + path, **kwargs)
        self._check_status(r, path)
        return r

    def _check_status(self, r: httpx.Response, path: str) -> None:
        if r.status_code >= 500:
            self.score.add(
                "server_errors",
                Answer5xx(time.monotonic(), r.status_code, r.headers.get("retry-after"), path),
            )
            raise Retry
        if r.status_code != 200:
            r.read()
            raise AssertionError(f"{path}: {r.status_code} {r.text[:300]}")

    def _values(self, r: httpx.Response, path: str) -> Any:
        """A 200's final values; an empty or broken body, or an error, is recorded."""
        try:
            data = json.loads(r.text)
        except ValueError:
            self.score.add(
                "wrong_answers", f"{path}: 200 with body {r.text[:80]!r} ({self.fleet.who(r)})"
            )
            raise Retry from None
        if not isinstance(data, dict) or not data.get("messages"):
            if isinstance(data, dict) and "__error__" in data:
                # A join answers at the run's own path, without a Content-Location.
                run_path = r.headers.get("content-location") or path.removesuffix("/join")
                self.score.add("errors_told", (path, run_path, data))
                raise RunFailed
            else:
                self.score.add(
                    "wrong_answers", f"{path}: 200 with body {r.text[:80]!r} ({self.fleet.who(r)})"
                )
            raise Retry
        return data

    def _wait(self, base: str, body: dict[str, Any], key: str) -> str:
        path = f"{base}/runs/wait"
        r = self._send("POST", path, json=body, headers={"Idempotency-Key": key})
        return str(self._values(r, path)["messages"][-1]["content"])

    def _create(self, base: str, body: dict[str, Any], key: str) -> str:
        r = self._send("POST", f"{base}/runs", json=body, headers={"Idempotency-Key": key})
        return f"{base}/runs/{r.json()['run_id']}"

    def _join(self, run_path: str) -> str:
        path = f"{run_path}/join"
        r = self._send("GET", path)
        return str(self._values(r, path)["messages"][-1]["content"])

    def _stream(self, base: str, body: dict[str, Any], key: str, deadline: float) -> str:
        """Stream the run; where the stream ends without ``end``, rejoin after the last event
        (until the turn's deadline)."""
        path = f"{base}/runs/stream"
        method, target, kwargs = "POST", path, {"json": body, "headers": {"Idempotency-Key": key}}
        last_id = 0
        values: Any = None
        run_path: str | None = None
        while time.monotonic() < deadline:
            cause = Rejoin.ENDED_EARLY
            try:
                with self.http.stream(method, self.fleet.url() + target, **kwargs) as response:
                    self._check_status(response, target)
                    run_path = response.headers["content-location"]
                    for event in sse.events(response):
                        last_id = event.id or last_id
                        if event.event == "values":
                            values = event.data
                        elif event.event == "error":
                            self.score.add("errors_told", (target, run_path, event.data))
                            raise RunFailed
                        elif event.event == "end":
                            if not values or not values.get("messages"):
                                raise Retry
                            return str(values["messages"][-1]["content"])
            except httpx.TransportError as exc:
                if run_path is None:
                    raise
                cause = rejoin_cause(exc)
            if run_path is None:
                raise Retry
            if cause is Rejoin.ENDED_EARLY:
                self.score.add("ended_early", run_path)
            # That replica is gone, or said something untrue; the next try picks another.
            time.sleep(RETRY_SECONDS)
            if method == "POST" or last_id:
                self.score.rejoined(cause)
            method, target = "GET", f"{run_path}/stream"
            kwargs = {"headers": {"Last-Event-ID": str(last_id)}}
        raise Retry


def settled(base: str, thread_id: str, deadline: float) -> list[dict[str, Any]]:
    """The thread's runs once none is pending or running (or what they are at the deadline)."""
    while True:
        try:
            runs: list[dict[str, Any]] = httpx.get(
                f"{base}/threads/{thread_id}/runs?limit=100", timeout=REQUEST_TIMEOUT
            ).json()
        except httpx.TransportError:
            runs = []
        if runs and all(r["status"] not in ("pending", "running") for r in runs):
            return runs
        if time.monotonic() > deadline:
            return runs
        time.sleep(0.2)
