"""The offline model, the tools and titles: deterministic pieces, tested directly."""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel, compose_reply, plan_tool_calls
from threadkeeper.service.agent.tools import TOOLS, calculator, evaluate
from threadkeeper.service.submit import first_user_text
from threadkeeper.service.threads import TITLE_LIMIT, derive_title

ALL = {t.name for t in TOOLS}


@pytest.mark.parametrize(
    ("text", "tool", "args"),
    [
        ("what is 12*7?", "calculator", {"expression": "12*7"}),
        ("compute (2+3)*4 please", "calculator", {"expression": "(2+3)*4"}),
        ("please look up slowly 2.5", "slow_lookup", {"seconds": 2.5}),
        ("what time is it", "current_time", {}),
    ],
)
def test_plans_tool_calls(text: str, tool: str, args: dict[str, object]) -> None:
    calls = plan_tool_calls([HumanMessage(text)], ALL)
    assert [(c["name"], c["args"]) for c in calls] == [(tool, args)]


def test_no_tools_for_chat_or_after_results() -> None:
    assert plan_tool_calls([HumanMessage("hello there")], ALL) == []
    answered = [
        HumanMessage("what is 1+1"),
        AIMessage("", tool_calls=[{"name": "calculator", "args": {}, "id": "c1"}]),
        ToolMessage("1+1 = 2", tool_call_id="c1"),
    ]
    assert plan_tool_calls(answered, ALL) == []
    assert plan_tool_calls([HumanMessage("what is 1+1")], set()) == []


def test_plans_from_the_latest_user_message_only() -> None:
    asked_before = [HumanMessage("what is 2+3"), AIMessage("5"), HumanMessage("thanks")]
    assert plan_tool_calls(asked_before, ALL) == []
    asked_now = [HumanMessage("hello"), AIMessage("hi"), HumanMessageChunk(content="what is 2*4")]
    calls = plan_tool_calls(asked_now, ALL)
    assert [(c["name"], c["args"]) for c in calls] == [("calculator", {"expression": "2*4"})]
    assert plan_tool_calls([AIMessage("what is 2+3")], ALL) == []


def test_reply_proves_memory() -> None:
    history = [HumanMessage("I am Ada"), AIMessage("hi"), HumanMessage("and you?")]
    reply = compose_reply(history)
    assert reply.startswith("Turn 2.")
    assert '"I am Ada"' in reply
    assert '"and you?"' in reply


def test_reply_counts_subclassed_human_messages_and_repeats_system_ones() -> None:
    history = [
        SystemMessage("You remember: tea."),
        HumanMessageChunk(content="first, as a chunk"),
        AIMessage("hi"),
        HumanMessage("second"),
        ToolMessage("42", tool_call_id="c1"),
    ]
    reply = compose_reply(history)
    assert reply.startswith('Turn 2. You first said: "first, as a chunk". You just said: "second".')
    assert reply.endswith("Tool results: 42. You remember: tea.")
    assert compose_reply([AIMessage("only me")]).startswith("Hello!")


async def test_streams_token_by_token() -> None:
    model = OfflineChatModel()
    chunks = [c async for c in model.astream([HumanMessage("stream this please")])]
    assert len(chunks) > 5
    assert "".join(str(c.content) for c in chunks) == compose_reply(
        [HumanMessage("stream this please")]
    )


def test_calculator_is_safe() -> None:
    assert evaluate("2**10 - (3 % 2)") == 1023
    assert calculator.invoke({"expression": "1/0"}).startswith("error")
    assert calculator.invoke({"expression": "__import__('os')"}).startswith("error")
    assert calculator.invoke({"expression": "9**9**9"}).startswith("error")


def test_titles_trim_on_word_boundary() -> None:
    assert derive_title("  short   title ") == "short title"
    long = "word " * 40
    title = derive_title(long)
    assert title is not None
    assert len(title) <= TITLE_LIMIT
    assert title.endswith("word…")
    assert derive_title("   ") is None


