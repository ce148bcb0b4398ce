"""The replica's HTTP server: its settings, its start-up, and a shutdown that neither closes a
kept-alive connection under a client's next request nor outlasts its budget.

The server is uvicorn, really serving on loopback; the app is a small Starlette one, so the
connections' timing is the server's alone.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tests.support.processes import until_refused
from threadkeeper.service.server import (
    GC_THRESHOLDS,
    IDLE_GRACE_SECONDS,
    DrainingServer,
    idle_grace,
    server_config,
)


def test_server_outlives_client_keep_alive() -> None:
    """The server must not close idle connections before the client does.

    When both give up at the same moment, the request a client sends on the connection just
    as the server closes it fails with a ReadError: seen at 100 concurrent conversations.
    """
    config = server_config(Starlette(), "127.0.0.1", 0)
    assert config.timeout_keep_alive > httpx.Limits().keepalive_expiry  # type: ignore[operator]
    assert config.timeout_keep_alive >= 60  # behind a load balancer with a 60 s idle timeout


def test_serves_on_the_c_event_loop_and_http_parser() -> None:
    """uvloop and httptools are dependencies, not extras: uvicorn picks them by itself only
    when they are installed, and the image served on asyncio and h11 while only the benchmarks
    had them."""
    config = server_config(Starlette(), "127.0.0.1", 0)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
    loop_factory = config.get_loop_factory()
    assert loop_factory is not None
    loop = loop_factory()
    try:
        assert type(loop).__module__.split(".")[0] == "uvloop"
    finally:
        loop.close()


async def test_serving_freezes_what_start_up_built_and_collects_young_objects_rarely() -> None:
    """Once the app has started, what start-up built is out of the collector's reach, so a
    full collection under load does not walk the modules and the compiled graph again; and
    young collections wait for many more new objects than Python's default."""
    server = DrainingServer(server_config(Starlette(), "127.0.0.1", 0), on_exit=lambda: None)
    thresholds = gc.get_threshold()
    gc.unfreeze()
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:  # noqa: ASYNC110 (uvicorn has a flag, not an event)
                await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > thresholds[0]
    finally:
        server.should_exit = True
        await serving
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _never(request: Request) -> StreamingResponse:
    """A stream that never ends, as one following a run that outlasts the replica."""

    async def body() -> AsyncIterator[bytes]:
        yield b"started"
        await asyncio.Event().wait()

    return StreamingResponse(body())


@asynccontextmanager
async def _serving(shutdown_seconds: float) -> AsyncIterator[DrainingServer]:
    app = Starlette(routes=[Route("/ok", _ok), Route("/never", _never)])
    server = DrainingServer(
        server_config(app, "127.0.0.1", 0, shutdown_seconds=shutdown_seconds),
        on_exit=lambda: None,
    )
    thresholds = gc.get_threshold()
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:  # noqa: ASYNC110 (uvicorn has a flag, not an event)
                await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = server.force_exit = True
        await serving
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def _port(server: DrainingServer) -> int:
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


async def _get_kept_alive(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has had one answer and stays open, as in a client's pool."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
    await reader.readexactly(2)  # "ok"
    return reader, writer


def test_the_idle_grace_outlasts_client_expiry_and_fits_the_budget() -> None:
    assert httpx.Limits().keepalive_expiry < IDLE_GRACE_SECONDS  # type: ignore[operator]
    assert idle_grace(25) == IDLE_GRACE_SECONDS
    assert idle_grace(4) == 2


async def test_a_request_on_an_idle_connection_after_the_signal_is_answered() -> None:
    """SIGTERM stops the listener, and a request a client sends on its kept-alive connection
    afterwards still gets its answer (uvicorn alone closes that connection at once, and the
    client sees it closed with no response)."""
    async with _serving(shutdown_seconds=25) as server:
        port = _port(server)
        reader, writer = await _get_kept_alive(port)
        server.should_exit = True  # what SIGTERM does (handle_exit would re-raise it here)
        await until_refused(port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()


async def test_idle_connections_close_after_the_grace_and_the_budget_holds() -> None:
    """An idle connection stays open for the idle grace and is closed then; a request that
    never ends is cut at the shutdown budget counted from the signal, not from the end of the
    grace."""
    budget = 4.0
    async with _serving(shutdown_seconds=budget) as server:
        port = _port(server)
        reader, writer = await _get_kept_alive(port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            request = http.build_request("GET", "/never", timeout=30)
            response = await http.send(request, stream=True)
            hanging = asyncio.create_task(response.aread())
            loop = asyncio.get_running_loop()
            signalled = loop.time()
            server.should_exit = True  # what SIGTERM does (handle_exit would re-raise it here)
            assert await reader.read() == b""  # the server closed it
            closed = loop.time() - signalled
            with pytest.raises(httpx.RemoteProtocolError):
                async with asyncio.timeout(budget + 5):
                    await hanging
            ended = loop.time() - signalled
        writer.close()
    assert idle_grace(budget) <= closed < budget
    assert ended < budget + 1
