"""The servers a benchmark talks to, each a real process on loopback.

* ``ours``: ``threadkeeper-service serve`` (tests.support.processes.ServiceProcess).
* ``tutorial``: baseline (a), the article's wiring (tests/perf/baselines/tutorial.py) under uvicorn.
* ``langgraph_dev``: baseline (c), ``langgraph dev`` (in-memory Agent Server), the same graph.
* ``aegra``: baseline (d), Aegra (``aegra-api``) on Postgres, the same graph, in its own
  environment (tests.perf.aegra_env); ``start_aegra`` skips it, saying why, where it cannot run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import httpx

from tests.perf import aegra_env
from tests.perf.harness import Bench
from tests.support.processes import ServiceProcess, free_port, spawn

BASELINES = Path(__file__).parent / "baselines"
READY_TIMEOUT = 120.0
AEGRA = "(d) Aegra"
QUICK_SKIP = "the quick run starts it in benchmark 1 only"
# Colours in a console log line (Aegra's, outside production mode).
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class HttpProcess:
    """A server process started with a command line, ready when ``ready_path`` answers 200."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, ready_path: str
    ) -> None:
        self.name = name
        self.port = free_port()
        self.args = [a.replace("{port}", str(self.port)) for a in args]
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def start(self) -> HttpProcess:
        with self.log_path.open("ab") as log:
            self.proc = spawn(self.args, {**os.environ, **self.env}, log)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.logs()[-4000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready:\n{self.logs()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> HttpProcess:
        try:
            return self.start()
        except BaseException:
            # One that never answered is still running: __exit__ is not called for it.
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ours(database_url: str, log_dir: Path, name: str = "ours", **env: str) -> ServiceProcess:
    """A replica of ours, not yet started. Logs at warning: the baselines log nothing per turn."""
    return ServiceProcess(database_url, log_dir, name, THREADKEEPER_LOG_LEVEL="warning", **env)


def tutorial(database_url: str, log_dir: Path, latency_ms: int = 0) -> HttpProcess:
    args = [
        sys.executable, "-m", "uvicorn", "tests.perf.baselines.tutorial:app",
        "--host", "127.0.0.1", "--port", "{port}", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = {"DATABASE_URL": database_url, "OFFLINE_LATENCY_MS": str(latency_ms)}
    return HttpProcess("tutorial", args, env, log_dir, "/healthz")


def langgraph_dev_available() -> bool:
    return shutil.which("langgraph", path=str(Path(sys.executable).parent)) is not None


def langgraph_dev(log_dir: Path, latency_ms: int = 0) -> HttpProcess:
    """``langgraph dev``: in-memory, no reload, no browser, no telemetry."""
    exe = str(Path(sys.executable).parent / "langgraph")
    args = [
        exe, "dev", "--config", str(BASELINES / "langgraph.json"), "--host", "127.0.0.1",
        "--port", "{port}", "--no-browser", "--no-reload",
    ]  # fmt: skip
    env = {
        "OFFLINE_LATENCY_MS": str(latency_ms),
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(BASELINES.parent.parent.parent),
    }
    return HttpProcess("langgraph-dev", args, env, log_dir, "/ok")


def aegra(
    environment: aegra_env.Environment, database_url: str, log_dir: Path, latency_ms: int = 0
) -> HttpProcess:
    """Aegra as ``aegra serve`` runs it (``uvicorn aegra_api.main:app``, which that command starts
    in a child process; started directly, so the process measured and stopped is the server).

    Its own defaults otherwise: migrations on start-up, the no-op auth, no Redis (runs execute in
    the serving process, as ``aegra serve`` without a broker does), its pool sizes. Logs at
    warning, as the other servers here do.
    """
    args = [
        str(environment.python), "-m", "uvicorn", "aegra_api.main:app",
        "--host", "127.0.0.1", "--port", "{port}",
    ]  # fmt: skip
    env = {
        "AEGRA_CONFIG": str(aegra_env.CONFIG),
        "DATABASE_URL": aegra_env.database_url(database_url),
        "AUTH_TYPE": "noop",
        "REDIS_BROKER_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "OFFLINE_LATENCY_MS": str(latency_ms),
        "LANGSMITH_TRACING": "false",
    }
    return HttpProcess("aegra", args, env, log_dir, "/ready")


def start_aegra(
    stack: ExitStack,
    bench: Bench,
    benchmark: str,
    latency_ms: int = 0,
    *,
    smoke: bool = False,
    environment: aegra_env.Environment | aegra_env.Unavailable | None = None,
) -> HttpProcess | None:
    """Aegra on a new, empty database, stopped with ``stack``; None, noted as skipped in
    ``bench`` with the reason, where its environment cannot be made or it does not start.

    ``smoke``: whether the quick run starts it too. Starting it costs about 20 s on a busy
    2-core host (its imports and migrations), and its turns are several times ours, so the
    quick run checks it in one benchmark only. ``environment``: this run's unless given.
    """
    if bench.quick and not smoke:
        bench.skip(benchmark, AEGRA, QUICK_SKIP)
        return None
    environment = environment or aegra_env.ensure()
    if isinstance(environment, aegra_env.Unavailable):
        bench.skip(benchmark, AEGRA, environment.reason)
        return None
    database = stack.enter_context(bench.database(migrated=False))
    server = aegra(environment, database, bench.work, latency_ms)
    try:
        return stack.enter_context(server)
    except (RuntimeError, TimeoutError) as exc:
        # The log goes with the run's scratch folder: its last line is what says why.
        said = aegra_env.last_line(ANSI.sub("", server.logs()))
        bench.skip(benchmark, AEGRA, f"did not start ({type(exc).__name__}): {said}")
        return None
