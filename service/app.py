"""The Starlette application and its lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http import HTTPStatus

import psycopg
import psycopg_pool
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Scope

from threadkeeper.service import userapp
from threadkeeper.service.auth import Authenticator
from threadkeeper.service.blob_cache import BlobCache
from threadkeeper.service.catalog import install_system_assistants
from threadkeeper.service.cors import cors_middleware
from threadkeeper.service.db import connect, make_pool
from threadkeeper.service.embedded import embedded_postgres
from threadkeeper.service.errors import DomainError
from threadkeeper.service.executor import Executor
from threadkeeper.service.http import allowed_methods, unsupported
from threadkeeper.service.metrics import Metrics
from threadkeeper.service.middleware import (
    BodyLimitMiddleware,
    CloseWhenDrainingMiddleware,
    CutMiddleware,
    RequestContextMiddleware,
)
from threadkeeper.service.migrations import StoreIndexUnavailable, migrate, require_vector
from threadkeeper.service.notify import Hub
from threadkeeper.service.problems import Problem, from_domain, problem_response
from threadkeeper.service.registry import Registry
from threadkeeper.service.routes import (
    assistants,
    chat,
    crons,
    meta,
    runs,
    state,
    stateless,
    store,
    threads,
)
from threadkeeper.service.scheduler import Scheduler
from threadkeeper.service.served import Served, builtin
from threadkeeper.service.services import Services
from threadkeeper.service.settings import Settings
from threadkeeper.service.store import open_store
from threadkeeper.service.worker import Worker

log = structlog.get_logger(__name__)

# nginx's code for "the client closed the connection before the response": nobody reads it,
# but access logs and metrics then tell a hang-up apart from a server error.
CLIENT_CLOSED_REQUEST = 499


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem_response(from_domain(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        # Starlette names the methods of one route; a path is served by several.
        methods = set(allowed_methods(request).split(", "))
        return problem_response(unsupported(request, methods))
    if exc.status_code == HTTPStatus.NOT_FOUND:
        return problem_response(unsupported(request))
    return problem_response(Problem(exc.status_code, str(exc.detail), headers=headers))


async def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("database_unavailable", error=str(exc))
    return problem_response(
        Problem(
            503,
            "the database is unavailable; retry shortly",
            kind="database-unavailable",
            headers={"Retry-After": "2"},
        )
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    log.info("client_disconnected", method=request.method, path=request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", exc_info=exc)
    return problem_response(Problem(500, "internal error", kind="internal-error"))


def begin_drain(app: Starlette) -> None:
    """Stop taking work: readiness fails, this replica claims no more runs, and those it
    executes get ``run_drain_seconds`` to end before they are handed back to the queue.

    Requests waiting for runs stay open meanwhile and follow their runs wherever they go on,
    until ``cut_seconds`` after this: then they are cut (a cut connection tells clients to resume
    elsewhere, where a cancelled request would be a 500).
    """
    services: Services | None = getattr(app.state, "services", None)
    if services is None or services.draining:
        return
    services.draining = True
    services.worker.stop_claiming()
    services.drained = asyncio.create_task(
        services.worker.stop(services.settings.run_drain_seconds), name="drain"
    )
    closing = services.closing
    asyncio.get_running_loop().call_later(services.settings.cut_seconds, closing.set)
    log.info("draining", replica=services.settings.replica)


def _draining(scope: Scope) -> bool:
    services: Services | None = getattr(scope["app"].state, "services", None)
    return services is not None and services.draining


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """DATABASE_URL, or the URL of the embedded server for as long as the context lasts."""
    if settings.database_url:
        yield settings.database_url
    else:
        with embedded_postgres(settings.data_dir) as url:
            yield url


def create_app(
    settings: Settings, *, run_migrations: bool = True, served: Served | None = None
) -> Starlette:
    """The app serving ``served`` (the built-in demo when not given), prepared beforehand."""
    metrics = Metrics()
    serving = served if served is not None else builtin()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        with database_url(settings) as url:
            async with _serve(app, url), userapp.lifespan(serving.http_app):
                yield

    async def _prepare_schema(url: str, *, migrating: bool) -> None:
        conn = await connect(url)
        try:
            if migrating:
                await migrate(conn, store_index=serving.store.index)
            elif serving.store.index is not None:
                await require_vector(conn, create=False)
        finally:
            await conn.close()

    @asynccontextmanager
    async def _serve(app: Starlette, url: str) -> AsyncIterator[None]:
        try:
            await _prepare_schema(url, migrating=run_migrations)
        except StoreIndexUnavailable as exc:
            # The CLI says it in one line and exits non-zero once uvicorn has given up.
            app.state.refused = exc
            raise
        pool = make_pool(url, settings)
        await pool.open(wait=True, timeout=settings.pool_timeout)
        metrics.watch_pool(pool)
        hub = Hub(url)
        await hub.start()
        cache = BlobCache(settings.blob_cache_bytes)
        metrics.watch_blob_cache(cache)
        registry = Registry(serving.graphs, pool, cache)
        memory = open_store(pool, serving.store)
        executor = Executor(
            pool=pool,
            hub=hub,
            registry=registry,
            metrics=metrics,
            replica=settings.replica,
            lease_seconds=settings.lease_seconds,
            store=memory,
        )
        worker = Worker(
            pool=pool,
            hub=hub,
            executor=executor,
            capacity=settings.workers,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            poll_seconds=settings.poll_seconds,
            event_retention_seconds=settings.event_retention_seconds,
            owner_cap=settings.owner_cap,
            temporary_thread_seconds=settings.temporary_thread_seconds,
        )
        services = Services(
            settings=settings,
            pool=pool,
            hub=hub,
            executor=executor,
            worker=worker,
            auth=Authenticator(settings),
            metrics=metrics,
            registry=registry,
            store=memory,
        )
        app.state.services = services
        await install_system_assistants(pool, services.registry)
        metrics.watch_in_flight(lambda: executor.busy)
        await worker.start()
        scheduler = Scheduler(services, settings.cron_poll_seconds)
        scheduler.start()
        log.info(
            "service_started",
            replica=settings.replica,
            auth=settings.auth,
            config=str(serving.deployment.path) if serving.deployment.path else None,
            graphs=list(serving.graphs),
        )
        try:
            yield
        finally:
            await scheduler.stop()
            begin_drain(app)
            services.closing.set()
            if services.drained is not None:
                await services.drained
            await hub.stop()
            await pool.close()
            log.info("service_stopped", replica=settings.replica)

    ours = [
        *meta.routes,
        *threads.routes,
        *state.routes,
        *runs.routes,
        *assistants.routes,
        *stateless.routes,
        *chat.routes,
        *crons.routes,
        *store.routes,
    ]
    return Starlette(
        routes=userapp.routes(ours, serving.http_app),
        middleware=[
            Middleware(CloseWhenDrainingMiddleware, draining=_draining),
            *cors_middleware(settings.cors_allow_origins),
            Middleware(CutMiddleware),
            Middleware(RequestContextMiddleware, metrics=metrics, replica=settings.replica),
            Middleware(BodyLimitMiddleware, limit=settings.max_body_bytes),
        ],
        exception_handlers={
            Problem: _problem,
            DomainError: _domain_error,
            HTTPException: _http_error,
            psycopg.OperationalError: _database_down,
            psycopg_pool.PoolTimeout: _database_down,
            ClientDisconnect: _client_gone,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
