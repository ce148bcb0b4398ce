"""A deterministic chat model that needs no network.

It behaves like a small tool-calling LLM so the whole product can run and be tested offline:
it asks for the calculator, the clock or ``slow_lookup`` when the user's latest message calls
for them, streams its reply token by token, and its reply proves memory by stating the turn
number and quoting the conversation's first user message, and repeats what it is told it
remembers (system messages).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

SLOW_LOOKUP = re.compile(r"look\s*up\s+slowly\s+(\d+(?:\.\d+)?)", re.IGNORECASE)
TIME = re.compile(r"\b(time|clock)\b", re.IGNORECASE)
ARITHMETIC = re.compile(
    r"(?<![\w.])(\(?-?\d+(?:\.\d+)?(?:\s*(?:\*\*|//|[-+*/%])\s*\(?-?\d+(?:\.\d+)?\)?)+)"
)
QUOTE_LIMIT = 200


def _tool_names(kwargs: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in kwargs.get("tools", [])}


def _call(name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(name=name, args=args, id=f"call_{uuid.uuid4().hex[:12]}", type="tool_call")


@dataclass(frozen=True)
class Reading:
    """What the model takes from the messages it is given, read in one pass."""

    humans: int
    first_human: HumanMessage | None
    # Index of the latest human message; -1 when there is none.
    last_human: int
    system_texts: tuple[str, ...]


class Kind(Enum):
    HUMAN = "human"
    SYSTEM = "system"
    OTHER = "other"


# A message's kind by its class: isinstance on LangChain's messages goes through ABCMeta, three
# times the cost of this lookup, and a reply reads a long conversation's whole list.
_KINDS: dict[type, Kind] = {}


def _kind_of(cls: type) -> Kind:
    if issubclass(cls, HumanMessage):
        kind = Kind.HUMAN
    elif issubclass(cls, SystemMessage):
        kind = Kind.SYSTEM
    else:
        kind = Kind.OTHER
    _KINDS[cls] = kind
    return kind


def read(messages: Sequence[BaseMessage]) -> Reading:
    """The human messages' count, first and latest, and the system messages' texts."""
    humans = 0
    first: HumanMessage | None = None
    last = -1
    systems: list[str] = []
    for i, message in enumerate(messages):
        cls = type(message)
        kind = _KINDS.get(cls) or _kind_of(cls)
        if kind is Kind.HUMAN:
            humans += 1
            last = i
            if first is None:
                first = cast(HumanMessage, message)
        elif kind is Kind.SYSTEM:
            systems.append(message.text)
    return Reading(humans, first, last, tuple(systems))


def last_human(messages: Sequence[BaseMessage]) -> int:
    """Index of the latest human message, -1 when there is none: looked for from the end,
    where it is, so planning does not read the whole conversation."""
    for i in range(len(messages) - 1, -1, -1):
        cls = type(messages[i])
        if (_KINDS.get(cls) or _kind_of(cls)) is Kind.HUMAN:
            return i
    return -1


def plan_tool_calls(messages: Sequence[BaseMessage], available: set[str]) -> list[ToolCall]:
    """Tool calls the latest user message asks for, unless they were already answered."""
    if not available:
        return []
    last = last_human(messages)
    if last < 0 or any(isinstance(m, ToolMessage) for m in messages[last + 1 :]):
        return []
    text = messages[last].text
    calls: list[ToolCall] = []
    if "slow_lookup" in available and (match := SLOW_LOOKUP.search(text)):
        calls.append(_call("slow_lookup", {"seconds": float(match.group(1))}))
    elif "calculator" in available and (match := ARITHMETIC.search(text)):
        calls.append(_call("calculator", {"expression": match.group(1).strip()}))
    if "current_time" in available and TIME.search(text):
        calls.append(_call("current_time", {}))
    return calls


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1] + "…"


def compose_reply(messages: Sequence[BaseMessage]) -> str:
    """The reply text: turn number, the first user message, and any tool results."""
    reading = read(messages)
    if reading.first_human is None:
        return "Hello! Say something and I will remember it."
    latest = messages[reading.last_human]
    results = [m.text for m in messages[reading.last_human + 1 :] if isinstance(m, ToolMessage)]
    parts = [
        f"Turn {reading.humans}.",
        f'You first said: "{_quote(reading.first_human.text)}".',
        f'You just said: "{_quote(latest.text)}".',
    ]
    if results:
        parts.append("Tool results: " + "; ".join(results) + ".")
    # What the agent remembers from other threads (the store) comes as system messages.
    parts.extend(reading.system_texts)
    return " ".join(parts)


class OfflineChatModel(BaseChatModel):
    """Deterministic, tool-calling, token-streaming chat model."""

    latency_seconds: float = 0.0
    # Between streamed tokens (after the first), as a real model's output trickles in.
    token_seconds: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "threadkeeper-offline"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _message(self, messages: Sequence[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        calls = plan_tool_calls(messages, _tool_names(kwargs))
        if calls:
            return AIMessage(content="", tool_calls=calls)
        if "tools" in kwargs:
            return AIMessage(content="")
        return AIMessage(content=compose_reply(messages))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._message(messages, kwargs))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_seconds:
            await asyncio.sleep(self.latency_seconds)
        return self._generate(messages, stop, None, **kwargs)

    def _chunks(self, message: AIMessage) -> Iterator[ChatGenerationChunk]:
        if message.tool_calls or not message.text:
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=message.content,
                    tool_call_chunks=[
                        {
                            "name": c["name"],
                            "args": json.dumps(c["args"]),
                            "id": c["id"],
                            "index": i,
                            "type": "tool_call_chunk",
                        }
                        for i, c in enumerate(message.tool_calls)
                    ],
                    chunk_position="last",
                )
            )
            return
        tokens = re.findall(r"\S+\s*", message.text)
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            yield ChatGenerationChunk(
                message=AIMessageChunk(content=token, chunk_position="last" if last else None)
            )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._message(messages, kwargs)):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.latency_seconds:
            await asyncio.sleep(self.latency_seconds)
        for i, chunk in enumerate(self._chunks(self._message(messages, kwargs))):
            if i and self.token_seconds:
                await asyncio.sleep(self.token_seconds)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
