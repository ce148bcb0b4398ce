"""A client-side load harness that survives replicas going away.

Each conversation queues its turns as background runs on whichever replica answers and joins
them from whichever replica answers, the way a client behind a load balancer would.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import httpx

from tests.support.processes import ServiceProcess

RETRY_FOR = 120.0


@dataclass
class Conversation:
    thread_id: str
    texts: list[str]
    run_ids: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    # Where the scripted turns run out, more are made while the test wants load.
    more: Callable[[int], str] | None = None


class Fleet:
    """The replicas a client may talk to; restarts swap processes underneath."""

    def __init__(self, replicas: Sequence[ServiceProcess]) -> None:
        self.replicas = list(replicas)
        self.lock = threading.Lock()

    def urls(self) -> list[str]:
        with self.lock:
            urls = [r.url for r in self.replicas]
        random.shuffle(urls)
        return urls

    def call(self, send: Callable[[str], httpx.Response]) -> httpx.Response:
        """Send to some replica; on a connection error or 5xx try another until one answers."""
        deadline = time.monotonic() + RETRY_FOR
        last: Exception | None = None
        while time.monotonic() < deadline:
            for url in self.urls():
                try:
                    r = send(url)
                except httpx.TransportError as exc:
                    last = exc
                    continue
                if r.status_code < 500:
                    return r
                last = RuntimeError(f"{r.status_code}: {r.text[:200]}")
            time.sleep(0.2)
        raise TimeoutError(f"no replica answered: {last}")


def _create(convo: Conversation, body: dict[str, object], key: str, url: str) -> httpx.Response:
    # The key makes a retry after a lost response safe: it cannot queue the turn twice.
    return httpx.post(
        f"{url}/threads/{convo.thread_id}/runs",
        json=body,
        headers={"Idempotency-Key": key},
        timeout=30,
    )


def _join(convo: Conversation, run_id: str, url: str) -> httpx.Response:
    r = httpx.get(f"{url}/threads/{convo.thread_id}/runs/{run_id}/join", timeout=60)
    try:
        r.json()
    except ValueError:
        # A draining replica cuts long polls short; ask another one.
        return httpx.Response(503, text="cut")
    return r


def _turns(convo: Conversation, keep_going: Callable[[], bool]) -> Iterator[str]:
    yield from list(convo.texts)
    turn = len(convo.texts)
    while convo.more is not None and keep_going():
        turn += 1
        text = convo.more(turn)
        convo.texts.append(text)
        yield text


def talk(fleet: Fleet, convo: Conversation, keep_going: Callable[[], bool]) -> None:
    for text in _turns(convo, keep_going):
        body = {
            "assistant_id": "agent",
            "input": {"messages": [{"role": "user", "content": text}]},
            "multitask_strategy": "enqueue",
        }
        key = f"{convo.thread_id}-{len(convo.run_ids)}"
        created = fleet.call(partial(_create, convo, body, key))
        assert created.status_code == 200, created.text
        run_id = created.json()["run_id"]
        convo.run_ids.append(run_id)
        joined = fleet.call(partial(_join, convo, run_id))
        assert joined.status_code == 200, joined.text
        assert "messages" in joined.json(), (convo.thread_id, run_id, joined.text)
        convo.replies.append(joined.json()["messages"][-1]["content"])


def run_load(
    fleet: Fleet,
    conversations: list[Conversation],
    workers: int,
    keep_going: Callable[[], bool] = lambda: False,
) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(talk, fleet, c, keep_going) for c in conversations]:
            future.result()


def new_conversations(
    fleet: Fleet, count: int, turns: Callable[[int], list[str]]
) -> list[Conversation]:
    made = []
    for i in range(count):
        r = fleet.call(lambda url: httpx.post(f"{url}/threads", json={}, timeout=30))
        made.append(Conversation(r.json()["thread_id"], turns(i)))
    return made
