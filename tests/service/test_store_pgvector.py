"""A store with an ``index`` needs pgvector; one without does not.

The database here is a real one whose role may not create the extension: pgvector is not a
trusted extension, so a role that owns its database but is no superuser (as on many managed
Postgres services) cannot add it. Start-up, the migrate command and serving both, must then stop
with one line naming the extension, and exit non-zero; without an ``index`` the same role
migrates and serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.support.deployments import write_deployment
from tests.support.postgres import admin_execute, with_database

EMBED_PY = """
def embed(texts):
    return [[1.0, 0.0, 0.0] for _ in texts]
"""


@pytest.fixture
def unprivileged_url(pg_server: str) -> Iterator[str]:
    """A database owned by a login role that is no superuser, and the URL to it as that role."""
    name = f"tk_{uuid.uuid4().hex[:12]}"
    admin_execute(pg_server, f"CREATE ROLE {name} LOGIN NOSUPERUSER")
    admin_execute(pg_server, f"CREATE DATABASE {name} OWNER {name}")
    params = conninfo.conninfo_to_dict(with_database(pg_server, name))
    params["user"] = name
    params.pop("password", None)
    try:
        yield conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    finally:
        admin_execute(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin_execute(pg_server, f"DROP ROLE IF EXISTS {name}")


def _config(tmp_path: Path, *, index: bool) -> Path:
    store = {"index": {"dims": 3, "embed": "./embed.py:embed"}} if index else None
    return write_deployment(tmp_path, store=store, **{"embed.py": EMBED_PY})


def _cli(url: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "THREADKEEPER_CONFIG": str(config),
        "THREADKEEPER_LOG_FORMAT": "json",
    }
    return subprocess.run(
        [sys.executable, "-m", "threadkeeper.service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _has_vector(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()
    return bool(row and row[0])


MESSAGE = (
    "threadkeeper-service: store.index needs the pgvector extension ('vector') and this "
    "database lacks it: permission denied to create extension"
)


def test_migrate_with_an_index_refuses_in_one_line(unprivileged_url: str, tmp_path: Path) -> None:
    done = _cli(unprivileged_url, _config(tmp_path, index=True), "migrate")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(MESSAGE), done.stderr
    assert "Traceback" not in done.stderr
    assert not _has_vector(unprivileged_url)


def test_serve_with_an_index_exits_non_zero_in_one_line(
    unprivileged_url: str, tmp_path: Path, unused_tcp_port: int
) -> None:
    done = _cli(
        unprivileged_url,
        _config(tmp_path, index=True),
        "serve",
        "--port",
        str(unused_tcp_port),
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(MESSAGE), done.stderr


def test_serve_without_migrating_checks_the_extension_too(
    unprivileged_url: str, tmp_path: Path, unused_tcp_port: int
) -> None:
    """With ``--no-migrate`` (the migrate Job ran, or should have) nothing is created, but a
    database without pgvector is still refused before serving a store that would fail on use."""
    config = _config(tmp_path, index=False)
    assert _cli(unprivileged_url, config, "migrate").returncode == 0
    done = _cli(
        unprivileged_url,
        _config(tmp_path, index=True),
        "serve",
        "--no-migrate",
        "--port",
        str(unused_tcp_port),
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "it is not created in this database (run the migrations)" in last, done.stderr


def test_without_an_index_no_pgvector_is_needed(unprivileged_url: str, tmp_path: Path) -> None:
    done = _cli(unprivileged_url, _config(tmp_path, index=False), "migrate")
    assert done.returncode == 0, done.stderr
    assert not _has_vector(unprivileged_url)
    with psycopg.connect(unprivileged_url) as conn:
        row = conn.execute("SELECT to_regclass('store') IS NOT NULL").fetchone()
    assert row == (True,)
