"""ASGI middleware: request ids and logging, metrics, the body size limit, cut responses, and
the connections a draining replica ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import structlog
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadkeeper.service.metrics import Metrics
from threadkeeper.service.problems import Problem, problem_response

log = structlog.get_logger("service.access")

# Set in a request's scope by ``cut``: its response must end as a broken connection.
CUT = "threadkeeper.cut"


def cut(scope: Scope) -> None:
    """End this request's streamed response as a broken connection, not a complete body.

    For a response that can no longer be completed truthfully (the replica stops serving
    before the run it follows ended): a client then sees a transport error and reconnects,
    where a body that ended normally would read as the whole answer.
    """
    scope[CUT] = True
    log.info("response_cut", path=scope.get("path"))


class CutMiddleware:
    """Withholds the last chunk of a response ``cut`` was called for.

    uvicorn then closes the connection without the chunked body's terminator, which every
    HTTP client reports as an incomplete response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_unless_cut(message: Message) -> None:
            last = message["type"] == "http.response.body" and not message.get("more_body")
            if last and scope.get(CUT):
                return
            await send(message)

        await self.app(scope, receive, send_unless_cut)


class CloseWhenDrainingMiddleware:
    """From the replica's drain on, every response says ``Connection: close``.

    The one way for a server to end a kept-alive connection without racing its client: the
    client reads the header with the answer, before it could send anything more on it (see
    ``service.server.DrainingServer`` for the connections that stay idle).
    """

    def __init__(self, app: ASGIApp, draining: Callable[[Scope], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining(scope):
                message.setdefault("headers", [])
                message["headers"].append((b"connection", b"close"))
            await send(message)

        await self.app(scope, receive, send_closing)


class BodyLimitMiddleware:
    """Answer 413 before reading more than ``limit`` bytes of a request body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = Problem(413, f"request body exceeds {self.limit} bytes", kind="body-too-large")
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await problem_response(too_large)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        await self.app(scope, limited, send)


class RequestContextMiddleware:
    """Bind a request id for the logs, then log and count the request by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics, replica: str) -> None:
        self.app = app
        self.metrics = metrics
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode("latin-1")))
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, replica=self.replica)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.request_seconds.labels(method=method, route=route).observe(elapsed)
            if route not in ("/healthz", "/readyz", "/metrics", "/ok"):
                log.info(
                    "request",
                    method=method,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.clear_contextvars()


def _route_template(scope: Scope) -> str:
    """The matched route's path template, never the raw path (ids would explode cardinality)."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    app = scope.get("app")
    router = getattr(app, "router", None)
    for candidate in getattr(router, "routes", []):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(candidate.path)
    return "unmatched"
