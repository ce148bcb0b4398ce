"""threads.search ``sort_by`` ``status`` and ``state_updated_at``, as the Agent Server has them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.support.fixtures import app_client
from threadkeeper.service.app import create_app
from threadkeeper.service.settings import Settings

TURN = {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": "hi"}]}}
SLOW = {
    "assistant_id": "agent",
    "input": {"messages": [{"role": "user", "content": "look up slowly 30"}]},
}


async def _new(client: httpx.AsyncClient) -> str:
    thread_id: str = (await client.post("/threads", json={})).json()["thread_id"]
    return thread_id


async def _interrupted(client: httpx.AsyncClient) -> str:
    """A thread waiting before its tool runs (``interrupt_before``)."""
    thread_id = await _new(client)
    paused = await client.post(
        f"/threads/{thread_id}/runs/wait",
        json={
            **SLOW,
            "input": {"messages": [{"role": "user", "content": "look up slowly 1"}]},
            "interrupt_before": ["act"],
        },
    )
    assert paused.status_code == 200, paused.text
    return thread_id


async def _ids(client: httpx.AsyncClient, **search: object) -> list[str]:
    found = await client.post("/threads/search", json=search)
    assert found.status_code == 200, found.text
    return [t["thread_id"] for t in found.json()]


async def test_sort_by_status(client: httpx.AsyncClient) -> None:
    idle = await _new(client)
    waiting = await _interrupted(client)
    busy = await _new(client)
    slow = (await client.post(f"/threads/{busy}/runs", json=SLOW)).json()
    statuses = {
        t: (await client.get(f"/threads/{t}")).json()["status"] for t in (idle, waiting, busy)
    }
    assert statuses == {idle: "idle", waiting: "interrupted", busy: "busy"}

    assert await _ids(client, sort_by="status", sort_order="asc") == [busy, idle, waiting]
    assert await _ids(client, sort_by="status", sort_order="desc") == [waiting, idle, busy]
    await client.post(f"/threads/{busy}/runs/{slow['run_id']}/cancel?wait=1&action=rollback")


async def test_sort_by_state_updated_at(client: httpx.AsyncClient) -> None:
    spoken_late = await _new(client)
    silent = await _new(client)
    await client.post(f"/threads/{spoken_late}/runs/wait", json=TURN)
    reported = {
        t["thread_id"]: t["state_updated_at"]
        for t in (await client.post("/threads/search", json={})).json()
    }
    assert reported[spoken_late] > reported[silent]

    assert await _ids(client, sort_by="state_updated_at") == [spoken_late, silent]
    assert await _ids(client, sort_by="state_updated_at", sort_order="asc") == [silent, spoken_late]
    # Not the creation order, which is the other way round.
    assert await _ids(client, sort_by="created_at") == [silent, spoken_late]


# --- values (JSON containment on the latest values) and extract ----------------------------

# Messages are kept as LangChain serializes them: a user's is {"type": "human", ...}.
ASKED = {"messages": [{"type": "human", "content": "what is 2+3"}]}
ALICE = {"X-Forwarded-User": "alice"}
BOB = {"X-Forwarded-User": "bob"}


@pytest.fixture
async def alice(settings_for: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of alice's, on a service that tells callers apart by a header."""
    app = create_app(settings_for(auth="header"), run_migrations=False)
    async with app_client(app, headers=ALICE) as c:
        yield c


async def _talk(client: httpx.AsyncClient, text: str, **headers: str) -> str:
    thread_id: str = (
        await client.post("/threads", json={"metadata": {"topic": text}}, headers=headers)
    ).json()["thread_id"]
    said = {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}}
    done = await client.post(f"/threads/{thread_id}/runs/wait", json=said, headers=headers)
    assert done.status_code == 200, done.text
    return thread_id


async def test_values_filter_matches_the_latest_values_of_the_callers_threads(
    alice: httpx.AsyncClient,
) -> None:
    client = alice
    sums = [await _talk(client, "what is 2+3") for _ in range(3)]
    other = await _talk(client, "hello")
    await _new(client)  # no state at all
    theirs = await _talk(client, "what is 2+3", **BOB)

    found = await client.post("/threads/search", json={"values": ASKED, "limit": 2})

    assert found.status_code == 200, found.text
    assert [t["thread_id"] for t in found.json()] == sums[::-1][:2]
    assert found.headers["X-Pagination-Total"] == "3"
    assert found.headers["X-Pagination-Next"] == "2"
    rest = await client.post("/threads/search", json={"values": ASKED, "offset": 2})
    assert [t["thread_id"] for t in rest.json()] == [sums[0]]
    assert "X-Pagination-Next" not in rest.headers
    # Containment, as Postgres's @> has it: a nested part of a message matches; a value the
    # thread does not hold does not.
    replied = {"messages": [{"type": "ai"}]}
    assert set(await _ids(client, values=replied, limit=100)) == {*sums, other}
    assert await _ids(client, values={"messages": [{"content": "what is 2+4"}]}) == []
    assert await _ids(client, values={"nothing": None}) == []
    # With the other filters.
    assert await _ids(client, values=ASKED, ids=[sums[1], other, theirs]) == [sums[1]]
    counted = await client.post("/threads/count", json={"values": ASKED})
    assert counted.json() == 3
    assert theirs not in await _ids(client, values=ASKED, limit=100)
    bobs = await client.post("/threads/search", json={"values": ASKED}, headers=BOB)
    assert [t["thread_id"] for t in bobs.json()] == [theirs]


