"""The refund agent: find the order (a tool), apply the policy (a subgraph), ask a person
when the policy says so (``interrupt``), and answer.

Served by threadkeeper through ``langgraph.json``; nothing here knows about the server: the
checkpointer that keeps the conversation across replicas is attached by the server.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from refund_agent.context import Context
from refund_agent.policy import build_policy
from refund_agent.tools import lookup_order

ORDER = re.compile(r"order\s*#?\s*(\d+)", re.IGNORECASE)


class RefundState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    amount: float
    decision: Literal["auto", "needs_approval"]
    approved: bool


def find_order(state: RefundState) -> dict[str, Any]:
    """Ask the tool for the order the customer names, or ask the customer for it."""
    text = str(state["messages"][-1].content)
    match = ORDER.search(text)
    if match is None:
        return {"messages": [AIMessage("Which order number should I refund?")]}
    call = {"name": "lookup_order", "args": {"order_id": int(match.group(1))}, "id": "lookup-1"}
    return {"messages": [AIMessage("", tool_calls=[call])]}


def after_find(state: RefundState) -> Literal["tools", "__end__"]:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else "__end__"


def record(state: RefundState) -> dict[str, Any]:
    result = state["messages"][-1]
    assert isinstance(result, ToolMessage)
    return {"amount": float(json.loads(str(result.content))["amount"])}


def approver(always_ask: bool) -> Any:
    def approve(state: RefundState, runtime: Runtime[Context]) -> dict[str, Any]:
        if not always_ask and state.get("decision") != "needs_approval":
            return {"approved": True}
        reviewer = runtime.context.reviewer if runtime.context else Context().reviewer
        # Pauses the run; the thread waits, on any replica, for Command(resume=...).
        answer = interrupt(approval_request(state["amount"], reviewer))
        return {"approved": is_approved(answer)}

    return approve


def approval_request(amount: float, reviewer: str) -> dict[str, Any]:
    """The question, also as LangChain's human-in-the-loop request (``action_requests`` and
    ``review_configs``), which Agent Chat UI and Agent Inbox show with Approve / Reject."""
    question = f"Refund {amount:.2f}?"
    return {
        "question": question,
        "reviewer": reviewer,
        "action_requests": [
            {"name": "refund", "args": {"amount": amount}, "description": question}
        ],
        "review_configs": [{"action_name": "refund", "allowed_decisions": ["approve", "reject"]}],
    }


def is_approved(answer: object) -> bool:
    """``{"approved": true}``, or a human-in-the-loop answer where every decision approves:
    ``{"decisions": [{"type": "approve"}]}``."""
    if not isinstance(answer, dict):
        return False
    if "decisions" in answer:
        decisions = answer["decisions"]
        return (
            isinstance(decisions, list)
            and bool(decisions)
            and all(isinstance(d, dict) and d.get("type") == "approve" for d in decisions)
        )
    return bool(answer.get("approved"))


def reply(state: RefundState) -> dict[str, Any]:
    if state.get("approved"):
        text = f"Refunded {state['amount']:.2f}."
    else:
        text = f"The refund of {state['amount']:.2f} was not approved."
    return {"messages": [AIMessage(text)]}


def build(always_ask: bool = False) -> StateGraph[RefundState, Context, RefundState, RefundState]:
    builder = StateGraph(RefundState, context_schema=Context)
    builder.add_node("find_order", find_order)
    builder.add_node("tools", ToolNode([lookup_order]))
    builder.add_node("record", record)
    builder.add_node("policy", build_policy())
    builder.add_node("approve", approver(always_ask))
    builder.add_node("reply", reply)
    builder.add_edge(START, "find_order")
    builder.add_conditional_edges("find_order", after_find)
    builder.add_edge("tools", "record")
    builder.add_edge("record", "policy")
    builder.add_edge("policy", "approve")
    builder.add_edge("approve", "reply")
    builder.add_edge("reply", END)
    return builder


graph = build().compile(name="refunds")
