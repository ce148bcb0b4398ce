"""The refund policy as a subgraph of its own: decides whether a person must approve."""

from __future__ import annotations

from typing import Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from refund_agent.context import Context


class PolicyState(TypedDict, total=False):
    amount: float
    decision: Literal["auto", "needs_approval"]


def decide(state: PolicyState, runtime: Runtime[Context]) -> PolicyState:
    limit = runtime.context.approval_threshold if runtime.context else Context().approval_threshold
    return {"decision": "needs_approval" if state["amount"] > limit else "auto"}


def build_policy() -> CompiledStateGraph[PolicyState, Context, PolicyState, PolicyState]:
    builder = StateGraph(PolicyState, context_schema=Context)
    builder.add_node("decide", decide)
    builder.add_edge(START, "decide")
    builder.add_edge("decide", END)
    return builder.compile(name="policy")
