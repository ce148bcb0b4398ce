"""Stream modes ``messages``, ``events`` and ``tools``, and thread streams, through the official
langgraph-sdk against two real replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.schema import StreamPart

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

Replicas = Callable[..., ServiceProcess]
# How long a test waits for a stream to deliver what it expects before failing.
STREAM_TIMEOUT = 60.0


def _say(text: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}]}


async def _collect(parts: Any) -> list[StreamPart]:
    async with asyncio.timeout(STREAM_TIMEOUT):
        return [part async for part in parts]


def _reply(parts: list[StreamPart]) -> str:
    final = [p.data for p in parts if p.event == "values"][-1]
    text: str = final["messages"][-1]["content"]
    return text


async def test_messages_mode_streams_the_reply_token_by_token(replicas: Replicas) -> None:
    a = replicas("a").start()
    client = get_client(url=a.url)
    tid = (await client.threads.create())["thread_id"]
    parts = await _collect(
        client.runs.stream(
            tid, "agent", input=_say("hello there"), stream_mode=["messages", "values"]
        )
    )
    names = [p.event for p in parts]
    assert names[0] == "metadata" and names[-1] == "end"
    reply = _reply(parts)
    partials = [p.data[0] for p in parts if p.event == "messages/partial"]
    of_reply = [m for m in partials if m["content"] and reply.startswith(m["content"])]
    # Each partial is the message so far, one token longer, ending with the whole reply.
    assert len(of_reply) == len(reply.split())
    assert [len(m["content"].split()) for m in of_reply] == list(range(1, len(of_reply) + 1))
    assert of_reply[-1]["content"] == reply
    assert {m["type"] for m in of_reply} == {"ai"}
    # Metadata comes once per message, before its first partial, keyed by the message's id.
    reply_id = of_reply[0]["id"]
    metadata = [p for p in parts if p.event == "messages/metadata" and reply_id in p.data]
    assert len(metadata) == 1
    assert metadata[0].data[reply_id]["metadata"]["langgraph_node"] == "reply"
    assert names.index("messages/metadata") < names.index("messages/partial")


async def test_messages_tuple_and_messages_together(replicas: Replicas) -> None:
    a = replicas("a").start()
    client = get_client(url=a.url)
    tid = (await client.threads.create())["thread_id"]
    parts = await _collect(
        client.runs.stream(
            tid, "agent", input=_say("hi"), stream_mode=["messages-tuple", "messages"]
        )
    )
    tuples = [p.data for p in parts if p.event == "messages"]
    partials = [p.data[0] for p in parts if p.event == "messages/partial"]
    assert tuples and len(tuples) == len(partials)
    assert "".join(chunk["content"] for chunk, _ in tuples) == partials[-1]["content"]


async def test_events_mode_streams_callback_events_v2(replicas: Replicas) -> None:
    a = replicas("a").start()
    client = get_client(url=a.url)
    tid = (await client.threads.create())["thread_id"]
    parts = await _collect(
        client.runs.stream(tid, "agent", input=_say("hi"), stream_mode=["events", "values"])
    )
    events = [p.data for p in parts if p.event == "events"]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "on_chain_start" and kinds[-1] == "on_chain_end"
    assert {e["run_id"] for e in events if not e["parent_ids"]} == {events[0]["run_id"]}
    tokens = [e["data"]["chunk"]["content"] for e in events if e["event"] == "on_chat_model_stream"]
    reply = _reply(parts)
    assert "".join(tokens).endswith(reply)
    assert len(tokens) >= len(reply.split())
    assert all(e["metadata"]["langgraph_node"] for e in events if e["event"].startswith("on_chat"))
    # The other modes asked for still come, taken from the root graph's own stream.
    assert [p.event for p in parts].count("values") >= 2


async def test_tools_mode_streams_start_progress_and_end(replicas: Replicas) -> None:
    a = replicas("a").start()
    client = get_client(url=a.url)
    tid = (await client.threads.create())["thread_id"]
    parts = await _collect(
        client.runs.stream(
            tid, "agent", input=_say("please look up slowly 0.2"), stream_mode="tools"
        )
    )
    tools = [p.data for p in parts if p.event == "tools"]
    # As the JS SDK's useStream reads them for its toolProgress.
    assert [t["event"] for t in tools] == ["on_tool_start", "on_tool_event", "on_tool_end"]
    call = tools[0]["toolCallId"]
    assert call.startswith("call_")
    assert {t["toolCallId"] for t in tools} == {call}
    assert {t["name"] for t in tools} == {"slow_lookup"}
    assert tools[0]["input"] == {"seconds": 0.2}
    assert tools[1]["data"] == {"progress": 0.5}
    assert "looked up slowly for 0.2s" in tools[2]["output"]["content"]


@pytest.mark.parametrize(
    "mode", ["messages", "messages-tuple", "events", "tools", "values", "updates"]
)
async def test_rejoin_on_the_other_replica_with_last_event_id(
    replicas: Replicas, mode: str
) -> None:
    """Read a few events on one replica, rejoin on the other after the last one seen: together
    they are the whole stream, each event once, in order."""
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)
    tid = (await on_a.threads.create())["thread_id"]
    headers: dict[str, str] = {}
    first: list[tuple[str | None, StreamPart]] = []
    stream = on_a.runs.stream(
        tid,
        "agent",
        input=_say("please look up slowly 1 and tell me"),
        stream_mode=mode,  # type: ignore[arg-type]
        on_run_created=lambda meta: headers.update(run_id=meta["run_id"]),
    )
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for part in stream:
            first.append((None, part))
            if len(first) == 2:
                break
    await stream.aclose()  # type: ignore[attr-defined]
    run_id = headers["run_id"]
    seen = await _ids(a.url, tid, run_id, mode, after=None, limit=2)
    rest = await _collect(
        on_b.runs.join_stream(tid, run_id, stream_mode=mode, last_event_id=seen[-1])  # type: ignore[arg-type]
    )
    whole = await _collect(on_b.runs.join_stream(tid, run_id, stream_mode=mode))  # type: ignore[arg-type]
    assert [p.event for _, p in first] == [p.event for p in whole[:2]]
    assert [(p.event, p.data) for p in whole[2:]] == [(p.event, p.data) for p in rest]
    assert any(p.event not in ("metadata", "end") for p in rest), [p.event for p in rest]


async def _ids(
    base: str, tid: str, run_id: str, mode: str, *, after: str | None, limit: int
) -> list[str]:
    """The SSE ids of a run's first events, as a joiner with this mode gets them."""
    ids: list[str] = []
    headers = {"Last-Event-ID": after} if after else {}
    async with (
        httpx.AsyncClient(base_url=base, timeout=STREAM_TIMEOUT) as http,
        http.stream(
            "GET",
            f"/threads/{tid}/runs/{run_id}/stream",
            params={"stream_mode": mode},
            headers=headers,
        ) as r,
    ):
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                ids.append(line[4:])
                if len(ids) == limit:
                    break
    return ids


