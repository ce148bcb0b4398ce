"""Shared fixtures: a real Postgres, per-test databases, and service processes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from tests.support import postgres
from threadkeeper.service.db import Pool, make_pool
from threadkeeper.service.settings import Settings

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.workers",
    "tests.cluster.pytest_plugin",
]

# In-process tests log through structlog's default console renderer, which draws exceptions with
# rich when it is installed (schemathesis brings it): every frame with its locals, tens of
# milliseconds of CPU per logged error, enough to starve a loaded test's event loop. Plain
# tracebacks, as the service's own console format prints them.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of a running Postgres server with the migrated template database."""
    external = postgres.external_url()
    if external:
        postgres.create_template(external)
        yield external
        return
    # Not under pytest's basetemp: a concurrent pytest session prunes old basetemps, and would
    # delete a live data directory with them.
    root = Path(tempfile.mkdtemp(prefix="threadkeeper-pg-"))
    try:
        with postgres.embedded_server(root) as url:
            postgres.create_template(url)
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    with postgres.fresh_database(pg_server) as url:
        yield url


@pytest.fixture
def empty_database_url(pg_server: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    with postgres.fresh_database(pg_server, migrated=False) as url:
        yield url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = make_pool(database_url, Settings(database_url=database_url, pool_max_size=20))
    await p.open(wait=True)
    try:
        yield p
    finally:
        await p.close()
