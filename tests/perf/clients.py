"""Clients that drive conversations against each server, the way their users call them.

Each conversation has a client of its own, as each user of a service has: one shared httpx pool
of 100 connections costs the benchmark more CPU per turn than the service spends serving it
(httpcore matches every queued request against every connection), and on a 2-core machine that
CPU comes out of the servers' share.

Ours and ``langgraph dev`` speak the Agent Server API (create a thread, then ``runs/wait`` per
turn); the tutorial app has its ``/chat`` route. Every turn waits for the graph to finish, so
each one is durable (ours, tutorial) or complete in memory (langgraph dev) when it returns.
Answers are decoded with orjson, as ``langgraph-sdk`` decodes them: a waited run answers with
the thread's whole message list, and the standard library's decoder would take twice as long
over it, in the latency measured.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from langchain_core.messages import HumanMessage

from tests.perf import cpu

TURN_TIMEOUT = 300.0


class TurnFailed(RuntimeError):
    pass


# Building a TLS context loads the CA bundle (milliseconds each); the servers are plain HTTP,
# but httpx builds one per client unless it is given one.
_TLS = ssl.create_default_context()


def client() -> httpx.AsyncClient:
    """One caller's client: one request at a time, over a kept-alive connection."""
    return httpx.AsyncClient(timeout=TURN_TIMEOUT, verify=_TLS)


@asynccontextmanager
async def callers(count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """A client per caller, closed together."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(client()) for _ in range(count)]


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code != 200:
        raise TurnFailed(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r


def _body(r: httpx.Response) -> Any:
    return orjson.loads(r.content)


@dataclass(frozen=True)
class AgentServer:
    """Ours or ``langgraph dev``: threads and ``runs/wait``."""

    url: str

    async def new_thread(self, http: httpx.AsyncClient) -> str:
        r = _check(await http.post(f"{self.url}/threads", json={}))
        thread_id: str = _body(r)["thread_id"]
        return thread_id

    async def turn(self, http: httpx.AsyncClient, thread_id: str, text: str) -> str:
        body = {
            "assistant_id": "agent",
            "input": {"messages": [{"role": "user", "content": text}]},
        }
        r = _check(await http.post(f"{self.url}/threads/{thread_id}/runs/wait", json=body))
        reply: str = _body(r)["messages"][-1]["content"]
        return reply


@dataclass(frozen=True)
class Tutorial:
    """Baseline (a): the client picks the thread id and posts to ``/chat``."""

    url: str

    async def new_thread(self, http: httpx.AsyncClient) -> str:
        return str(uuid.uuid4())

    async def turn(self, http: httpx.AsyncClient, thread_id: str, text: str) -> str:
        r = _check(
            await http.post(f"{self.url}/chat", json={"thread_id": thread_id, "message": text})
        )
        reply: str = _body(r)["reply"]
        return reply


@dataclass
class Balanced:
    """Several replicas behind a round-robin balancer: each request may land on another one."""

    urls: list[str]
    _next: int = 0

    def _pick(self) -> AgentServer:
        self._next += 1
        return AgentServer(self.urls[self._next % len(self.urls)])

    async def new_thread(self, http: httpx.AsyncClient) -> str:
        return await self._pick().new_thread(http)

    async def turn(self, http: httpx.AsyncClient, thread_id: str, text: str) -> str:
        return await self._pick().turn(http, thread_id, text)


@dataclass
class GraphAlone:
    """(b) of benchmark 11: the graph itself, in this process, with no saver and no HTTP (``http``
    is not used). Each turn passes the conversation so far, kept here, and takes it back: what
    the graph's own work costs along a conversation, with nothing stored, loaded or sent."""

    graph: Any
    histories: dict[str, list[Any]] = field(default_factory=dict)

    async def new_thread(self, http: httpx.AsyncClient) -> str:
        thread_id = str(uuid.uuid4())
        self.histories[thread_id] = []
        return thread_id

    async def turn(self, http: httpx.AsyncClient, thread_id: str, text: str) -> str:
        said = [*self.histories[thread_id], HumanMessage(text)]
        out = await self.graph.ainvoke({"messages": said})
        self.histories[thread_id] = out["messages"]
        return str(out["messages"][-1].content)


Server = AgentServer | Tutorial | Balanced | GraphAlone


def say(conversation: int, turn: int) -> str:
    return f"conversation {conversation} turn {turn}: tell me something about the weather"


async def conversations(
    server: Server,
    *,
    count: int,
    turns: int,
    text: Callable[[int, int], str] = say,
    on_turn: Callable[[float], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> float:
    """Run ``count`` concurrent conversations of ``turns`` turns; return turns per second.

    Threads are created before the clock starts (``on_start`` is called as it does);
    ``on_turn`` gets each turn's latency.
    """
    async with callers(count) as https:
        threads = await asyncio.gather(*(server.new_thread(http) for http in https))

        async def talk(index: int, thread_id: str, http: httpx.AsyncClient) -> None:
            for turn in range(1, turns + 1):
                began = time.perf_counter()
                reply = await server.turn(http, thread_id, text(index, turn))
                if on_turn is not None:
                    on_turn(time.perf_counter() - began)
                if f"Turn {turn}." not in reply:
                    raise TurnFailed(f"thread {thread_id} lost its memory: {reply[:200]!r}")

        if on_start is not None:
            on_start()
        began = time.perf_counter()
        pairs = enumerate(zip(threads, https, strict=True))
        await asyncio.gather(*(talk(i, thread_id, http) for i, (thread_id, http) in pairs))
        return count * turns / (time.perf_counter() - began)


def throughput(
    server: Server,
    count: int,
    turns: int,
    meter: cpu.Meter | None = None,
    on_turn: Callable[[float], None] | None = None,
) -> Callable[[int], Awaitable[float]]:
    """A contender for ``harness.interleave``: fresh conversations each repetition; ``meter``,
    if given, runs while the clock does; ``on_turn`` gets each turn's latency."""

    async def measure(rep: int) -> float:
        per_second = await conversations(
            server,
            count=count,
            turns=turns,
            on_turn=on_turn,
            on_start=meter.start if meter else None,
        )
        if meter:
            meter.stop()
        return per_second

    return measure
