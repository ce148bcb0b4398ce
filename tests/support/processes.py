"""Real ``threadkeeper-service serve`` processes for multi-replica tests.

Each process gets PR_SET_PDEATHSIG so it dies with the test runner even if pytest is killed,
and every fixture stops what it started in a ``finally``.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

PR_SET_PDEATHSIG = 1
READY_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so every child is
# forked from this one long-lived thread (tests restart replicas from their own threads).
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")


def spawn(
    args: list[str], env: dict[str, str], log: IO[bytes], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    return _SPAWNER.submit(
        subprocess.Popen,
        args,
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    ).result()


def wait_ready(
    proc: subprocess.Popen[bytes] | None,
    url: str,
    name: str,
    logs: Callable[[], str],
    timeout: float = READY_TIMEOUT,
) -> None:
    """Until ``url`` answers 200; fails at once with the end of ``logs`` when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{logs()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{name} not ready after {timeout}s:\n{logs()[-4000:]}")


async def until_refused(port: int) -> None:
    """Until nothing accepts connections on ``port`` of loopback: a server stopped listening
    (uvicorn does that first when it shuts down)."""
    async with asyncio.timeout(READY_TIMEOUT):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return
            writer.close()
            await asyncio.sleep(0.01)


class ServiceProcess:
    """One replica: start, wait until ready, SIGKILL or SIGTERM it, start it again.

    ``cwd``: the folder it starts in (a user's project: its ./langgraph.json is the default
    config, and ``python -m`` puts it first on the import path); ``args``: more ``serve``
    options.
    """

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        name: str,
        *,
        cwd: Path | None = None,
        args: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        self.database_url = database_url
        self.cwd = cwd
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.name = name
        self.port = free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    def start(self, *, migrate: bool = True, wait: bool = True) -> ServiceProcess:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "THREADKEEPER_REPLICA": self.name,
            "THREADKEEPER_LOG_FORMAT": "json",
            **self.env,
        }
        args = [sys.executable, "-m", "threadkeeper.service.cli", "serve", "--port", str(self.port)]
        if not migrate:
            args.append("--no-migrate")
        args.extend(self.args)
        log = self.log_path.open("ab")
        self.proc = spawn(args, env, log, self.cwd)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        wait_ready(self.proc, f"{self.url}/readyz", self.name, self.logs, timeout)

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 40.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def wait_for_runs(self, minimum: int, timeout: float = 60) -> None:
        """Until the replica executes at least ``minimum`` runs at once (read from /metrics)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"{self.url}/metrics", timeout=5).text
            except httpx.TransportError:
                text = ""
            for line in text.splitlines():
                if (
                    line.startswith("threadkeeper_runs_in_flight ")
                    and float(line.split()[1]) >= minimum
                ):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} never ran {minimum} runs at once")

    def gauge(self, name: str) -> float | None:
        """One unlabelled gauge of the replica's /metrics; None if it does not answer."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=5).text
        except httpx.TransportError:
            return None
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
