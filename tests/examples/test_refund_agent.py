"""The example user project in examples/refund-agent, loaded through its own langgraph.json.

The graphs run in-process on LangGraph's InMemorySaver here: this checks the example itself
(tool, subgraph, interrupt and resume, factory, context, env), not the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from threadkeeper.service import deployment, graphs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "refund-agent"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, graphs.LoadedGraph]]:
    # What the user's image does with `dependencies: ["."]`: the package is importable.
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.delenv("REFUND_CURRENCY", raising=False)
    loaded = deployment.load(EXAMPLE / "langgraph.json")
    deployment.apply_env(loaded)
    yield graphs.load_all(loaded)
    os.environ.pop("REFUND_CURRENCY", None)


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_a_large_refund_waits_for_a_person(example: dict[str, graphs.LoadedGraph]) -> None:
    graph = (await example["refunds"].build(RunnableConfig())).copy(
        update={"checkpointer": InMemorySaver()}
    )
    config = RunnableConfig(configurable={"thread_id": "t"})
    context = {"approval_threshold": 100, "reviewer": "ada"}
    paused = await graph.ainvoke(ask("please refund order 20"), config, context=context)
    (pending,) = paused["__interrupt__"]
    assert pending.value["question"] == "Refund 200.00?"
    assert pending.value["reviewer"] == "ada"
    tool_result = paused["messages"][-1]
    assert tool_result.name == "lookup_order" and '"currency": "EUR"' in tool_result.content
    done = await graph.ainvoke(Command(resume={"approved": True}), config, context=context)
    assert done["messages"][-1].content == "Refunded 200.00."
    assert "policy:decide" in graph.get_graph(xray=True).nodes


@pytest.mark.parametrize(
    ("answer", "approved"),
    [
        ({"decisions": [{"type": "approve"}]}, True),
        ({"decisions": [{"type": "reject", "message": "no"}]}, False),
        ({"decisions": []}, False),
        ({"approved": False}, False),
        ("yes", False),
    ],
)
async def test_a_human_in_the_loop_answer_decides_the_refund(
    example: dict[str, graphs.LoadedGraph], answer: object, approved: bool
) -> None:
    """Agent Chat UI answers LangChain's human-in-the-loop request with ``decisions``."""
    graph = (await example["refunds"].build(RunnableConfig())).copy(
        update={"checkpointer": InMemorySaver()}
    )
    config = RunnableConfig(configurable={"thread_id": "t"})
    paused = await graph.ainvoke(ask("please refund order 20"), config)
    (pending,) = paused["__interrupt__"]
    assert pending.value["action_requests"] == [
        {"name": "refund", "args": {"amount": 200.0}, "description": "Refund 200.00?"}
    ]
    assert pending.value["review_configs"] == [
        {"action_name": "refund", "allowed_decisions": ["approve", "reject"]}
    ]
    done = await graph.ainvoke(Command(resume=answer), config)
    expected = "Refunded 200.00." if approved else "The refund of 200.00 was not approved."
    assert done["messages"][-1].content == expected


async def test_the_factory_builds_per_run_from_config(
    example: dict[str, graphs.LoadedGraph],
) -> None:
    loaded = example["refunds_strict"]
    assert loaded.kind is graphs.GraphKind.FACTORY
    strict = await loaded.build(RunnableConfig(configurable={"strict": True}))
    lenient = await loaded.build(RunnableConfig(configurable={}))
    config = RunnableConfig(configurable={"thread_id": "s"})
    small = ask("refund order 1")
    asked = await strict.copy(update={"checkpointer": InMemorySaver()}).ainvoke(small, config)
    assert asked["__interrupt__"]
    answered = await lenient.copy(update={"checkpointer": InMemorySaver()}).ainvoke(small, config)
    assert answered["messages"][-1].content == "Refunded 10.00."
