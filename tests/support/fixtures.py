"""Fixtures other test modules share (registered as a pytest plugin by conftest)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.support.processes import ServiceProcess
from threadkeeper.service import checkpointer
from threadkeeper.service.app import create_app
from threadkeeper.service.settings import Settings

AppFactory = Callable[..., Starlette]

# Shutdown drains nothing in these tests (no run outlives its test), so it takes well under a
# second; a hang fails here with every task's stack rather than at pytest's 300 s timeout.
SHUTDOWN_TIMEOUT = 30.0


@pytest.fixture
def settings_for(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": database_url,
            "log_format": "console",
            "pool_timeout": 3.0,
            "replica": "test-replica",
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def held_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fenced saver's rows wait for a read, a flush or a hand-over however long it takes (no
    write-behind timer), so a test decides when they are written."""
    monkeypatch.setattr(checkpointer, "WRITE_BEHIND_SECONDS", 3600.0)


@pytest.fixture
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of a fully started app (lifespan included)."""
    async with app_client(create_app(settings_for(), run_migrations=False)) as c:
        yield c


class app_client:
    """Run an app's lifespan and give an httpx client bound to it."""

    def __init__(self, app: Starlette, **client_kwargs: object) -> None:
        self.app = app
        self.kwargs = client_kwargs
        self._lifespan = app.router.lifespan_context(app)

    async def __aenter__(self) -> httpx.AsyncClient:
        await self._lifespan.__aenter__()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://threadkeeper.test",
            **self.kwargs,  # type: ignore[arg-type]
        )
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                await self._lifespan.__aexit__(None, None, None)
        except TimeoutError:
            raise AssertionError(
                f"the app did not shut down within {SHUTDOWN_TIMEOUT}s; tasks:\n{task_stacks()}"
            ) from None


def task_stacks() -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=out)
    return out.getvalue()


@pytest.fixture
def replicas(database_url: str, tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory of service processes on this test's database; all are killed afterwards."""
    started: list[ServiceProcess] = []

    def make(name: str | None = None, **options: Any) -> ServiceProcess:
        proc = ServiceProcess(database_url, tmp_path, name or f"replica-{len(started)}", **options)
        started.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in started:
            proc.kill()
