"""The stream modes a client may ask for, and how LangGraph's output becomes their SSE events.

Each client mode reads one of LangGraph's own modes (``messages-tuple`` and the Agent Server's
legacy ``messages`` both read LangGraph's ``messages``) and names its events as the Agent
Server names them. ``events`` is not a LangGraph mode: a run asked for it is executed through
``astream_events`` (v2), each callback event streamed as it comes, and the other modes are taken
from the root graph's ``on_chain_stream`` events, as the Agent Server does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message

from threadkeeper.service.domain import RunEvent


class StreamMode(StrEnum):
    VALUES = "values"
    UPDATES = "updates"
    MESSAGES = "messages"
    MESSAGES_TUPLE = "messages-tuple"
    CUSTOM = "custom"
    DEBUG = "debug"
    TASKS = "tasks"
    CHECKPOINTS = "checkpoints"
    EVENTS = "events"
    TOOLS = "tools"


# Client mode -> the LangGraph mode it reads (None: not a LangGraph mode, see EVENTS).
LANGGRAPH_MODE: dict[StreamMode, str | None] = {
    StreamMode.VALUES: "values",
    StreamMode.UPDATES: "updates",
    StreamMode.MESSAGES: "messages",
    StreamMode.MESSAGES_TUPLE: "messages",
    StreamMode.CUSTOM: "custom",
    StreamMode.DEBUG: "debug",
    StreamMode.TASKS: "tasks",
    StreamMode.CHECKPOINTS: "checkpoints",
    StreamMode.EVENTS: None,
    StreamMode.TOOLS: "tools",
}
# The SSE event of a mode streamed as LangGraph gives it, where the name differs.
EVENT_NAME = {StreamMode.MESSAGES_TUPLE: "messages"}
DEFAULT_MODES = [StreamMode.VALUES]
# The legacy ``messages`` mode's events.
MESSAGES_METADATA = "messages/metadata"
MESSAGES_PARTIAL = "messages/partial"
MESSAGES_COMPLETE = "messages/complete"
ALWAYS_SENT = frozenset(RunEvent)
# Callback events the Agent Server leaves out of ``events`` (LangSmith's own runs).
HIDDEN_TAG = "langsmith:hidden"

Emit = Callable[[str, Any], None]


def requested(kwargs: dict[str, Any]) -> list[StreamMode]:
    """The run's modes, in the order asked (``values`` when it asked for none)."""
    mode = kwargs.get("stream_mode") or DEFAULT_MODES
    return [StreamMode(m) for m in ([mode] if isinstance(mode, str) else mode)]


def modes_of_event(name: str) -> frozenset[str]:
    """The client modes an SSE event is sent for (a joiner's ``?stream_mode=`` filter).

    Event ``messages`` is ``messages-tuple``'s; a joiner asking for ``messages`` gets it too
    (the Python SDK's ``RemoteGraph`` asks for ``messages-tuple`` under that name).
    """
    base = name.split("|", 1)[0]
    if base.startswith("messages/"):
        return frozenset({StreamMode.MESSAGES.value})
    if base == "messages":
        return frozenset({StreamMode.MESSAGES.value, StreamMode.MESSAGES_TUPLE.value})
    return frozenset({base})


def _suffix(ns: Sequence[str]) -> str:
    return "".join(f"|{part}" for part in ns)


@dataclass
class MessageAccumulator:
    """The legacy ``messages`` mode: per message, its metadata once, then the message so far
    after every token (``messages/partial``), or whole when it came whole (``complete``)."""

    emit: Emit
    _seen: dict[str | None, BaseMessage] = field(default_factory=dict)

    def add(self, ns: Sequence[str], chunk: tuple[Any, dict[str, Any]]) -> None:
        message, metadata = chunk
        suffix = _suffix(ns)
        key = getattr(message, "id", None)
        so_far = self._seen.get(key)
        if so_far is None:
            self.emit(MESSAGES_METADATA + suffix, {key: {"metadata": metadata}})
            so_far = message
        elif isinstance(so_far, BaseMessageChunk) and isinstance(message, BaseMessageChunk):
            so_far = so_far + message
        else:
            so_far = message
        self._seen[key] = so_far
        if isinstance(so_far, BaseMessageChunk):
            self.emit(MESSAGES_PARTIAL + suffix, [message_chunk_to_message(so_far)])
        else:
            self.emit(MESSAGES_COMPLETE + suffix, [so_far])


