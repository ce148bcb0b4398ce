"""Scale-down as Kubernetes does it: SIGTERM to the replica serving in-flight waits and streams.

The clients are langgraph-sdk's, unchanged, reaching the replicas through a loopback front
(``tests.support.balancer``) that, like a Service, sends new connections only to replicas that
still listen. Every call must come back with its run's real end state, whichever replica ended
the run: never an empty body, an error, or a stream that stops short.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from tests.support.balancer import front as balanced
from tests.support.processes import ServiceProcess, until_refused
from threadkeeper.service.settings import CUT_MARGIN_SECONDS, DEFAULT_SHUTDOWN_SECONDS

pytestmark = pytest.mark.slow

Replicas = Callable[..., ServiceProcess]
# The draining replica hands its runs back at once, and another one resumes them.
DRAIN = {"THREADKEEPER_DRAIN_SECONDS": "0"}
CALLS_TIMEOUT = 120
# How long the runs of the first test last: the SIGTERM must reach the replica while all of them
# still run, also when a loaded machine takes seconds to start the last one.
RUN_SECONDS = 12


async def _exit_time(replica: ServiceProcess) -> float:
    """When the replica's process exited (its own shutdown, not a kill)."""
    assert replica.proc is not None
    await asyncio.to_thread(replica.proc.wait, CALLS_TIMEOUT)
    return time.monotonic()


def _ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def _reply(values: Any) -> str:
    assert isinstance(values, dict) and "__error__" not in values, values
    content: str = values["messages"][-1]["content"]
    return content


async def _wait(client: LangGraphClient, text: str) -> str:
    thread = await client.threads.create()
    return _reply(await client.runs.wait(thread["thread_id"], "agent", input=_ask(text)))


async def _stream(client: LangGraphClient, text: str) -> str:
    """The last state the stream reported; it must have reported the run's end."""
    thread = await client.threads.create()
    values: Any = None
    events = []
    async for part in client.runs.stream(
        thread["thread_id"], "agent", input=_ask(text), stream_mode="values"
    ):
        events.append(part.event)
        if part.event == "values":
            values = part.data
    assert "error" not in events, events
    return _reply(values)


async def _chat(front: str, text: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=front, timeout=CALLS_TIMEOUT) as http:
        return await http.post("/chat", json={"message": text})


def _ended_on(replica: ServiceProcess) -> int:
    """How many runs the replica ended successfully (from its JSON log lines)."""
    return sum(
        1
        for line in replica.logs().splitlines()
        if '"run_finished"' in line and json.loads(line).get("status") == "success"
    )


def _handed_over(a: ServiceProcess, b: ServiceProcess, runs: int) -> None:
    """Every run went from the draining replica to the other one, which ended it."""
    run_lines = [line for line in a.logs().splitlines() if '"run_' in line]
    assert a.logs().count('"run_handed_back"') == runs, "\n".join(run_lines[-30:])
    assert _ended_on(a) == 0
    assert _ended_on(b) == runs


async def test_a_draining_replica_answers_waits_streams_and_chats_with_the_runs_end(
    replicas: Replicas,
) -> None:
    """The runs are handed back and end on the other replica; the draining one follows them
    and answers each call with the real end state before it exits."""
    a = replicas("a", **DRAIN).start()
    b = replicas("b").start(migrate=False)
    text = f"please look up slowly {RUN_SECONDS}"
    with balanced([a.port, b.port]) as front:
        client = get_client(url=front.url)
        calls = [
            *(asyncio.create_task(_wait(client, text)) for _ in range(4)),
            *(asyncio.create_task(_stream(client, text)) for _ in range(4)),
        ]
        chat = asyncio.create_task(_chat(front.url, text))
        await asyncio.to_thread(a.wait_for_runs, len(calls) + 1)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(CALLS_TIMEOUT):
            replies = await asyncio.gather(*calls)
            chatted = await chat
        assert len(replies) == 8
        for reply in replies:
            assert f"looked up slowly for {RUN_SECONDS}s" in reply and "Turn 1." in reply
        assert chatted.status_code == 200, chatted.text
        assert f"looked up slowly for {RUN_SECONDS}s" in chatted.json()["reply"]
        code = await asyncio.to_thread(a.terminate, 60)
    # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
    assert code == -signal.SIGTERM
    _handed_over(a, b, len(calls) + 1)
    assert '"response_cut"' not in a.logs()


