"""``threadkeeper-service``: serve the API or apply the schema."""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import socket
import sys
from collections.abc import Awaitable, Callable
from types import FrameType

import psycopg
import structlog
import uvicorn
from pydantic import ValidationError
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette

from threadkeeper.service import deployment
from threadkeeper.service.app import begin_drain, create_app, database_url
from threadkeeper.service.db import connect
from threadkeeper.service.deployment import CONFIG_ENV, DeploymentError
from threadkeeper.service.logs import configure_logging
from threadkeeper.service.migrations import StoreIndexUnavailable, migrate
from threadkeeper.service.served import check, prepare
from threadkeeper.service.settings import DEFAULT_SHUTDOWN_SECONDS, Settings
from threadkeeper.service.store import StoreSettings

log = structlog.get_logger("service.cli")

# Longer than any client's or load balancer's idle timeout (httpx 5 s, AWS ALB 60 s): with
# uvicorn's default of 5 s the server and an httpx pool close the same idle connection at the
# same moment, and the request the client just sent on it fails with a ReadError.
KEEP_ALIVE_SECONDS = 75
# The collector's default (a young collection per 700 net new containers) fires about every
# second turn while a hundred turns are in flight, and each young collection promotes what those
# turns still hold, so the older generations fill with short-lived state and get walked too: a fifth
# of the service's CPU under benchmark 3. Almost all of a turn's objects die by reference
# count; what waits for the collector is cyclic garbage, at most this many objects (megabytes).
# The replica's resident memory under that benchmark did not change.
GC_THRESHOLDS = (50_000, 10, 10)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadkeeper-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not apply migrations at start-up"
    )
    serve.add_argument(
        "--config",
        metavar="PATH",
        help=f"the deployment's langgraph.json (default: ${CONFIG_ENV}, else ./langgraph.json "
        "when it exists, else the built-in demo agent)",
    )
    migrate_cmd = sub.add_parser(
        "migrate", help="apply the schema (LangGraph's and the service's) and exit"
    )
    migrate_cmd.add_argument(
        "--config",
        metavar="PATH",
        help="the deployment's langgraph.json, for its store.index (its vector table); "
        f"default: ${CONFIG_ENV}, else ./langgraph.json when it exists",
    )
    return parser


async def _migrate(url: str, store: StoreSettings) -> int:
    conn = await connect(url)
    try:
        return await migrate(conn, store_index=store.index)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"threadkeeper-service: invalid configuration:\n{exc}\n")
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "migrate":
        try:
            # Only the index's shape is read: no graph or embedding of the user's is imported.
            store = StoreSettings.of(deployment.load(deployment.config_path(args.config)).store)
        except DeploymentError as exc:
            return _refuse(exc)
        try:
            with database_url(settings) as url:
                applied = asyncio.run(_migrate(url, store))
        except StoreIndexUnavailable as exc:
            return _fail(exc)
        except psycopg.Error as exc:
            log.error("migrate_failed", error=str(exc))
            return 1
        log.info("migrate_done", applied=applied)
        return 0
    try:
        served = prepare(deployment.load(deployment.config_path(args.config)))
    except DeploymentError as exc:
        return _refuse(exc)
    app = create_app(settings, run_migrations=not args.no_migrate, served=served)
    config = server_config(app, args.host, args.port, shutdown_seconds=settings.shutdown_seconds)
    server = DrainingServer(config, on_exit=lambda: begin_drain(app), before=lambda: check(served))
    try:
        server.run()
    except SystemExit:
        # uvicorn exits (3) when the lifespan fails; a refusal of ours is said in one line.
        refused = getattr(app.state, "refused", None)
        if refused is None:
            raise
        return _fail(refused)
    if server.refused is not None:
        return _refuse(server.refused)
    return 0


def _fail(exc: StoreIndexUnavailable) -> int:
    """The database cannot hold what the deployment asks for: say so in one line, exit 1."""
    log.error("database_unfit", error=str(exc))
    sys.stderr.write(f"threadkeeper-service: {exc}\n")
    return 1


def _refuse(exc: DeploymentError) -> int:
    """A deployment that cannot be served: say why (config, key, the user's traceback), exit 2."""
    log.error("deployment_refused", config=str(exc.path) if exc.path else None, key=exc.key)
    sys.stderr.write(f"threadkeeper-service: cannot serve {exc}\n")
    return 2


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


class DrainingServer(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM/SIGINT starts the replica's drain (see begin_drain).

    uvicorn then lets open requests end: streams and waits follow their runs, wherever those
    go on, until the drain cuts them. sse-starlette's own reaction to the signal, ending every
    stream at once without its ``end`` event, is switched off.
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


if __name__ == "__main__":
    sys.exit(main())
