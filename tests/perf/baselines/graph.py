"""The graph every baseline serves: our plan/act/reply graph and offline model, stock state.

The state is LangGraph's ``MessagesState`` (``add_messages``), as in the tutorials users copy;
ours differs only in storing messages in a ``DeltaChannel``.
"""

from __future__ import annotations

import os
from typing import Any

from langgraph.graph import MessagesState
from langgraph.graph.state import StateGraph

from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel


def stock_graph() -> StateGraph[Any]:
    latency = float(os.environ.get("OFFLINE_LATENCY_MS", "0")) / 1000
    return build_graph(OfflineChatModel(latency_seconds=latency), state_schema=MessagesState)
