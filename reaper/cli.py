"""``threadkeeper-reaper``: apply a RetentionPolicy once, or print the store's size.

Results are JSON on stdout; logs are structlog JSON on stderr. Exit codes: 0 the run succeeded
(or was skipped: another prune holds the database, or the policy is suspended), 1 the run
failed or the database could not be reached, 2 the command line or the policy is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import structlog

from threadkeeper.reaper import stats
from threadkeeper.reaper.db import DatabaseUnavailable, InvalidDatabaseUrl, connect
from threadkeeper.reaper.policy import PolicyError, RetentionPolicy, load_policy
from threadkeeper.reaper.schedule import RETRY_AFTER
from threadkeeper.reaper.summary import Outcome, PruneSummary

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = structlog.get_logger("reaper.cli")


class UsageError(Exception):
    """Wrong arguments or configuration; exits 2."""


def _configure_logging() -> None:
    level = getattr(logging, os.environ.get("THREADKEEPER_LOG_LEVEL", "info").upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _write_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def _database_url(arg: str | None) -> str:
    url = arg or os.environ.get("DATABASE_URL")
    if not url:
        raise UsageError("no database: pass --database-url or set DATABASE_URL")
    return url


def _cmd_prune(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(Path(args.policy))
    except PolicyError as exc:
        raise UsageError(str(exc)) from None
    url = _database_url(args.database_url)
    summary = asyncio.run(_prune(url, policy, dry_run=True if args.dry_run else None))
    _write_json(summary.to_json())
    return EXIT_FAILED if summary.outcome is Outcome.FAILED else EXIT_OK


async def _prune(url: str, policy: RetentionPolicy, *, dry_run: bool | None) -> PruneSummary:
    # Connect first, then import the engine: it pulls in LangGraph (seconds to import), which
    # no other command, and no argument or connection error, should have to wait for.
    conn = await connect(url)
    try:
        from threadkeeper.reaper.engine import prune

        try:
            return await prune(conn, policy, dry_run=dry_run)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(str(exc).strip()) from None
    finally:
        await conn.close()


async def _stats(url: str) -> dict[str, Any]:
    conn = await connect(url)
    try:
        return (await stats.collect(conn)).to_json()
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(str(exc).strip()) from None
    finally:
        await conn.close()


def _cmd_stats(args: argparse.Namespace) -> int:
    _write_json(asyncio.run(_stats(_database_url(args.database_url))))
    return EXIT_OK


def _configure_stdlib_logging() -> None:
    # kopf logs through the standard library: render those records as the same JSON lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("THREADKEEPER_LOG_LEVEL", "info").upper())
    # "Timer 'schedule' succeeded." on every tick, and every probe request: noise at info.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _cmd_run(args: argparse.Namespace) -> int:
    """Run the operator until SIGTERM/SIGINT (kopf handles the signals)."""
    # Checked before the imports below (seconds of them): a wrong command line fails at once.
    if args.tick_interval <= 0:
        raise UsageError("--tick-interval must be positive")
    if args.retry_after <= 0:
        raise UsageError("--retry-after must be positive")
    # Imported here, each as late as it can be: kopf (kube) and the engine (operator, LangGraph)
    # are heavy and only this command needs them.
    from threadkeeper.reaper.kube import Connection, default_namespace

    kubeconfig = Path(args.kubeconfig) if args.kubeconfig else None
    namespaces = list(args.namespace or [])
    if not namespaces:
        fallback = os.environ.get("POD_NAMESPACE") or default_namespace(kubeconfig)
        if not fallback:
            raise UsageError(
                "no namespace: pass --namespace, set POD_NAMESPACE, or use a kubeconfig "
                "context with a namespace"
            )
        namespaces = [fallback]
    from prometheus_client import CollectorRegistry, start_http_server

    from threadkeeper.reaper.operator import run_operator

    _configure_stdlib_logging()
    registry = CollectorRegistry()
    server, thread = start_http_server(args.metrics_port, registry=registry)
    try:
        asyncio.run(
            run_operator(
                namespaces=namespaces,
                connection=Connection(kubeconfig),
                registry=registry,
                liveness_port=args.liveness_port or None,
                tick_interval=args.tick_interval,
                retry_after=timedelta(seconds=args.retry_after),
            )
        )
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threadkeeper-reaper",
        description="Prune LangGraph checkpoints and threads by RetentionPolicy.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prune = commands.add_parser(
        "prune", help="apply one RetentionPolicy manifest once and print a JSON summary"
    )
    prune.add_argument("--policy", required=True, metavar="FILE", help="RetentionPolicy YAML")
    prune.add_argument("--database-url", metavar="URL", help="default: $DATABASE_URL")
    prune.add_argument(
        "--dry-run", action="store_true", help="report what would be deleted, delete nothing"
    )
    prune.set_defaults(handler=_cmd_prune)

    show = commands.add_parser("stats", help="print table sizes and thread counts as JSON")
    show.add_argument("--database-url", metavar="URL", help="default: $DATABASE_URL")
    show.set_defaults(handler=_cmd_stats)

    run = commands.add_parser(
        "run",
        help="run the Kubernetes operator for the RetentionPolicies of some namespaces",
        description="Namespaces: --namespace (repeatable), else $POD_NAMESPACE, else the "
        "in-cluster ServiceAccount's namespace, else the kubeconfig context's namespace.",
    )
    run.add_argument(
        "--namespace", action="append", metavar="NS", help="watch this namespace (repeatable)"
    )
    run.add_argument("--metrics-port", type=int, default=9090, help="/metrics port (9090)")
    run.add_argument(
        "--liveness-port", type=int, default=8080, help="/healthz port (8080); 0 disables it"
    )
    run.add_argument(
        "--kubeconfig", metavar="PATH", help="default: in-cluster ServiceAccount, else $KUBECONFIG"
    )
    run.add_argument(
        "--tick-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often each policy is checked for being due (10)",
    )
    run.add_argument(
        "--retry-after",
        type=float,
        default=RETRY_AFTER.total_seconds(),
        metavar="SECONDS",
        help="when a run was skipped on the prune lock or stalled, try again after this long "
        "(at most the policy's interval) (30)",
    )
    run.set_defaults(handler=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except (UsageError, InvalidDatabaseUrl) as exc:
        sys.stderr.write(f"threadkeeper-reaper: error: {exc}\n")
        return EXIT_USAGE
    except DatabaseUnavailable as exc:
        sys.stderr.write(f"threadkeeper-reaper: error: cannot use the database: {exc}\n")
        return EXIT_FAILED
    except psycopg.Error as exc:
        # The database answered but refused (no such table, no privilege): one line, not a trace.
        reason = str(exc).strip().splitlines()[0]
        sys.stderr.write(f"threadkeeper-reaper: error: the database refused: {reason}\n")
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
