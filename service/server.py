"""The HTTP server of a replica: uvicorn, with the replica's drain and a shutdown that never
closes a kept-alive connection under a request its client is sending."""

from __future__ import annotations

import asyncio
import gc
import math
import socket
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import structlog
import uvicorn
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette

from threadkeeper.service.deployment import DeploymentError
from threadkeeper.service.settings import DEFAULT_SHUTDOWN_SECONDS

log = structlog.get_logger("service.server")

# Longer than any client's or load balancer's idle timeout (httpx 5 s, AWS ALB 60 s): with
# uvicorn's default of 5 s the server and an httpx pool close the same idle connection at the
# same moment, and the request the client just sent on it fails with a ReadError.
KEEP_ALIVE_SECONDS = 75
# How long a stopping replica keeps its idle connections open before it closes them: past the
# idle expiry of the clients that reuse connections without retrying a request that found one
# closed (httpx 5 s, Node's undici 4 s), plus a margin for a busy client's delay between taking
# a connection from its pool and writing on it. A request that arrives meanwhile is answered,
# with ``Connection: close``. Clients that keep idle connections longer (Go's default is 90 s)
# retry their idempotent requests by themselves.
IDLE_GRACE_SECONDS = 7.0
# The collector's default (a young collection per 700 net new containers) fires about every
# second turn while a hundred turns are in flight, and each young collection promotes what those
# turns still hold, so the older generations fill with short-lived state and get walked too: a fifth
# of the service's CPU under benchmark 3. Almost all of a turn's objects die by reference
# count; what waits for the collector is cyclic garbage, at most this many objects (megabytes).
# The replica's resident memory under that benchmark did not change.
GC_THRESHOLDS = (50_000, 10, 10)
# uvicorn's own shutdown polls its connections at this pace too.
POLL_SECONDS = 0.1


def server_config(
    app: Starlette, host: str, port: int, *, shutdown_seconds: float = DEFAULT_SHUTDOWN_SECONDS
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(shutdown_seconds),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        proxy_headers=True,
    )


def idle_grace(shutdown_seconds: float) -> float:
    """How long idle connections stay open after SIGTERM: IDLE_GRACE_SECONDS, or half of a
    shorter shutdown budget, which must leave time for the requests in flight."""
    return min(IDLE_GRACE_SECONDS, shutdown_seconds / 2)


def _idle(connection: Any) -> bool:
    """Whether a connection is between requests: its last response complete, or none yet.

    ``cycle`` (the current request and response) is how uvicorn's own HTTP protocols tell it
    in their ``shutdown``, in h11's and in httptools' alike.
    """
    cycle = getattr(connection, "cycle", None)
    return cycle is None or bool(cycle.response_complete)


class DrainingServer(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM/SIGINT starts the replica's drain (see begin_drain).

    uvicorn then lets open requests end: streams and waits follow their runs, wherever those
    go on, until the drain cuts them. sse-starlette's own reaction to the signal, ending every
    stream at once without its ``end`` event, is switched off.

    uvicorn alone closes idle keep-alive connections the moment it stops: a client that has just
    sent a request on one of them (its pool held the connection, kube-proxy routed it here long
    ago) gets no answer, and cannot tell whether the request was carried out. So the shutdown
    first stops listening and lets idle connections outlive their clients' idle expiry
    (``idle_grace``), answering what arrives on them with ``Connection: close`` (the app's
    drain does that), and only then does what uvicorn does, within the same budget.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        on_exit: Callable[[], None],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._before = before
        # Why the deployment was refused on the serving loop, before the server started.
        self.refused: DeploymentError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # What AppStatus.disable_automatic_graceful_drain() does (it is not typed).
        AppStatus.enable_automatic_graceful_drain = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if self._before is not None:
            try:
                await self._before()
            except DeploymentError as exc:
                self.refused = exc
                self.should_exit = True  # uvicorn then neither listens nor runs the lifespan
                return
        await super().startup(sockets)
        # What start-up built (modules, the compiled graph, the pool) lives as long as the
        # process: out of the collector's reach, full collections stay short under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler interrupts the event loop anywhere: the drain starts as a callback.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_exit)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        budget = float(self.config.timeout_graceful_shutdown or DEFAULT_SHUTDOWN_SECONDS)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for server in self.servers:
            server.close()
        await self._outlive_idle_clients(idle_grace(budget))
        spent = loop.time() - started
        # uvicorn counts its budget from its own start: what the grace took is deducted, so the
        # replica still exits within THREADKEEPER_SHUTDOWN_SECONDS of the signal.
        self.config.timeout_graceful_shutdown = max(1, math.ceil(budget - spent))
        await super().shutdown(sockets)

    async def _outlive_idle_clients(self, grace: float) -> None:
        """Until no connection is idle or ``grace`` has passed; a connection that is answering
        closes after its response, which is how uvicorn ends it too."""
        connections = self.server_state.connections
        for connection in list(connections):
            if not _idle(connection):
                connection.shutdown()
        idle = sum(1 for connection in connections if _idle(connection))
        log.info("closing_connections", idle=idle, busy=len(connections) - idle, grace=grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while not self.force_exit and loop.time() < deadline:
            if not any(_idle(connection) for connection in connections):
                return
            await asyncio.sleep(POLL_SECONDS)