async def test_unknown_stream_mode_is_422(replicas: Replicas) -> None:
    a = replicas("a").start()
    client = get_client(url=a.url)
    tid = (await client.threads.create())["thread_id"]
    with pytest.raises(httpx.HTTPStatusError) as raised:
        await _collect(client.runs.stream(tid, "agent", input=_say("hi"), stream_mode="lifecycle"))
    assert raised.value.response.status_code == 422
    assert await client.runs.list(tid) == []


async def test_thread_stream_follows_every_run_from_any_replica(replicas: Replicas) -> None:
    """A thread stream opened on one replica sees the runs queued on the other, one after
    another; rejoined with Last-Event-ID on the first, it goes on right after that event."""
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)
    tid = (await on_a.threads.create())["thread_id"]
    parts: list[tuple[str, StreamPart]] = []
    connected = asyncio.Event()

    async def follow() -> None:
        async with (
            httpx.AsyncClient(base_url=a.url, timeout=STREAM_TIMEOUT) as http,
            http.stream("GET", f"/threads/{tid}/stream") as r,
        ):
            assert r.status_code == 200
            connected.set()  # where it starts was settled before the answer's headers
            async for event_id, part in _sse(r):
                parts.append((event_id, part))
                if part.event == "values" and len(part.data["messages"]) == 4:
                    return

    follower = asyncio.create_task(follow())
    async with asyncio.timeout(STREAM_TIMEOUT):
        await connected.wait()
    first = await on_b.runs.create(tid, "agent", input=_say("first turn"))
    second = await on_b.runs.create(tid, "agent", input=_say("second turn"))
    await on_b.runs.join(tid, second["run_id"])
    async with asyncio.timeout(STREAM_TIMEOUT):
        await follower
    runs_in_order = [p.data["run_id"] for _, p in parts if p.event == "metadata"]
    assert runs_in_order == [first["run_id"], second["run_id"]]
    assert all(p.event != "end" for _, p in parts)
    # Every event once, in order, named by its run.
    ids = [i for i, _ in parts]
    assert len(set(ids)) == len(ids)
    assert ids[0].startswith(first["run_id"] + ":") and ids[-1].startswith(second["run_id"])

    # Rejoin on the other replica after an event of the first run: the rest, in order.
    cut = 2
    rejoined: list[tuple[str, StreamPart]] = []
    async with (
        httpx.AsyncClient(base_url=b.url, timeout=STREAM_TIMEOUT) as http,
        http.stream(
            "GET",
            f"/threads/{tid}/stream",
            params={"stream_mode": "run_modes"},
            headers={"Last-Event-ID": parts[cut][0]},
        ) as r,
    ):
        async with asyncio.timeout(STREAM_TIMEOUT):
            async for event_id, part in _sse(r):
                rejoined.append((event_id, part))
                if len(rejoined) == len(parts) - cut - 1:
                    break
    assert [i for i, _ in rejoined] == ids[cut + 1 :]


