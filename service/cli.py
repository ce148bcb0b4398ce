"""``threadkeeper-service``: serve the API or apply the schema."""

from __future__ import annotations

import argparse
import asyncio
import sys

import psycopg
import structlog
from pydantic import ValidationError

from threadkeeper.service import deployment
from threadkeeper.service.app import begin_drain, create_app, database_url
from threadkeeper.service.db import connect
from threadkeeper.service.deployment import CONFIG_ENV, DeploymentError
from threadkeeper.service.logs import configure_logging
from threadkeeper.service.migrations import StoreIndexUnavailable, migrate
from threadkeeper.service.served import check, prepare
from threadkeeper.service.server import DrainingServer, server_config
from threadkeeper.service.settings import Settings
from threadkeeper.service.store import StoreSettings

log = structlog.get_logger("service.cli")


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


if __name__ == "__main__":
    sys.exit(main())