def test_first_user_text_shapes() -> None:
    assert first_user_text({"messages": [{"role": "user", "content": "a"}]}) == "a"
    assert first_user_text({"messages": [["human", "b"]]}) == "b"
    assert first_user_text({"messages": [{"type": "human", "content": [{"text": "c"}]}]}) == "c"
    assert first_user_text({"messages": [{"role": "assistant", "content": "x"}]}) is None
    assert first_user_text(None) is None


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting what is handed to a thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_a_turn_without_tools_stays_on_the_event_loop() -> None:
    """LangGraph runs a sync node or router on a thread; every step of a plain turn is async."""
    graph = build_graph(OfflineChatModel()).compile(checkpointer=InMemorySaver())
    loop = asyncio.get_running_loop()
    counting = CountingExecutor()
    loop.set_default_executor(counting)
    try:
        config: RunnableConfig = {"configurable": {"thread_id": "plain"}}
        result = await graph.ainvoke({"messages": [HumanMessage("hello there")]}, config)
        assert result["messages"][-1].content.startswith("Turn 1.")
        assert counting.submitted == 0
        # The counter counts: a tool turn runs the sync calculator on a thread.
        await graph.ainvoke({"messages": [HumanMessage("what is 12*7?")]}, config)
        assert counting.submitted > 0
    finally:
        loop.set_default_executor(ThreadPoolExecutor())
        counting.shutdown(wait=False)


async def test_token_interval_spreads_the_reply_over_time() -> None:
    """THREADKEEPER_OFFLINE_TOKEN_MS: tokens arrive apart, the first one without the pause."""
    model = OfflineChatModel(token_seconds=0.05)
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()
    began = loop.time()
    async for _chunk in model.astream([HumanMessage("one two three four")]):
        arrivals.append(loop.time() - began)
    assert len(arrivals) > 4
    assert arrivals[0] < 0.05
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.045


async def test_an_open_thread_learns_what_another_thread_remembered() -> None:
    """Memory is read every turn, not once per thread: a name stated in another thread of the
    owner while this one is open is in this thread's next answer."""
    graph = build_graph(OfflineChatModel()).compile(
        checkpointer=InMemorySaver(), store=InMemoryStore()
    )
    first: RunnableConfig = {"configurable": {"thread_id": "first"}}
    other: RunnableConfig = {"configurable": {"thread_id": "other"}}
    before = await graph.ainvoke({"messages": [HumanMessage("what is my name?")]}, first)
    assert "your name is" not in before["messages"][-1].content
    await graph.ainvoke({"messages": [HumanMessage("my name is Ada")]}, other)
    after = await graph.ainvoke({"messages": [HumanMessage("what is my name?")]}, first)
    assert "your name is Ada" in after["messages"][-1].content


async def _streamed(graph: Any, text: str, config: RunnableConfig) -> list[tuple[str, Any]]:
    """The node and message of each ``messages`` stream item of one turn."""
    turn = {"messages": [HumanMessage(text)]}
    return [
        (meta["langgraph_node"], chunk)
        async for chunk, meta in graph.astream(turn, config, stream_mode="messages")
    ]


async def test_only_the_reply_and_the_plans_tool_calls_are_streamed_as_messages() -> None:
    """The plan's decision is not an answer: nothing of it streams when it needs no tool,
    and its tool calls arrive whole when it does."""
    graph = build_graph(OfflineChatModel()).compile(checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "streamed"}}
    chat = await _streamed(graph, "hello there", config)
    assert {node for node, _ in chat} == {"reply"}
    assert "".join(str(chunk.content) for _, chunk in chat).startswith("Turn 1.")
    tools = await _streamed(graph, "what is 6*7?", config)
    planned = [chunk for node, chunk in tools if node == "plan"]
    assert len(planned) == 1
    assert [call["name"] for call in planned[0].tool_calls] == ["calculator"]
    assert {node for node, _ in tools} == {"plan", "act", "reply"}
