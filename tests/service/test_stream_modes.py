"""Translating LangGraph's stream output into the Agent Server's events (no graph needed)."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk

from threadkeeper.service.stream_modes import StreamMode, Translator, sent_for


def _translator(*modes: StreamMode) -> tuple[Translator, list[tuple[str, Any]]]:
    emitted: list[tuple[str, Any]] = []
    return Translator(list(modes), lambda e, d: emitted.append((e, d)), values_wanted=True), emitted


def test_a_failing_tool_is_reported_with_its_name_and_message() -> None:
    translator, emitted = _translator(StreamMode.TOOLS)
    started = {"event": "tool-started", "tool_call_id": "c1", "tool_name": "calc", "input": {}}
    translator.chunk((), "tools", started)
    translator.chunk((), "tools", {"event": "tool-error", "tool_call_id": "c1", "message": "boom"})
    assert emitted[-1] == (
        "tools",
        {"event": "on_tool_error", "toolCallId": "c1", "name": "calc", "error": "boom"},
    )


def test_legacy_messages_accumulate_chunks_and_pass_whole_messages_complete() -> None:
    translator, emitted = _translator(StreamMode.MESSAGES)
    meta = {"langgraph_node": "reply"}
    translator.chunk(("sub:1",), "messages", (AIMessageChunk(content="Hel", id="m1"), meta))
    translator.chunk(("sub:1",), "messages", (AIMessageChunk(content="lo", id="m1"), meta))
    translator.chunk((), "messages", (AIMessage(content="whole", id="m2"), meta))
    names = [e for e, _ in emitted]
    assert names == [
        "messages/metadata|sub:1",
        "messages/partial|sub:1",
        "messages/partial|sub:1",
        "messages/metadata",
        "messages/complete",
    ]
    assert emitted[0][1] == {"m1": {"metadata": meta}}
    assert emitted[2][1][0].content == "Hello" and emitted[2][1][0].type == "ai"
    assert emitted[4][1][0].content == "whole"


def test_a_joiner_filter_matches_each_mode_its_events() -> None:
    assert sent_for("messages/partial|sub:1", {"messages"})
    assert not sent_for("messages/partial", {"messages-tuple"})
    assert sent_for("messages", {"messages-tuple"}) and sent_for("messages", {"messages"})
    assert sent_for("end", {"tools"}) and not sent_for("values", {"tools"})
