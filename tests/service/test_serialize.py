"""JSON encoding: orjson's output must be what the plain ``jsonable`` + ``json`` path gives."""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.types import Interrupt
from pydantic import BaseModel, Field, computed_field, field_serializer
from pydantic_core import PydanticSerializationError, to_json

from threadkeeper.service import serialize
from threadkeeper.service.serialize import db_dumps, dumps, jsonable


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    label: str


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


CALL = {"name": "weather", "args": {"city": "Oslo"}, "id": "c1", "type": "tool_call"}
VALUES: list[Any] = [
    {"messages": [HumanMessage("hi é ✓", id="1"), AIMessage("", tool_calls=[CALL])]},
    [ToolMessage("12 C", tool_call_id="c1"), Interrupt(value={"ask": "ok?"}, id="i1")],
    {"when": datetime(2026, 12, 3, 14, 0, 5, 123456, tzinfo=UTC), "naive": datetime(2026, 1, 2)},
    {"id": UUID("12345678-1234-5678-1234-567812345678"), "colour": Colour.RED},
    {"point": Point(1, "a"), "tags": ("a", "b"), "raw": b"bytes \xff", "set": {3}},
    {1: "int key", "nested": {"deep": [None, True, 1.5, -3]}, "opaque": Opaque()},
    {"big": 2**70, "small": 1},
    {(1, 2): "a key orjson cannot name"},
    # What a message may carry in its free-form fields, and bytes its serializer refuses.
    [AIMessage("t", additional_kwargs={"at": datetime(2026, 1, 2, tzinfo=UTC), "o": Opaque()})],
    [AIMessage("t", additional_kwargs={"raw": b"\xff", "id": UUID(int=7), 3: Point(2, "b")})],
    # Lists of messages where answers hold them: a search's items, and deeper than it looks.
    [{"values": {"messages": [HumanMessage("a", id="2"), AIMessage("b", id="3")]}, "n": 1}],
    {"a": {"b": {"c": {"d": {"e": [HumanMessage("deep", id="4")]}}}}},
    {"messages": [HumanMessage("h"), {"role": "user", "content": "a dict among models"}]},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_dumps_decodes_to_what_jsonable_gives(value: Any) -> None:
    encoded = dumps(value)
    assert json.loads(encoded) == json.loads(json.dumps(jsonable(value)))
    assert b"\\u00e9" not in encoded  # non-ASCII text stays readable


def test_db_dumps_is_strict_and_keeps_big_integers() -> None:
    assert json.loads(db_dumps({"v": 4, "ids": {"2": 2**70}})) == {"v": 4, "ids": {"2": 2**70}}
    with pytest.raises(TypeError):
        db_dumps({"not json": Opaque()})


def test_what_holds_no_list_of_models_is_encoded_as_it_is_not_copied() -> None:
    plain = {"threads": [{"values": {"n": [1, 2]}, "id": "t"}], "deep": {"x": [{"y": 1}]}}
    assert serialize._batched(plain) is plain
    messages = [HumanMessage("h", id="1")]
    batched = serialize._batched({"values": {"messages": messages}, "other": [{"k": 1}]})
    assert isinstance(batched["values"]["messages"], orjson.Fragment)


class Shouting(BaseModel):
    """A model pydantic does not write as its fields: a field serializer."""

    text: str

    @field_serializer("text")
    def _loud(self, text: str) -> str:
        return text.upper()


class Renamed(BaseModel):
    text: str = Field(serialization_alias="words")
    hidden: int = Field(default=1, exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def length(self) -> int:
        return len(self.text)


class NotedMessage(HumanMessage):
    """A message class of the user's own: its fields may be typed so that pydantic writes them
    otherwise than their values' own types say."""

    note: str = ""


def _odd_tool_call() -> AIMessage:
    """A message changed after it was made, with keys its declared types do not have."""
    message = AIMessage("", tool_calls=[CALL], usage_metadata=USAGE)
    message.tool_calls[0]["extra"] = 5  # type: ignore[typeddict-unknown-key]
    assert message.usage_metadata is not None
    message.usage_metadata["weird"] = 1  # type: ignore[typeddict-unknown-key]
    return message


USAGE: Any = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
ODD_FIELDS = {
    "at": datetime(2026, 1, 2, tzinfo=UTC),
    "day": date(2026, 1, 2),
    "span": timedelta(seconds=3),
    "id": UUID(int=7),
    "colour": Colour.RED,
    "point": Point(1, "a"),
    "set": {1},
    "tuple": (1, 2),
    "raw": b"ok",
    3: "int key",
    "nan": float("nan"),
    "opaque": Opaque(),
    "model": HumanMessage("inside", id="in"),
}
MESSAGE_LISTS: list[list[Any]] = [
    [HumanMessage("hi é ✓", id="1"), AIMessage("", tool_calls=[CALL], id="2")],
    [_odd_tool_call(), ToolMessage("x", tool_call_id="c1", artifact={"any": [1, 2]})],
    [AIMessage("t", additional_kwargs=ODD_FIELDS, response_metadata={"model": "m"})],
    [HumanMessage([{"type": "text", "text": "a"}, {"type": "image", "url": "u"}], name="n")],
    [SystemMessage("s"), AIMessageChunk("chunk", id="k"), RemoveMessage(id="1")],
    [HumanMessage("extra", id="x", extra_field={"kept": True})],  # extra fields
    [AIMessage("t", additional_kwargs={"raw": b"\xff"})],  # bytes pydantic refuses
    [HumanMessage("a"), Shouting(text="a"), Renamed(text="abc")],
    [NotedMessage("mine", note="n"), HumanMessage("theirs")],
]


@pytest.mark.parametrize("messages", MESSAGE_LISTS, ids=range(len(MESSAGE_LISTS)))
def test_a_list_of_models_is_written_as_pydantic_writes_it(messages: list[Any]) -> None:
    """Byte for byte, whether orjson writes the models' fields or pydantic the models."""
    try:
        expected = to_json(messages, fallback=serialize._plain)
    except PydanticSerializationError:
        expected = orjson.dumps(messages, default=serialize._default)
    assert dumps({"messages": messages}) == b'{"messages":' + expected + b"}"


def test_only_langchains_messages_written_as_their_fields_are_written_from_them() -> None:
    for cls in (HumanMessage, AIMessage, AIMessageChunk, ToolMessage, SystemMessage):
        assert serialize._fields_only(cls), cls
    for cls in (Shouting, Renamed, NotedMessage):
        assert not serialize._fields_only(cls), cls
    for messages in MESSAGE_LISTS[:5]:
        assert serialize._fields_json(messages) == to_json(messages, fallback=serialize._plain)
