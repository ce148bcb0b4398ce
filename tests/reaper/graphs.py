"""Graphs the reaper tests run besides the service's agent graph.

* ``parent``: the agent graph as a subgraph (its checkpoints live in ``agent:<task>``
  namespaces), a parent ``messages`` DeltaChannel that snapshots every 3 updates (so pruning
  meets existing snapshots mid-chain) and a plain ``operator.add`` channel stored as blobs.
* ``ledger``: a DeltaChannel whose reducer the reaper does not know by default.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import _messages_delta_reducer
from langgraph.graph.state import CompiledStateGraph

from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.checkpointer import FencedPostgresSaver
from threadkeeper.service.db import Pool


class ParentState(TypedDict):
    messages: Annotated[
        list[AnyMessage], DeltaChannel(_messages_delta_reducer, snapshot_frequency=3)
    ]
    notes: Annotated[list[str], operator.add]


def build_parent() -> StateGraph[ParentState]:
    agent = build_graph(OfflineChatModel()).compile()

    def note(state: ParentState) -> dict[str, Any]:
        return {"notes": [f"{len(state['messages'])} messages"]}

    graph = StateGraph(ParentState)
    graph.add_node("agent", agent)
    graph.add_node("note", note)
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "note")
    graph.add_edge("note", END)
    return graph


def concat(state: list[str], batches: Sequence[list[str]]) -> list[str]:
    return [*state, *(item for batch in batches for item in batch)]


class LedgerState(TypedDict):
    ledger: Annotated[list[str], DeltaChannel(concat, snapshot_frequency=1000)]


def build_ledger() -> StateGraph[LedgerState]:
    def record(state: LedgerState) -> dict[str, Any]:
        return {"ledger": [f"entry {len(state['ledger'])}"]}

    graph = StateGraph(LedgerState)
    graph.add_node("record", record)
    graph.add_edge(START, "record")
    graph.add_edge("record", END)
    return graph


def compiled(kind: str, pool: Pool) -> CompiledStateGraph:  # type: ignore[type-arg]
    saver = FencedPostgresSaver(pool)
    if kind == "agent":
        return build_graph(OfflineChatModel()).compile(checkpointer=saver)
    if kind == "parent":
        return build_parent().compile(checkpointer=saver)
    if kind == "ledger":
        return build_ledger().compile(checkpointer=saver)
    raise ValueError(kind)


LAST_NODE = {"agent": "reply", "parent": "note", "ledger": "record"}