# LangGraph's ``tools`` payloads -> the event names the JS SDK's ``useStream`` reads (its
# ``toolProgress``), and the key each one's detail goes under.
TOOL_EVENTS: dict[str, tuple[str, str, str]] = {
    # LangGraph's event: (the SDK's event, LangGraph's key, the SDK's key)
    "tool-started": ("on_tool_start", "input", "input"),
    "tool-output-delta": ("on_tool_event", "delta", "data"),
    "tool-finished": ("on_tool_end", "output", "output"),
    "tool-error": ("on_tool_error", "message", "error"),
}


@dataclass
class ToolNames:
    """The ``tools`` mode as the Agent Server streams it: each event names its tool call and
    the tool (LangGraph names the tool only when it starts)."""

    _names: dict[str, str] = field(default_factory=dict)

    def payload(self, chunk: dict[str, Any]) -> dict[str, Any]:
        call = chunk.get("tool_call_id")
        kind = TOOL_EVENTS.get(chunk.get("event", ""))
        if kind is None or not isinstance(call, str):
            return chunk  # nothing this version of LangGraph sends: passed on as it is
        event, source, target = kind
        if event == "on_tool_start":
            self._names[call] = chunk.get("tool_name", "")
        name = self._names.get(call, "")
        if event in ("on_tool_end", "on_tool_error"):
            self._names.pop(call, None)
        return {"event": event, "toolCallId": call, "name": name, target: chunk.get(source)}


class Translator:
    """Turns one attempt's LangGraph output into the events its client asked for."""

    def __init__(self, modes: list[StreamMode], emit: Emit, *, values_wanted: bool) -> None:
        self.modes = set(modes)
        self.emit = emit
        self.messages = MessageAccumulator(emit)
        self.tools = ToolNames()
        # LangGraph mode -> event name, for the modes streamed as LangGraph gives them.
        self._plain: dict[str, str] = {}
        for mode in self.modes:
            source = LANGGRAPH_MODE[mode]
            if source is None or mode is StreamMode.MESSAGES:
                continue
            if mode is StreamMode.VALUES and not values_wanted:
                continue
            self._plain[source] = EVENT_NAME.get(mode, mode.value)
        self.legacy_messages = StreamMode.MESSAGES in self.modes
        self.events = StreamMode.EVENTS in self.modes

    def langgraph_modes(self, always: Sequence[str]) -> list[str]:
        """The modes the graph streams: those asked for, and what the executor always needs."""
        asked = {LANGGRAPH_MODE[m] for m in self.modes}
        return sorted({m for m in asked if m is not None} | set(always))

    def chunk(self, ns: Sequence[str], mode: str, chunk: Any) -> None:
        """One item of ``astream``: emitted under its mode's event name, if asked for."""
        name = self._plain.get(mode)
        if name is not None:
            if mode == "messages":
                chunk = list(chunk)
            elif mode == "tools":
                chunk = self.tools.payload(chunk)
            self.emit(name + _suffix(ns), chunk)
        if mode == "messages" and self.legacy_messages:
            self.messages.add(ns, chunk)

    def callback_event(self, event: dict[str, Any]) -> None:
        """One event of ``astream_events`` (v2), streamed as the Agent Server streams it."""
        if HIDDEN_TAG in (event.get("tags") or ()):
            return
        self.emit(StreamMode.EVENTS.value, event)


def sent_for(name: str, modes: set[str]) -> bool:
    """Whether a joiner that asked for ``modes`` gets the event named ``name``."""
    base = name.split("|", 1)[0]
    return base in ALWAYS_SENT or not modes_of_event(name).isdisjoint(modes)