async def test_extract_returns_the_given_paths_of_each_thread(client: httpx.AsyncClient) -> None:
    thread_id = await _talk(client, "what is 2+3")
    state = (await client.get(f"/threads/{thread_id}/state")).json()
    extract = {
        "last": "values.messages[-1].content",
        "first_kind": "values.messages[0].type",
        "topic": "metadata.topic",
        "missing": "values.messages[7].content",
        "not_a_list": "metadata.topic[0]",
        "configured": "config.configurable",
    }

    found = await client.post("/threads/search", json={"ids": [thread_id], "extract": extract})

    assert found.status_code == 200, found.text
    (thread,) = found.json()
    assert thread["extracted"] == {
        "last": state["values"]["messages"][-1]["content"],
        "first_kind": "human",
        "topic": "what is 2+3",
        "missing": None,
        "not_a_list": None,
        "configured": None,
    }
    assert "5" in thread["extracted"]["last"]
    # With select, the extracted values still come.
    picked = await client.post(
        "/threads/search",
        json={"ids": [thread_id], "select": ["thread_id"], "extract": {"t": "metadata.topic"}},
    )
    assert picked.json() == [{"thread_id": thread_id, "extracted": {"t": "what is 2+3"}}]
    # Paths into the values are read from the state even when the values are not selected.
    said = await client.post(
        "/threads/search",
        json={
            "ids": [thread_id],
            "select": ["thread_id"],
            "extract": {"said": "values.messages[0].content"},
        },
    )
    assert said.json() == [{"thread_id": thread_id, "extracted": {"said": "what is 2+3"}}]
    # Filtered by values, with the values shown and paths into them.
    both = await client.post(
        "/threads/search",
        json={
            "values": ASKED,
            "ids": [thread_id],
            "extract": {"said": "values.messages[0].content"},
        },
    )
    (shown,) = both.json()
    assert shown["extracted"] == {"said": "what is 2+3"}
    assert shown["values"] == state["values"]
    # Without extract, no extracted field (as the Agent Server answers).
    assert "extracted" not in (await client.post("/threads/search", json={})).json()[0]


async def test_a_thread_whose_graph_is_gone_matches_nothing(client: httpx.AsyncClient) -> None:
    """Its state cannot be read; the caller's other threads are still found."""
    gone = (await client.post("/threads", json={"metadata": {"graph_id": "retired"}})).json()
    assert (await client.get(f"/threads/{gone['thread_id']}")).status_code == 409
    kept = await _talk(client, "what is 2+3")

    assert await _ids(client, values=ASKED) == [kept]
    found = await client.post(
        "/threads/search", json={"extract": {"said": "values.messages[0].content"}}
    )
    assert found.status_code == 200, found.text
    extracted = {t["thread_id"]: t["extracted"]["said"] for t in found.json()}
    assert extracted == {kept: "what is 2+3", gone["thread_id"]: None}


@pytest.mark.parametrize(
    ("extract", "named"),
    [
        ({f"a{i}": "values.x" for i in range(11)}, "10"),
        ({"values": "values.messages"}, "values"),
        ({"last-message": "values.messages"}, "last-message"),
        ({"last": "owner.name"}, "owner.name"),
        ({"last": ""}, "''"),
        ({"last": 7}, "last"),
    ],
)
async def test_bad_extract_is_refused(
    client: httpx.AsyncClient, extract: dict[str, object], named: str
) -> None:
    refused = await client.post("/threads/search", json={"extract": extract})
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert named in refused.json()["detail"]


async def test_search_shows_each_threads_values_and_interrupts(client: httpx.AsyncClient) -> None:
    """The Agent Chat UI labels its thread list with ``values.messages[0]`` of each result."""
    spoken = await _new(client)
    done = await client.post(f"/threads/{spoken}/runs/wait", json=TURN)
    assert done.status_code == 200, done.text
    paused = await _interrupted(client)
    silent = await _new(client)

    found = {t["thread_id"]: t for t in (await client.post("/threads/search", json={})).json()}

    assert found[spoken]["values"]["messages"][0]["content"] == "hi"
    assert found[spoken]["values"]["messages"][-1]["type"] == "ai"
    assert not found[silent]["values"]
    assert found[paused]["status"] == "interrupted"
    got = await client.get(f"/threads/{paused}")
    assert found[paused]["values"] == got.json()["values"]
    assert found[paused]["interrupts"] == got.json()["interrupts"]


async def test_search_without_values_selected_leaves_them_out(client: httpx.AsyncClient) -> None:
    thread_id = await _new(client)
    await client.post(f"/threads/{thread_id}/runs/wait", json=TURN)
    found = await client.post("/threads/search", json={"select": ["thread_id", "status"]})
    assert found.json() == [{"thread_id": thread_id, "status": "idle"}]