async def test_thread_stream_via_sdk_and_its_failure_paths(replicas: Replicas) -> None:
    a = replicas("a", THREADKEEPER_AUTH="header").start()
    client = get_client(url=a.url, headers={"X-Forwarded-User": "alice"})
    tid = (await client.threads.create())["thread_id"]
    # Busy until cancelled: the stream, opened whenever the SDK gets to it, starts with it.
    run = await client.runs.create(tid, "agent", input=_say("please look up slowly 600"))
    got: list[StreamPart] = []
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for part in await client.threads.join_stream(tid):
            got.append(part)
            if part.event == "values":
                break
    await client.runs.cancel(tid, run["run_id"], wait=True)
    assert got[0].event == "metadata" and got[0].data["run_id"] == run["run_id"]
    assert got[-1].data["messages"][0]["content"] == "please look up slowly 600"

    alice = {"X-Forwarded-User": "alice"}
    async with httpx.AsyncClient(base_url=a.url, timeout=10, headers=alice) as http:
        unknown = await http.get(f"/threads/{tid}/stream", params={"stream_mode": "telepathy"})
        assert unknown.status_code == 422
        assert unknown.headers["content-type"] == "application/problem+json"
        for bad in ("7", "since=yesterday;", f"{run['run_id']}:x;", f"{tid}:3;"):
            bad_id = await http.get(
                f"/threads/{tid}/stream",
                params={"stream_mode": "state_update"},
                headers={"Last-Event-ID": bad},
            )
            assert bad_id.status_code == 422, bad
            assert bad_id.headers["content-type"] == "application/problem+json"
        missing = await http.get(f"/threads/{run['run_id']}/stream")
        assert missing.status_code == 404
        someone_else = {"X-Forwarded-User": "bob"}
        other = await http.get(f"/threads/{tid}/stream", headers=someone_else)
        assert other.status_code == 404


