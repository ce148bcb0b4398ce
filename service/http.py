"""Small helpers every route module uses: parsing, identity and path parameters."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from uuid import UUID

import structlog
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.problems import Problem, invalid
from service.services import Services

ModelT = TypeVar("ModelT", bound=BaseModel)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def owner(request: Request) -> str:
    """The caller's identity; raises 401 when authentication fails."""
    who = services(request).auth.owner(request)
    structlog.contextvars.bind_contextvars(owner=who)
    return who


async def parse(request: Request, model: type[ModelT], *, empty_ok: bool = True) -> ModelT:
    raw = await request.body()
    data: Any = {}
    if raw.strip():
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Problem(400, f"malformed JSON: {exc}", kind="malformed-json") from exc
    elif not empty_ok:
        raise Problem(422, "a JSON body is required", kind="invalid-input")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Problem(422, "the body must be a JSON object", kind="invalid-input")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from exc


def uuid_param(request: Request, name: str) -> UUID:
    value = request.path_params[name]
    try:
        parsed = UUID(value)
    except ValueError as exc:
        raise Problem(422, f"{name} must be a UUID, got {value!r}", kind="invalid-input") from exc
    if name in ("thread_id", "run_id"):
        structlog.contextvars.bind_contextvars(**{name: str(parsed)})
    return parsed


def int_query(request: Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise Problem(422, f"{name} must be an integer", kind="invalid-input") from exc
    if not lo <= value <= hi:
        raise Problem(422, f"{name} must be between {lo} and {hi}", kind="invalid-input")
    return value
