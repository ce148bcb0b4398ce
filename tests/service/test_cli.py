"""The ``threadkeeper-service`` command line: its server settings and its failure exits."""

from __future__ import annotations

import asyncio
import gc

import httpx
import pytest
from starlette.applications import Starlette

from threadkeeper.service.cli import GC_THRESHOLDS, DrainingServer, main, server_config


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


def test_invalid_configuration_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("THREADKEEPER_LOG_FORMAT", "xml")
    assert main(["migrate"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_migrate_against_an_unreachable_database_exits_1(
    monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{unused_tcp_port}/none")
    monkeypatch.setenv("THREADKEEPER_LOG_FORMAT", "console")
    assert main(["migrate"]) == 1


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
