"""Turning database rows and LangGraph objects into the Agent Server's JSON shapes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from functools import lru_cache
from operator import attrgetter
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson
from langgraph.types import Interrupt, StateSnapshot
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_json
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from threadkeeper.service.runs import Run
    from threadkeeper.service.threads import Thread


def jsonable(value: Any) -> Any:
    """Best-effort conversion to JSON-compatible data (messages, dataclasses, UUIDs ...)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return jsonable(_model_data(value))
    return jsonable(_plain(value))


# A model (a LangChain message, mostly) is written by its own pydantic serializer in JSON mode,
# the same in ``dumps`` and in ``jsonable``: in Rust, it takes half the time of ``model_dump``
# followed by orjson, which counts in a long conversation, whose whole message list each
# waited run answers with. What that serializer refuses (bytes that are not UTF-8) goes the
# generic way.
def _model_json(value: BaseModel) -> Any:
    try:
        return orjson.Fragment(value.__pydantic_serializer__.to_json(value, fallback=_plain))
    except PydanticSerializationError:
        return value.model_dump()


def _model_data(value: BaseModel) -> Any:
    try:
        return value.model_dump(mode="json", fallback=_plain)
    except (PydanticSerializationError, UnicodeDecodeError):
        return value.model_dump()


def _default(value: Any) -> Any:
    """orjson's ``default`` hook: a model as its own JSON, anything else as ``_plain``."""
    if isinstance(value, BaseModel):
        return _model_json(value)
    return _plain(value)


def _plain(value: Any) -> Any:
    """One step toward JSON for a value it has no type for (pydantic's ``fallback`` too)."""
    if isinstance(value, Interrupt):
        return {"value": value.value, "id": value.id}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# A list of models (a conversation's messages) is written by one call of pydantic's serializer,
# not one call a message through orjson's ``default``: in a long conversation that list is most
# of every answer, and each of those calls costs about a microsecond of Python. The lists are
# looked for down to the depth of a thread search's items (item, values, messages).
_BATCH_DEPTH = 4


def _batched(value: Any, depth: int = _BATCH_DEPTH) -> Any:
    """``value`` with its lists of models replaced by their JSON; what holds none is returned
    as it is, not copied."""
    if isinstance(value, list):
        if value and isinstance(value[0], BaseModel):
            return _models_json(value)
        if not depth or not value or not isinstance(value[0], dict):
            return value
        items: list[Any] | None = None
        for i, item in enumerate(value):
            batched = _batched(item, depth - 1)
            if batched is not item:
                items = items or list(value)
                items[i] = batched
        return value if items is None else items
    if isinstance(value, dict) and depth:
        fields: dict[Any, Any] | None = None
        for key, item in value.items():
            if isinstance(item, list | dict):
                batched = _batched(item, depth - 1)
                if batched is not item:
                    fields = fields or dict(value)
                    fields[key] = batched
        return value if fields is None else fields
    return value


def _models_json(models: list[Any]) -> Any:
    # By the classes, not each item: isinstance on a model goes through ABCMeta, slowly.
    classes = set(map(type, models))
    if not all(issubclass(cls, BaseModel) for cls in classes):
        return models
    if all(map(_fields_only, classes)) and not any(map(_EXTRA, models)):
        try:
            return orjson.Fragment(_fields_json(models))
        except orjson.JSONEncodeError:
            pass  # what orjson refuses inside a field: pydantic's serializer decides
    try:
        return orjson.Fragment(to_json(models, fallback=_plain))
    except PydanticSerializationError:
        return models  # each model on its own, with its own fallback


# LangChain's messages are written by orjson from each model's ``__dict__`` (which holds
# exactly its fields, in their order), about four times as fast as pydantic's serializer. A
# field's value orjson has no type for, or would write otherwise (a datetime, a dataclass), is
# handed to pydantic's serializer, which infers its type as it does inside the message, whose
# fields are typed as JSON or ``Any``: the bytes are pydantic's (tests/service/test_serialize.py
# compares them). Other models, which may type a field so that pydantic writes it otherwise (a
# subclass instance in a field of its base class), and a message with extra fields, go
# pydantic's way; so does a message class pydantic would not write as its plain fields.
_FIELDS_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)
_MESSAGES_MODULE = "langchain_core.messages."
_EXTRA = attrgetter("__pydantic_extra__")
_FIELDS = attrgetter("__dict__")


