"""Long-term memory through real ``serve`` processes and the official SDK: across threads and
replicas, per owner, and semantic search configured by a project's ``langgraph.json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from tests.support.processes import ServiceProcess
from threadkeeper.service.cli import main

pytestmark = pytest.mark.slow

Replicas = Callable[..., ServiceProcess]
HEADER_AUTH = {"THREADKEEPER_AUTH": "header"}


def as_owner(server: ServiceProcess, who: str) -> LangGraphClient:
    return get_client(url=server.url, headers={"X-Forwarded-User": who})


async def say(client: LangGraphClient, text: str) -> str:
    """One turn of the demo agent in a NEW thread; its reply."""
    thread = await client.threads.create()
    result: Any = await client.runs.wait(
        thread["thread_id"], "agent", input={"messages": [{"role": "user", "content": text}]}
    )
    reply: str = result["messages"][-1]["content"]
    return reply


async def test_memory_crosses_threads_and_replicas_but_not_owners(replicas: Replicas) -> None:
    a = replicas("a", **HEADER_AUTH).start()
    b = replicas("b", **HEADER_AUTH).start(migrate=False)
    ada_a, ada_b, bob_b = (
        as_owner(a, "ada@example.com"),
        as_owner(b, "ada@example.com"),
        as_owner(b, "bob"),
    )

    await say(ada_a, "remember that my name is Ada")
    assert "your name is Ada" in await say(ada_b, "what is my name?")  # a new thread, on b
    assert "Ada" not in await say(bob_b, "what is my name?")

    # What the graph stored is the owner's, in the namespace the graph named, on any replica.
    found = await ada_b.store.search_items(["memories"])
    assert [(i["namespace"], i["key"], i["value"]) for i in found["items"]] == [
        (["memories", "profile"], "name", {"name": "Ada"})
    ]
    assert await bob_b.store.search_items(["memories"]) == {"items": []}
    assert await bob_b.store.get_item(["memories", "profile"], key="name") is None

    # Bob's own memory does not overwrite Ada's, though the graph uses the same namespace.
    await say(bob_b, "my name is Bob")
    assert "your name is Ada" in await say(ada_a, "who am I?")
    assert "your name is Bob" in await say(bob_b, "who am I?")


async def test_sdk_store_client_unchanged(replicas: Replicas) -> None:
    server = replicas(**HEADER_AUTH).start()
    ada, bob = as_owner(server, "ada"), as_owner(server, "bob")

    await ada.store.put_item(["docs", "2024"], key="a", value={"title": "tea", "n": 1})
    await ada.store.put_item(["docs", "2025"], key="b", value={"title": "coffee", "n": 2})
    await ada.store.put_item(["links"], key="c", value={"url": "x"}, ttl=60)
    item = await ada.store.get_item(["docs", "2024"], key="a")
    assert item is not None and item["value"] == {"title": "tea", "n": 1}

    found = await ada.store.search_items(["docs"], filter={"n": 2})
    assert [i["key"] for i in found["items"]] == ["b"]
    page = await ada.store.search_items(["docs"], limit=1, offset=1)
    assert len(page["items"]) == 1
    listed = await ada.store.list_namespaces(prefix=["docs"])
    assert sorted(listed["namespaces"]) == [["docs", "2024"], ["docs", "2025"]]
    assert (await ada.store.list_namespaces(max_depth=1))["namespaces"] == [["docs"], ["links"]]
    suffixed = await ada.store.list_namespaces(suffix=["2025"])
    assert suffixed["namespaces"] == [["docs", "2025"]]
    assert await bob.store.list_namespaces() == {"namespaces": []}

    await bob.store.delete_item(["docs", "2024"], key="a")  # not Bob's: nothing happens
    assert await ada.store.get_item(["docs", "2024"], key="a") is not None
    await ada.store.delete_item(["docs", "2024"], key="a")
    assert await ada.store.get_item(["docs", "2024"], key="a") is None

    with pytest.raises(httpx.HTTPStatusError) as refused:
        await ada.store.search_items(["docs"], limit=0)
    assert refused.value.response.status_code == 422


# Semantic search needs an embedding model; no model runs here without a hub download, so a
# deterministic function stands in for one: each word votes for the topic it belongs to. The
# rest is real: the project's langgraph.json, pgvector, the store's index and its ranking.
EMBED = """
TOPICS = {
    "food": {"pizza", "pasta", "cook", "dinner", "eat", "hungry", "lunch", "recipe"},
    "pets": {"dog", "cat", "puppy", "kitten", "pet", "walk", "vet"},
    "travel": {"flight", "trip", "paris", "hotel", "travel", "passport", "beach"},
    "work": {"meeting", "deadline", "boss", "report", "office", "email"},
}


