"""Small helpers every route module uses: parsing, identity, parameters and what a route declares.

A route's request body is declared once, with ``accepts``: the same declaration parses the body
and documents it in ``/openapi.json``; so do ``queries`` for its query parameters and
``responds`` for its answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from uuid import UUID

import structlog
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from threadkeeper.service import jsonbody, serialize
from threadkeeper.service.problems import Problem, invalid
from threadkeeper.service.query import QueryParam
from threadkeeper.service.services import Services

ModelT = TypeVar("ModelT", bound=BaseModel)
FoundT = TypeVar("FoundT")
Endpoint = Callable[[Request], Awaitable[Response]]
EndpointT = TypeVar("EndpointT", bound=Callable[..., Awaitable[Response]])
OWNER_SCOPE_KEY = "threadkeeper.owner"
MEDIA_JSON = "application/json"
MEDIA_SSE = "text/event-stream"


@dataclass(frozen=True)
class Declared:
    """What a route takes and answers, for parsing and for the OpenAPI document alike."""

    body: type[BaseModel] | None = None
    body_required: bool = False
    query: tuple[QueryParam[Any], ...] = ()
    # Status -> (description, media type or None for no content).
    responses: Mapping[int, tuple[str, str | None]] = field(
        default_factory=lambda: {200: ("OK", MEDIA_JSON)}
    )


def declared(endpoint: Callable[..., Any]) -> Declared:
    found: Declared = getattr(endpoint, "declared", None) or Declared()
    return found


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def owner(request: Request) -> str:
    """The caller's identity; raises 401 when authentication fails. Checked once per request."""
    who: str | None = request.scope.get(OWNER_SCOPE_KEY)
    if who is None:
        who = services(request).auth.owner(request)
        request.scope[OWNER_SCOPE_KEY] = who
        structlog.contextvars.bind_contextvars(owner=who)
    return who


def accepts(
    model: type[ModelT], *, required: bool = False
) -> Callable[[Callable[[Request, ModelT], Awaitable[Response]]], Endpoint]:
    """The route takes a JSON body of ``model``: the handler gets it parsed, as a second argument.

    The caller is authenticated first, so a stranger learns nothing from validation errors.
    """

    def wrap(handler: Callable[[Request, ModelT], Awaitable[Response]]) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            owner(request)
            return await handler(request, await parse(request, model, empty_ok=not required))

        mark = dataclasses.replace(declared(handler), body=model, body_required=required)
        endpoint.declared = mark  # type: ignore[attr-defined]
        return endpoint

    return wrap


def queries(*params: QueryParam[Any]) -> Callable[[Endpoint], Endpoint]:
    """The query parameters the route reads (each with ``param.of(request)``), all checked before
    the handler runs, so a bad one is a 422 whatever else the request names."""

    def wrap(handler: Endpoint) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            owner(request)
            for param in params:
                param.of(request)
            return await handler(request)

        endpoint.declared = dataclasses.replace(declared(handler), query=params)  # type: ignore[attr-defined]
        return endpoint

    return wrap


def responds(responses: Mapping[int, tuple[str, str | None]]) -> Callable[[EndpointT], EndpointT]:
    """Document the route's answers (status -> description, media type or None); replaces 200."""

    def mark(endpoint: EndpointT) -> EndpointT:
        mark = dataclasses.replace(declared(endpoint), responses=dict(responses))
        endpoint.declared = mark  # type: ignore[attr-defined]
        return endpoint

    return mark


async def parse(request: Request, model: type[ModelT], *, empty_ok: bool = True) -> ModelT:
    raw = await request.body()
    data: Any = {}
    if raw.strip():
        data = jsonbody.decode(raw)
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


class PageRequest(Protocol):
    """The paging and ordering a search body asks for (threads, assistants, crons)."""

    @property
    def limit(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def sort_by(self) -> Any: ...
    @property
    def sort_order(self) -> Any: ...
    @property
    def select(self) -> Sequence[str] | None: ...


# A search of one resource: one page of matches and the total, on a connection (the argument)
# with the body's paging and order (keywords ``sort_by``, ``sort_order``, ``limit``, ``offset``).
Search = Callable[..., Awaitable[tuple[Sequence[FoundT], int]]]


async def search_page(
    request: Request,
    body: PageRequest,
    search: Search[FoundT],
    as_json: Callable[[FoundT], dict[str, Any]],
) -> Response:
    """Answer a search endpoint: the page ``search`` finds, each match ``as_json``, with only
    the ``select``ed fields and the Agent Server's paging headers."""
    async with services(request).pool.connection() as conn:
        found, total = await search(
            conn,
            sort_by=body.sort_by,
            sort_order=body.sort_order,
            limit=body.limit,
            offset=body.offset,
        )
    items = [as_json(f) for f in found]
    return serialize.page(items, select=body.select, offset=body.offset, total=total)


def uuid_param(request: Request, name: str) -> UUID:
    value = request.path_params[name]
    try:
        parsed = UUID(value)
    except ValueError as exc:
        literal = _literal_methods(request)
        if literal:
            # ``GET /threads/search``: a path of its own, asked with another method, not an id.
            raise unsupported(request, literal) from exc
        raise Problem(422, f"{name} must be a UUID, got {value!r}", kind="invalid-input") from exc
    if name in ("thread_id", "run_id"):
        structlog.contextvars.bind_contextvars(**{name: str(parsed)})
    return parsed


def _literal_methods(request: Request) -> set[str]:
    """The methods of the routes whose path is exactly the request's, without parameters."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.path == request.url.path:
            methods |= route.methods
    return methods


def unsupported(request: Request, methods: set[str] | None = None) -> Problem:
    """The problem for an operation this service does not offer: 405 naming the methods the
    path takes, or 404 for a path it does not serve at all."""
    operation = f"{request.method} {request.url.path}"
    if methods:
        allow = ", ".join(sorted(methods))
        return Problem(
            405,
            f"{operation} is not supported; this path takes {allow}",
            kind="not-supported",
            headers={"Allow": allow},
        )
    return Problem(404, f"{operation} is not supported", kind="not-supported")


def allowed_methods(request: Request) -> str:
    """Every method some route answers on this request's path, for a 405's ``Allow``."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


async def until_closing(
    closing: asyncio.Event, result: asyncio.Task[Any], headers: dict[str, str]
) -> Any:
    """``result``'s value, for an answer that is sent only once known (no body streamed
    before it). A replica that stops serving first answers 503 with ``Retry-After`` and
    ``headers`` (a ``Location`` where the answer will be): the run goes on elsewhere."""
    stop = asyncio.create_task(closing.wait())
    try:
        await asyncio.wait({result, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        ended = result.done()
        if not ended:
            result.cancel()
    if ended:
        return result.result()
    raise Problem(
        503,
        "this replica stopped before the run ended; the run goes on elsewhere",
        kind="replica-stopping",
        headers={"Retry-After": "1", **headers},
    )