def _by_source(parts: list[StreamPart]) -> tuple[list[object], list[object]]:
    """The run events and the state updates of a thread stream, each in its order."""
    runs = [(p.event, p.data) for p in parts if p.event != "state_update"]
    updates = [(p.event, p.data) for p in parts if p.event == "state_update"]
    return runs, updates


async def test_thread_stream_lifecycle_and_state_update_modes(replicas: Replicas) -> None:
    """``lifecycle``: each run's start and ``run_done``; ``state_update``: each update of the
    thread's state, with the state it made; both from the other replica, and a rejoin with
    Last-Event-ID goes on right after the event named, in both."""
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)
    tid = (await on_a.threads.create())["thread_id"]
    await on_b.runs.wait(tid, "agent", input=_say("before anyone follows"))
    note = {"messages": [{"role": "user", "content": "noted"}]}
    # Busy until cancelled: the stream, opened whenever the SDK gets to it, starts with it.
    slow = await on_b.runs.create(tid, "agent", input=_say("please look up slowly 600"))
    got: list[StreamPart] = []
    async with asyncio.timeout(STREAM_TIMEOUT):
        stream = await on_a.threads.join_stream(tid, stream_mode=["lifecycle", "state_update"])
        async for part in stream:
            got.append(part)
            if len(got) == 1:  # the slow run started: end it, update, run again
                await on_b.runs.cancel(tid, slow["run_id"], wait=True)
                updated = await on_b.threads.update_state(tid, note, as_node="reply")
                second = await on_b.runs.create(tid, "agent", input=_say("what is 2+3"))
            if len(got) == 5:
                break
    shown = [(p.event, p.data.get("status"), p.data.get("run_id")) for p in got]
    assert shown == [
        ("metadata", None, slow["run_id"]),
        ("metadata", "run_done", slow["run_id"]),
        ("state_update", None, None),
        ("metadata", None, second["run_id"]),
        ("metadata", "run_done", second["run_id"]),
    ]
    assert got[0].data["attempt"] == 1
    assert got[2].data["thread_id"] == tid
    state = got[2].data["state"]
    assert state["checkpoint"]["checkpoint_id"] == updated["checkpoint"]["checkpoint_id"]
    assert state["values"]["messages"][-1]["content"] == "noted"

    # Rejoined on the other replica after the first run's start: the rest, the same ids.
    rest: list[StreamPart] = []
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for part in await on_b.threads.join_stream(
            tid, stream_mode=["lifecycle", "state_update"], last_event_id=got[0].id
        ):
            rest.append(part)
            if len(rest) == len(got) - 1:
                break
    # A rejoin replays each source in its order (an id carries both positions). The update
    # comes before the second run's start, but the updates source may send it before the
    # runs source has replayed the first run's end: all updates made so far are history.
    assert _by_source(rest) == _by_source(got[1:])
    assert [p.event for p in rest].index("state_update") < 2

    # state_update alone, resumed before the update: it again, then the next; no run events.
    again = {"messages": [{"role": "user", "content": "again"}]}
    alone: list[StreamPart] = []
    async with asyncio.timeout(STREAM_TIMEOUT):
        async for part in await on_b.threads.join_stream(
            tid, stream_mode="state_update", last_event_id=got[0].id
        ):
            alone.append(part)
            if len(alone) == 1:
                await on_a.runs.wait(tid, "agent", input=_say("one more"))
                await on_a.threads.update_state(tid, again, as_node="reply")
            if len(alone) == 2:
                break
    assert [p.event for p in alone] == ["state_update", "state_update"]
    assert alone[0].data == got[2].data
    assert alone[1].data["state"]["values"]["messages"][-1]["content"] == "again"


async def _sse(r: httpx.Response) -> Any:
    """(id, part) of each SSE event of a response, heartbeats skipped."""
    name, data, ident = None, [], ""
    async for line in r.aiter_lines():
        if line == "":
            if name is not None:
                yield ident, StreamPart(name, _json("\n".join(data)))
            name, data, ident = None, [], ""
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                ident = value


def _json(raw: str) -> Any:
    return json.loads(raw) if raw else None
