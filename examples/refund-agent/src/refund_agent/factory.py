"""A graph factory: the server calls it for every run with the run's config.

``configurable.strict`` (set on an assistant or a run) makes every refund need approval.
"""

from __future__ import annotations

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from refund_agent.context import Context
from refund_agent.graph import RefundState, build


def make_graph(
    config: RunnableConfig,
) -> CompiledStateGraph[RefundState, Context, RefundState, RefundState]:
    strict = bool(config.get("configurable", {}).get("strict"))
    return build(always_ask=strict).compile(name="refunds_strict" if strict else "refunds")