def embed(texts):
    out = []
    for text in texts:
        words = {w.strip("?.,!").lower() for w in text.split()}
        vector = [float(len(words & topic)) + 0.01 for topic in TOPICS.values()]
        norm = sum(v * v for v in vector) ** 0.5
        out.append([v / norm for v in vector])
    return out
"""

# A graph reaching the store the other two ways LangGraph offers: ``runtime.store`` and
# ``get_store()``.
GRAPH = """
from typing import TypedDict

from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime


class State(TypedDict, total=False):
    note: str
    query: str
    best: str


async def save(state: State, runtime: Runtime) -> dict:
    if state.get("note"):
        await runtime.store.aput(("notes",), str(abs(hash(state["note"]))), {"text": state["note"]})
    return {}


async def find(state: State) -> dict:
    found = await get_store().asearch(("notes",), query=state.get("query") or "", limit=1)
    return {"best": found[0].value["text"] if found else ""}


builder = StateGraph(State)
builder.add_node("save", save)
builder.add_node("find", find)
builder.add_edge(START, "save")
builder.add_edge("save", "find")
builder.add_edge("find", END)
graph = builder.compile()
"""

NOTES = [
    "my dog needs a walk every morning",
    "we booked a flight and a hotel in paris",
    "I love to cook pasta for dinner",
    "the report deadline is on friday",
]


def write_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "embed.py").write_text(EMBED)
    (root / "graph.py").write_text(GRAPH)
    config = {
        "graphs": {"notes": "./graph.py:graph"},
        "store": {
            "index": {"dims": 4, "embed": "./embed.py:embed", "fields": ["text"]},
            "ttl": {"default_ttl": 60, "refresh_on_read": True},
        },
    }
    (root / "langgraph.json").write_text(json.dumps(config))
    return root


async def test_semantic_search_from_the_projects_index(replicas: Replicas, tmp_path: Path) -> None:
    server = replicas(cwd=write_project(tmp_path / "project"), **HEADER_AUTH).start()
    ada, bob = as_owner(server, "ada"), as_owner(server, "bob")

    for note in NOTES:  # through the graph: runtime.store
        thread = await ada.threads.create()
        await ada.runs.wait(thread["thread_id"], "notes", input={"note": note})
    thread = await ada.threads.create()
    result: Any = await ada.runs.wait(
        thread["thread_id"], "notes", input={"query": "what should I eat tonight?"}
    )
    assert result["best"] == "I love to cook pasta for dinner"  # get_store(), ranked

    found = await ada.store.search_items(["notes"], query="is my puppy ok at the vet?")
    ranked = [i["value"]["text"] for i in found["items"]]
    assert ranked[0] == "my dog needs a walk every morning"
    assert sorted(ranked) == sorted(NOTES)
    scores = [i["score"] for i in found["items"]]
    assert scores == sorted(scores, reverse=True)
    assert await bob.store.search_items(["notes"], query="dinner") == {"items": []}


def test_the_migrate_job_creates_the_vector_table_replicas_search(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the chart runs it: ``migrate`` (with the config) once, replicas ``--no-migrate``."""
    project = write_project(tmp_path / "project")
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    monkeypatch.setenv("THREADKEEPER_LOG_FORMAT", "console")
    assert main(["migrate", "--config", str(project / "langgraph.json")]) == 0

    replica = ServiceProcess(empty_database_url, tmp_path, "r", cwd=project, **HEADER_AUTH)
    with replica.start(migrate=False):
        ada = httpx.Client(base_url=replica.url, headers={"X-Forwarded-User": "ada"})
        for key, note in enumerate(NOTES):
            body = {"namespace": ["notes"], "key": str(key), "value": {"text": note}}
            assert ada.put("/store/items", json=body).status_code == 204
        found = ada.post("/store/items/search", json={"query": "hungry for lunch"}).json()
        assert found["items"][0]["value"]["text"] == "I love to cook pasta for dinner"


def test_migrate_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "langgraph.json"
    bad.write_text(json.dumps({"graphs": {"a": "./a.py:g"}, "store": {"index": {"dims": 0}}}))
    assert main(["migrate", "--config", str(bad)]) == 2
