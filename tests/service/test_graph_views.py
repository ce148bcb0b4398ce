"""What a graph shows of itself: drawing (with xray), schemas and subgraphs, on a real nested
graph (the demo agent has no subgraph)."""

from __future__ import annotations

from dataclasses import dataclass

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from typing_extensions import TypedDict

from threadkeeper.service import graph_views


class Inner(TypedDict, total=False):
    text: str


class Outer(TypedDict, total=False):
    text: str
    count: int


@dataclass(frozen=True)
class Settings:
    user: str


def _chain(name: str, state: type, *nodes: tuple[str, object]) -> StateGraph:  # type: ignore[type-arg]
    graph = StateGraph(state, context_schema=Settings)
    previous = START
    for node_name, node in nodes:
        graph.add_node(node_name, node)  # type: ignore[call-overload]
        graph.add_edge(previous, node_name)
        previous = node_name
    graph.add_edge(previous, END)
    return graph


def nested() -> CompiledStateGraph:  # type: ignore[type-arg]
    async def shout(state: Inner) -> Inner:
        return {"text": state.get("text", "").upper()}

    deepest = _chain("deepest", Inner, ("shout", shout)).compile()
    middle = _chain("middle", Inner, ("deepest", deepest)).compile()

    async def tally(state: Outer) -> Outer:
        return {"count": len(state.get("text", ""))}

    return _chain("outer", Outer, ("middle", middle), ("tally", tally)).compile(name="outer")


async def test_drawing_shows_subgraphs_only_with_xray() -> None:
    graph = nested()
    flat = {n["id"] for n in (await graph_views.drawing(graph, False))["nodes"]}
    assert {"middle", "tally"} <= flat
    assert not any(":" in n for n in flat)
    deep = {n["id"] for n in (await graph_views.drawing(graph, True))["nodes"]}
    assert "middle:deepest:shout" in deep
    one = {n["id"] for n in (await graph_views.drawing(graph, 1))["nodes"]}
    assert "middle:deepest" in one and "middle:deepest:shout" not in one


def test_schemas() -> None:
    found = graph_views.schemas(nested())
    assert set(found["input_schema"]["properties"]) == {"text", "count"}
    assert set(found["state_schema"]["properties"]) == {"text", "count"}
    assert found["context_schema"]["properties"]["user"]["type"] == "string"
    # LangGraph derives the configurable schema from the context schema, as langgraph-api shows.
    assert set(found["config_schema"]["properties"]) == {"user"}
    assert found["config_schema"]["title"] == "Settings"


async def test_subgraphs_by_namespace_and_recursion() -> None:
    graph = nested()
    assert set(await graph_views.subgraphs(graph, None, recurse=False)) == {"middle"}
    everything = await graph_views.subgraphs(graph, None, recurse=True)
    assert set(everything) == {"middle", "middle|deepest"}
    assert set(everything["middle"]["state_schema"]["properties"]) == {"text"}
    assert set(await graph_views.subgraphs(graph, "middle", recurse=False)) == {"middle"}
    assert await graph_views.subgraphs(graph, "nowhere", recurse=True) == {}