async def test_a_replica_that_must_exit_first_cuts_its_calls_and_they_resume_elsewhere(
    replicas: Replicas,
) -> None:
    """Runs that outlast the replica's shutdown: their waits and streams are cut (the SDK sees a
    broken response and rejoins through the front), /chat answers 503 with where to join. The
    shutdown budget is THREADKEEPER_SHUTDOWN_SECONDS (the chart derives it from the grace
    period): the replica exits within it, not within the default."""
    shutdown = 8.0
    assert shutdown + 5 < DEFAULT_SHUTDOWN_SECONDS
    a = replicas("a", THREADKEEPER_SHUTDOWN_SECONDS=str(shutdown), **DRAIN).start()
    b = replicas("b").start(migrate=False)
    seconds = int(shutdown) + 5
    assert seconds > shutdown - CUT_MARGIN_SECONDS
    text = f"please look up slowly {seconds}"
    with balanced([a.port, b.port]) as front:
        client = get_client(url=front.url)
        calls = [
            asyncio.create_task(_wait(client, text)),
            asyncio.create_task(_stream(client, text)),
        ]
        chat = asyncio.create_task(_chat(front.url, text))
        await asyncio.to_thread(a.wait_for_runs, 3)
        assert a.proc is not None
        signalled = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        exited = asyncio.create_task(_exit_time(a))
        # The SDK says so when it follows Location after a broken response.
        with pytest.warns(UserWarning, match="attempting reconnect"):
            async with asyncio.timeout(CALLS_TIMEOUT):
                chatted = await chat
                assert chatted.status_code == 503, chatted.text
                assert chatted.headers["content-type"] == "application/problem+json"
                assert float(chatted.headers["retry-after"]) > 0
                async with httpx.AsyncClient(base_url=front.url, timeout=CALLS_TIMEOUT) as http:
                    joined = await http.get(chatted.headers["location"])
                replies = [*await asyncio.gather(*calls), _reply(joined.json())]
        for reply in replies:
            assert f"looked up slowly for {seconds}s" in reply and "Turn 1." in reply
        assert await exited - signalled < shutdown + 5
        code = await asyncio.to_thread(a.terminate, 60)
    assert code == -signal.SIGTERM
    _handed_over(a, b, 3)
    # Cut by the service before uvicorn's own deadline, which would have cancelled them.
    assert "timeout graceful shutdown exceeded" not in a.logs()
    assert a.logs().count('"response_cut"') == 2  # the wait and the stream


async def test_a_request_on_a_kept_alive_connection_across_sigterm_is_answered(
    replicas: Replicas,
) -> None:
    """A scale-down's race: a client's pool holds an idle connection to the replica that gets
    SIGTERM, and sends its next request on it. The replica answers it, with
    ``Connection: close``, so the client opens its next connection elsewhere; it neither
    closes the connection under the request nor leaves the client to guess whether the
    request was carried out."""
    a = replicas("a").start()
    assert a.proc is not None
    async with httpx.AsyncClient(base_url=a.url, timeout=CALLS_TIMEOUT) as http:
        created = await http.post("/threads", json={})
        assert created.status_code == 200, created.text
        assert created.headers.get("connection", "keep-alive") != "close"
        a.proc.send_signal(signal.SIGTERM)
        await until_refused(a.port)
        # Only the kept-alive connection can carry it: the replica accepts no new one.
        read = await http.get(f"/threads/{created.json()['thread_id']}")
        assert read.status_code == 200, read.text
        assert read.json()["thread_id"] == created.json()["thread_id"]
        assert read.headers["connection"] == "close"
        with pytest.raises(httpx.ConnectError):
            await http.get("/ok")
    assert await asyncio.to_thread(a.terminate, 60) == -signal.SIGTERM
