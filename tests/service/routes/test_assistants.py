"""Assistant endpoints, in process against a real Postgres, with two owners (header auth)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import httpx
import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from tests.support.fixtures import app_client
from tests.support.runs import claimed
from tests.support.runs import executor as executor_for
from threadkeeper.service import assistants, catalog
from threadkeeper.service.app import create_app
from threadkeeper.service.db import Pool
from threadkeeper.service.domain import SortOrder
from threadkeeper.service.errors import NotFound
from threadkeeper.service.graphs import GraphKind, LoadedGraph
from threadkeeper.service.registry import Registry
from threadkeeper.service.settings import Settings

SYSTEM_ID = "fe096781-5601-53d2-b2f6-0d3403f7e9ca"
ALICE = {"X-Forwarded-User": "alice"}
BOB = {"X-Forwarded-User": "bob"}
REPLICA = "assistants-test"


@pytest.fixture
async def two(settings_for: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests name their owner in the auth header."""
    async with app_client(create_app(settings_for(auth="header"), run_migrations=False)) as c:
        yield c


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    return body


async def create(client: httpx.AsyncClient, who: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await client.post("/assistants", json={"graph_id": "agent", **body}, headers=who)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def test_the_system_assistant_is_everyones(two: httpx.AsyncClient) -> None:
    """Its id is the Agent Server's; reachable by id or graph id; read-only for all."""
    for ident in (SYSTEM_ID, "agent", SYSTEM_ID.upper()):
        r = await two.get(f"/assistants/{ident}", headers=BOB)
        assert r.status_code == 200, (ident, r.text)
        assert r.json()["assistant_id"] == SYSTEM_ID
        assert r.json()["graph_id"] == "agent"
        assert r.json()["metadata"] == {"created_by": "system"}
    for who in (ALICE, BOB):
        assert (await two.post("/assistants/count", json={}, headers=who)).json() == 1
    writes = [
        ("PATCH", {"name": "mine now"}),
        ("DELETE", None),
    ]
    for method, body in writes:
        for ident in (SYSTEM_ID, "agent"):
            r = await two.request(method, f"/assistants/{ident}", json=body, headers=ALICE)
            problem(r, 403)
    r = await two.post(f"/assistants/{SYSTEM_ID}/latest", json={"version": 1}, headers=ALICE)
    problem(r, 403)
    body = {"graph_id": "agent", "assistant_id": SYSTEM_ID}
    problem(await two.post("/assistants", json=body, headers=ALICE), 403)
    assert (await two.get("/assistants/agent", headers=BOB)).json()["name"] == "agent"


async def test_create_get_patch_versions_latest_delete(two: httpx.AsyncClient) -> None:
    made = await create(
        two,
        ALICE,
        name="Helper",
        description="first",
        config={"tags": ["a"]},
        context={"tone": "dry"},
        metadata={"team": "x"},
    )
    aid = made["assistant_id"]
    assert made["version"] == 1
    # config.configurable and context mirror each other, as on the Agent Server.
    assert made["config"] == {"tags": ["a"], "configurable": {"tone": "dry"}}
    assert made["context"] == {"tone": "dry"}
    assert (await two.get(f"/assistants/{aid}", headers=ALICE)).json() == made

    r = await two.patch(
        f"/assistants/{aid}",
        json={"context": {"tone": "warm"}, "metadata": {"v": 2}},
        headers=ALICE,
    )
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["version"] == 2
    assert second["context"] == {"tone": "warm"}
    assert second["metadata"] == {"team": "x", "v": 2}  # merged, not replaced
    assert second["name"] == "Helper" and second["description"] == "first"
    r = await two.patch(f"/assistants/{aid}", json={"name": "Renamed"}, headers=ALICE)
    assert r.json()["version"] == 3 and r.json()["context"] == {"tone": "warm"}

    versions = (await two.post(f"/assistants/{aid}/versions", json={}, headers=ALICE)).json()
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert [v["name"] for v in versions] == ["Renamed", "Helper", "Helper"]
    assert versions[2]["context"] == {"tone": "dry"}
    page = await two.post(
        f"/assistants/{aid}/versions", json={"limit": 1, "offset": 1}, headers=ALICE
    )
    assert [v["version"] for v in page.json()] == [2]
    tagged = await two.post(
        f"/assistants/{aid}/versions", json={"metadata": {"v": 2}}, headers=ALICE
    )
    assert [v["version"] for v in tagged.json()] == [3, 2]

    r = await two.post(f"/assistants/{aid}/latest", json={"version": 1}, headers=ALICE)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert r.json()["context"] == {"tone": "dry"} and r.json()["name"] == "Helper"
    now = (await two.get(f"/assistants/{aid}", headers=ALICE)).json()
    assert now["version"] == 1 and now["metadata"] == {"team": "x"}
    # A change after going back makes a new version after the newest, not after the current.
    r = await two.patch(f"/assistants/{aid}", json={"description": "again"}, headers=ALICE)
    assert r.json()["version"] == 4 and r.json()["context"] == {"tone": "dry"}
    problem(await two.post(f"/assistants/{aid}/latest", json={"version": 9}, headers=ALICE), 404)
    problem(await two.post(f"/assistants/{aid}/latest", json={"version": 0}, headers=ALICE), 422)
    problem(await two.post(f"/assistants/{aid}/latest", json={}, headers=ALICE), 422)

    r = await two.delete(f"/assistants/{aid}", headers=ALICE)
    assert r.status_code == 204
    problem(await two.get(f"/assistants/{aid}", headers=ALICE), 404)
    problem(await two.post(f"/assistants/{aid}/versions", json={}, headers=ALICE), 404)
    problem(await two.delete(f"/assistants/{aid}", headers=ALICE), 404)


async def test_create_refusals_and_if_exists(two: httpx.AsyncClient) -> None:
    r = await two.post("/assistants", json={"graph_id": "nope"}, headers=ALICE)
    assert "nope" in problem(r, 404)["detail"]
    both = {"graph_id": "agent", "context": {"a": 1}, "config": {"configurable": {"a": 1}}}
    problem(await two.post("/assistants", json=both, headers=ALICE), 422)
    problem(await two.post("/assistants", json={}, headers=ALICE), 422)
    problem(await two.post("/assistants", content=b"", headers=ALICE), 422)
    problem(await two.post("/assistants", json={"graph_id": "agent", "x": 1}, headers=ALICE), 422)
    body = {"graph_id": "agent", "if_exists": "update"}
    problem(await two.post("/assistants", json=body, headers=ALICE), 422)

    aid = str(uuid.uuid4())
    first = await create(two, ALICE, assistant_id=aid, name="one")
    again = await create(two, ALICE, assistant_id=aid, name="two", if_exists="do_nothing")
    assert again == first
    r = await two.post(
        "/assistants", json={"graph_id": "agent", "assistant_id": aid}, headers=ALICE
    )
    problem(r, 409)
    assert (await two.post("/assistants/count", json={}, headers=ALICE)).json() == 2


async def test_patch_refusals(two: httpx.AsyncClient) -> None:
    aid = (await create(two, ALICE))["assistant_id"]
    problem(await two.patch(f"/assistants/{aid}", json={"graph_id": "nope"}, headers=ALICE), 404)
    both = {"context": {"a": 1}, "config": {"configurable": {"a": 1}}}
    problem(await two.patch(f"/assistants/{aid}", json=both, headers=ALICE), 422)
    problem(await two.patch(f"/assistants/{uuid.uuid4()}", json={}, headers=ALICE), 404)
    problem(await two.patch("/assistants/not-an-id", json={}, headers=ALICE), 404)
    problem(await two.delete(f"/assistants/{aid}?delete_threads=true", headers=ALICE), 422)
    problem(await two.delete(f"/assistants/{aid}?delete_threads=maybe", headers=ALICE), 422)
    # Nothing changed by the refusals.
    versions = (await two.post(f"/assistants/{aid}/versions", json={}, headers=ALICE)).json()
    assert len(versions) == 1


async def test_another_owners_assistant_is_404(two: httpx.AsyncClient) -> None:
    aid = (await create(two, ALICE, name="secret", metadata={"k": "v"}))["assistant_id"]
    for method, path, body in [
        ("GET", f"/assistants/{aid}", None),
        ("PATCH", f"/assistants/{aid}", {"name": "stolen"}),
        ("DELETE", f"/assistants/{aid}", None),
        ("POST", f"/assistants/{aid}/versions", {}),
        ("POST", f"/assistants/{aid}/latest", {"version": 1}),
        ("GET", f"/assistants/{aid}/graph", None),
        ("GET", f"/assistants/{aid}/schemas", None),
        ("GET", f"/assistants/{aid}/subgraphs", None),
    ]:
        problem(await two.request(method, path, json=body, headers=BOB), 404)
    found = await two.post("/assistants/search", json={"metadata": {"k": "v"}}, headers=BOB)
    assert found.json() == []
    assert (await two.post("/assistants/count", json={}, headers=BOB)).json() == 1  # system
    # Taken, without saying by whom, whatever if_exists says.
    for if_exists in ("raise", "do_nothing"):
        body = {"graph_id": "agent", "assistant_id": aid, "if_exists": if_exists}
        problem(await two.post("/assistants", json=body, headers=BOB), 409)
    tid = (await two.post("/threads", json={}, headers=BOB)).json()["thread_id"]
    run = {"assistant_id": aid, "input": {"messages": [{"role": "user", "content": "hi"}]}}
    problem(await two.post(f"/threads/{tid}/runs", json=run, headers=BOB), 404)
    mine = (await two.get(f"/assistants/{aid}", headers=ALICE)).json()
    assert mine["name"] == "secret" and mine["version"] == 1


async def test_search_and_count(two: httpx.AsyncClient) -> None:
    a = await create(two, ALICE, name="Research Bot", metadata={"team": "r", "tier": 1})
    b = await create(two, ALICE, name="Support bot", metadata={"team": "s"})
    c = await create(two, ALICE, name="Writer", metadata={"team": "r", "tier": 2})

    async def search(**body: Any) -> list[str]:
        r = await two.post("/assistants/search", json=body, headers=ALICE)
        assert r.status_code == 200, r.text
        return [x["assistant_id"] for x in r.json()]

    newest_first = [c["assistant_id"], b["assistant_id"], a["assistant_id"], SYSTEM_ID]
    assert await search() == newest_first
    assert await search(sort_order="asc") == newest_first[::-1]
    assert await search(name="BOT") == [b["assistant_id"], a["assistant_id"]]
    assert await search(metadata={"team": "r"}) == [c["assistant_id"], a["assistant_id"]]
    assert await search(metadata={"team": "r", "tier": 2}) == [c["assistant_id"]]
    assert await search(graph_id="agent", limit=2, offset=1) == newest_first[1:3]
    names = await two.post(
        "/assistants/search", json={"sort_by": "name", "sort_order": "asc"}, headers=ALICE
    )
    assert [x["name"] for x in names.json()] == ["agent", "Research Bot", "Support bot", "Writer"]
    r = await two.post("/assistants/search", json={"limit": 2, "select": ["name"]}, headers=ALICE)
    assert r.json() == [{"name": "Writer"}, {"name": "Support bot"}]
    assert r.headers["X-Pagination-Total"] == "4" and r.headers["X-Pagination-Next"] == "2"

    async def count(**body: Any) -> int:
        r = await two.post("/assistants/count", json=body, headers=ALICE)
        assert r.status_code == 200, r.text
        n: int = r.json()
        return n

    assert await count() == 4
    assert await count(name="bot") == 2
    assert await count(metadata={"team": "r"}) == 2
    assert await count(graph_id="agent") == 4

    for bad in (
        {"sort_by": "owner"},
        {"sort_order": "up"},
        {"select": ["owner"]},
        {"limit": 0},
        {"offset": -1},
        {"metadata": "team"},
    ):
        problem(await two.post("/assistants/search", json=bad, headers=ALICE), 422)
    problem(await two.post("/assistants/search", json={"graph_id": "nope"}, headers=ALICE), 404)
    problem(await two.post("/assistants/count", json={"graph_id": "nope"}, headers=ALICE), 404)


async def test_graph_schemas_subgraphs(two: httpx.AsyncClient) -> None:
    aid = (await create(two, ALICE))["assistant_id"]
    for ident in ("agent", SYSTEM_ID, aid):
        r = await two.get(f"/assistants/{ident}/graph", headers=ALICE)
        assert r.status_code == 200, r.text
        nodes = {n["id"] for n in r.json()["nodes"]}
        assert {"__start__", "plan", "act", "reply", "__end__"} <= nodes
        assert all("id" not in (n.get("data") or {}) for n in r.json()["nodes"])
        assert {"source": "act", "target": "plan"} in [
            {"source": e["source"], "target": e["target"]} for e in r.json()["edges"]
        ]
    for xray in ("true", "1", "false"):
        assert (await two.get(f"/assistants/{aid}/graph?xray={xray}", headers=ALICE)).is_success
    for xray in ("0", "-2", "deep"):
        problem(await two.get(f"/assistants/{aid}/graph?xray={xray}", headers=ALICE), 422)

    schemas = (await two.get(f"/assistants/{aid}/schemas", headers=ALICE)).json()
    assert schemas["graph_id"] == "agent"
    assert set(schemas) == {
        "graph_id",
        "input_schema",
        "output_schema",
        "state_schema",
        "config_schema",
        "context_schema",
    }
    assert "messages" in schemas["input_schema"]["properties"]
    assert "messages" in schemas["state_schema"]["properties"]
    # The demo agent has no subgraphs.
    assert (await two.get(f"/assistants/{aid}/subgraphs", headers=ALICE)).json() == {}
    r = await two.get(f"/assistants/{aid}/subgraphs/plan?recurse=true", headers=ALICE)
    assert r.json() == {}
    problem(await two.get(f"/assistants/{aid}/subgraphs?recurse=2", headers=ALICE), 422)
    problem(await two.get(f"/assistants/{uuid.uuid4()}/schemas", headers=ALICE), 404)


async def test_info(two: httpx.AsyncClient) -> None:
    r = await two.get("/info")
    assert r.status_code == 200
    assert r.json()["flags"]["assistants"] is True
    assert r.json()["graphs"] == ["agent"]


class Greeting(TypedDict, total=False):
    seen: str


@dataclass(frozen=True)
class Caller:
    name: str
    greeting: str


def echo_graph() -> CompiledStateGraph[Greeting]:
    """Says what the run's context and configurable hold."""

    async def echo(state: Greeting, config: RunnableConfig, runtime: Runtime[Caller]) -> Greeting:
        configurable = config["configurable"]
        return {
            "seen": f"{runtime.context.greeting} {runtime.context.name} "
            f"{configurable['greeting']} {configurable['name']} "
            f"{configurable['assistant_id']} {configurable['graph_id']}"
        }

    graph = StateGraph(Greeting, context_schema=Caller)
    graph.add_node("echo", echo)
    graph.add_edge(START, "echo")
    graph.add_edge("echo", END)
    return graph.compile(name="agent")


async def test_a_run_starts_from_its_assistants_config_and_context(
    settings_for: Callable[..., Settings], pool: Pool
) -> None:
    """The run's own context wins key by key over the assistant's; the assistant and its graph
    are recorded in ``configurable``. The service here serves only the demo graph, so the run
    the service queued is executed by a test executor on a graph that echoes what it got."""
    app = create_app(settings_for(auth="header", workers=0), run_migrations=False)
    async with app_client(app) as client:
        made = await create(
            client,
            ALICE,
            config={"tags": ["assistant"]},
            context={"name": "ada", "greeting": "hello"},
        )
        aid = made["assistant_id"]
        tid = (await client.post("/threads", json={}, headers=ALICE)).json()["thread_id"]
        body = {"assistant_id": aid, "input": {}, "context": {"greeting": "hi"}}
        r = await client.post(f"/threads/{tid}/runs", json=body, headers=ALICE)
        assert r.status_code == 200, r.text
        queued = r.json()
        assert queued["assistant_id"] == aid
        for unknown in ("nope", str(uuid.uuid4())):
            body = {"assistant_id": unknown, "input": {}}
            r = await client.post(f"/threads/{tid}/runs", json=body, headers=ALICE)
            assert unknown in problem(r, 404)["detail"]
        system = await client.post(
            f"/threads/{tid}/runs", json={"assistant_id": "agent", "input": {}}, headers=ALICE
        )
        assert system.json()["assistant_id"] == SYSTEM_ID
    kwargs = queued["kwargs"]
    assert kwargs["context"] == {"name": "ada", "greeting": "hi"}
    assert kwargs["config"]["tags"] == ["assistant"]
    assert kwargs["config"]["configurable"]["graph_id"] == "agent"
    system_configurable = system.json()["kwargs"]["config"]["configurable"]
    assert system_configurable == {"assistant_id": SYSTEM_ID, "graph_id": "agent"}

    run = await claimed(pool, REPLICA, input={}, kwargs=kwargs, assistant_id=aid)
    attempt = executor_for(pool, echo_graph(), REPLICA).start(run)
    assert attempt.task is not None
    outcome = await attempt.task
    assert outcome.status == "success", outcome.error
    assert outcome.values == {"seen": f"hi ada hi ada {aid} agent"}


async def test_concurrent_changes_each_make_a_version(two: httpx.AsyncClient) -> None:
    aid = (await create(two, ALICE))["assistant_id"]
    patches = [
        two.patch(f"/assistants/{aid}", json={"metadata": {f"k{i}": i}}, headers=ALICE)
        for i in range(8)
    ]
    answers = await asyncio.gather(*patches)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert sorted(r.json()["version"] for r in answers) == list(range(2, 10))
    now = (await two.get(f"/assistants/{aid}", headers=ALICE)).json()
    assert now["version"] == 9
    assert now["metadata"] == {f"k{i}": i for i in range(8)}


async def test_an_assistant_of_a_graph_no_longer_served_is_hidden(
    two: httpx.AsyncClient, pool: Pool
) -> None:
    """A deployment that dropped a graph hides its assistants, as the Agent Server does."""
    aid = (await create(two, ALICE))["assistant_id"]
    other = Registry(
        {"other": LoadedGraph("other", GraphKind.COMPILED, compiled=echo_graph())}, pool
    )
    async with pool.connection() as conn:
        with pytest.raises(NotFound):
            await catalog.visible(conn, other, aid, "alice")
        flt = assistants.AssistantFilter(owner="alice", graph_ids=other.graph_ids)
        assert await assistants.count(conn, flt) == 0
        served = assistants.AssistantFilter(owner="alice", graph_ids=("agent",))
        assert await assistants.count(conn, served) == 2


async def test_replicas_starting_together_make_each_system_assistant_once(pool: Pool) -> None:
    graphs = ["agent", "other", "third"]

    async def start_up() -> None:
        async with pool.connection() as conn:
            await assistants.ensure_system(conn, graphs)

    await asyncio.gather(*(start_up() for _ in range(8)))
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT graph_id, count(*) AS n FROM assistant_versions GROUP BY graph_id"
        )
        assert {r["graph_id"]: r["n"] for r in await cur.fetchall()} == dict.fromkeys(graphs, 1)
        flt = assistants.AssistantFilter(owner="anyone", graph_ids=tuple(graphs))
        found, total = await assistants.search(
            conn,
            flt,
            sort_by=assistants.SortBy.GRAPH_ID,
            sort_order=SortOrder.ASC,
            limit=10,
            offset=0,
        )
    assert total == 3
    assert [a.graph_id for a in found] == sorted(graphs)
    assert str(found[0].assistant_id) == SYSTEM_ID
    assert all(a.is_system and a.metadata == {"created_by": "system"} for a in found)


async def test_a_config_of_the_wrong_shape_is_refused(two: httpx.AsyncClient) -> None:
    """Checked as the Agent Server checks a config, before anything is stored or merged."""
    aid = (await create(two, ALICE))["assistant_id"]
    tid = (await two.post("/threads", json={}, headers=ALICE)).json()["thread_id"]
    for config in ({"configurable": 5}, {"tags": "a"}, {"recursion_limit": 0}, []):
        r = await two.post(
            "/assistants", json={"graph_id": "agent", "config": config}, headers=ALICE
        )
        assert "config" in problem(r, 422)["detail"]
        problem(await two.patch(f"/assistants/{aid}", json={"config": config}, headers=ALICE), 422)
        run = {"assistant_id": aid, "input": {}, "config": config}
        problem(await two.post(f"/threads/{tid}/runs", json=run, headers=ALICE), 422)
    assert (await two.post("/assistants/count", json={}, headers=ALICE)).json() == 2
    assert len((await two.get(f"/threads/{tid}/runs", headers=ALICE)).json()) == 0
