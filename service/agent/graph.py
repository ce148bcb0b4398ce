"""The agent graph: plan, act (tools), reply, looping while the model asks for tools.

The messages channel is a ``DeltaChannel``: each step stores only its new messages plus a
periodic snapshot, so a thread's storage grows linearly with its length instead of rewriting
the whole list on every step as ``add_messages`` does.

The reply node keeps what the user says about themselves (their name) in the store, the
owner's long-term memory, and tells the model what it remembers from earlier threads.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableConfig
from langgraph.channels.delta import DeltaChannel
from langgraph.config import get_store
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode

# pydantic derives the graph's JSON schemas (/assistants/{id}/schemas) only from this TypedDict
# on Python < 3.12.
from typing_extensions import TypedDict

from threadkeeper.service.agent import memory
from threadkeeper.service.agent.tools import TOOLS
from threadkeeper.service.compat import messages_delta_reducer

GRAPH_ID = "agent"
SNAPSHOT_FREQUENCY = 100


class AgentState(TypedDict):
    messages: Annotated[
        list[AnyMessage],
        DeltaChannel(messages_delta_reducer, snapshot_frequency=SNAPSHOT_FREQUENCY),
    ]


def build_graph(
    model: BaseChatModel, state_schema: type[Any] = AgentState
) -> StateGraph[AgentState]:
    """The uncompiled graph; callers compile it with the checkpointer they need.

    ``state_schema`` exists so tests and benchmarks can compare against stock ``add_messages``.
    """
    # The plan's output is a routing decision, not the answer: with no tool needed it is
    # dropped, and a real model's draft answer streamed from it would reach a chat UI as a
    # second reply. Its tool calls still reach `messages` streams when the plan node ends.
    planner = model.bind_tools(TOOLS).with_config(tags=[TAG_NOSTREAM])
    # Nodes take ``Any``: LangGraph derives channels from node annotations, which would clash
    # with a different ``state_schema``.

    async def plan(state: Any, config: RunnableConfig) -> dict[str, Any]:
        decision = await planner.ainvoke(state["messages"], config)
        if isinstance(decision, AIMessage) and decision.tool_calls:
            return {"messages": [decision]}
        # No tool needed: the reply node answers, so nothing is stored for this decision.
        return {}

    async def reply(state: Any, config: RunnableConfig) -> dict[str, Any]:
        messages = state["messages"]
        store = get_store()
        if store is not None:  # long-term memory, across the owner's threads
            # Recalled on every turn, not once per thread and kept in the state: another thread
            # of the owner may store a name while this one is open, and this thread's next
            # answer must know it. The service's store makes the read one plain statement.
            await memory.remember(store, messages)
            known = await memory.recall(store)
            messages = [known, *messages] if known is not None else messages
        answer = await model.ainvoke(messages, config)
        return {"messages": [answer]}

    # Async on purpose: LangGraph runs a sync router on a thread pool, a thread hop every step.
    async def route(state: Any) -> Literal["act", "reply"]:
        last = state["messages"][-1] if state["messages"] else None
        return "act" if isinstance(last, AIMessage) and last.tool_calls else "reply"

    graph = StateGraph(state_schema)
    graph.add_node("plan", plan)
    graph.add_node("act", ToolNode(TOOLS))
    graph.add_node("reply", reply)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", route, ["act", "reply"])
    graph.add_edge("act", "plan")
    graph.add_edge("reply", END)
    return graph


def compile_graph(model: BaseChatModel) -> CompiledStateGraph[AgentState]:
    """Compiled once per process; each run attaches its own (fenced) checkpointer by copy."""
    return build_graph(model).compile(name=GRAPH_ID)


@functools.cache
def _demo() -> CompiledStateGraph[AgentState]:
    from threadkeeper.service.agent.models import make_model
    from threadkeeper.service.settings import Settings

    settings = Settings()
    model = make_model(
        settings.model,
        offline_latency_seconds=settings.offline_latency_ms / 1000,
        offline_token_seconds=settings.offline_token_ms / 1000,
    )
    return compile_graph(model)


def __getattr__(name: str) -> Any:
    """``graph``: the demo as the built-in deployment names it, compiled on first use with the
    model the service's settings choose (THREADKEEPER_MODEL), not when this module is imported."""
    if name == "graph":
        return _demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