@lru_cache(maxsize=256)
def _fields_only(cls: type[BaseModel]) -> bool:
    """Whether ``cls`` is a LangChain message class pydantic writes as its fields' values
    under their names."""
    decorators = cls.__pydantic_decorators__
    return cls.__module__.startswith(_MESSAGES_MODULE) and not (
        cls.model_computed_fields
        or decorators.field_serializers
        or decorators.model_serializers
        or cls.__pydantic_root_model__
        or any(key.startswith("ser_json") for key in cls.model_config)
        or any(f.exclude or f.serialization_alias or f.alias for f in cls.model_fields.values())
    )


def _fields_json(models: list[Any]) -> bytes:
    return orjson.dumps(list(map(_FIELDS, models)), default=_inferred, option=_FIELDS_OPTIONS)


def _inferred(value: Any) -> Any:
    return orjson.Fragment(to_json(value, fallback=_plain))


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, converted as ``jsonable`` does, at orjson's speed."""
    try:
        # Dataclasses pass through to _plain: an Interrupt shows its value and id only.
        options = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
        return orjson.dumps(_batched(value), default=_default, option=options)
    except orjson.JSONEncodeError:
        # What orjson refuses (integers beyond 64 bits, keys it cannot name, deep nesting).
        return json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":")).encode()


def db_dumps(value: Any) -> bytes:
    """A ``Jsonb`` parameter as JSON: strict, as psycopg's own ``json.dumps`` is."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # Big integers and the like; a value json cannot encode either still raises.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class JSON(JSONResponse):
    """JSONResponse that accepts LangGraph objects and keeps non-ASCII text readable."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def page(
    items: list[dict[str, Any]], *, select: Sequence[str] | None, offset: int, total: int
) -> JSON:
    """One page of a search: only the ``select``ed fields of each item, with the Agent Server's
    paging headers (the total, and the next page's offset while there is one)."""
    if select:
        items = [{k: v for k, v in item.items() if k in select} for item in items]
    headers = {"X-Pagination-Total": str(total)}
    if offset + len(items) < total:
        headers["X-Pagination-Next"] = str(offset + len(items))
    return JSON(items, headers=headers)


def thread(row: Thread, values: Any = None, interrupts: Any = None) -> dict[str, Any]:
    return {
        "thread_id": row.thread_id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "state_updated_at": row.last_message_at or row.updated_at,
        "metadata": row.metadata,
        "config": {},
        "status": row.status,
        "values": values,
        "interrupts": interrupts or {},
        "title": row.title,
        "owner": row.owner,
        "last_message_at": row.last_message_at,
        "archived_at": row.archived_at,
    }


def run(row: Run) -> dict[str, Any]:
    return {
        "run_id": row.run_id,
        "thread_id": row.thread_id,
        "assistant_id": row.assistant_id,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "status": row.status,
        "metadata": row.metadata,
        "kwargs": row.kwargs,
        "multitask_strategy": row.multitask_strategy,
        "attempt": row.attempt,
        "replica": row.lease_holder,
        "error": row.error,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
    }


def _checkpoint(config: Any) -> dict[str, Any] | None:
    if not config:
        return None
    conf = config.get("configurable", {})
    return {
        "thread_id": conf.get("thread_id"),
        "checkpoint_ns": conf.get("checkpoint_ns", ""),
        "checkpoint_id": conf.get("checkpoint_id"),
        "checkpoint_map": conf.get("checkpoint_map"),
    }


def state(snapshot: StateSnapshot) -> dict[str, Any]:
    checkpoint = _checkpoint(snapshot.config)
    parent = _checkpoint(snapshot.parent_config)
    return {
        "values": snapshot.values,
        "next": list(snapshot.next),
        "tasks": [
            {
                "id": task.id,
                "name": task.name,
                "path": list(task.path),
                "error": repr(task.error) if task.error else None,
                "interrupts": list(task.interrupts),
                "checkpoint": _checkpoint(task.state) if isinstance(task.state, dict) else None,
                "state": state(task.state) if isinstance(task.state, StateSnapshot) else None,
                "result": task.result,
            }
            for task in snapshot.tasks
        ],
        "checkpoint": checkpoint,
        "metadata": snapshot.metadata,
        "created_at": snapshot.created_at,
        "parent_checkpoint": parent,
        "interrupts": list(snapshot.interrupts),
        "checkpoint_id": checkpoint["checkpoint_id"] if checkpoint else None,
        "parent_checkpoint_id": parent["checkpoint_id"] if parent else None,
    }
