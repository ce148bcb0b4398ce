"""Child-process plumbing: children that die with their parent, and group-wide stops."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel SIGKILL the child when this process dies.

    atexit handlers do not run when a test run is SIGKILLed or crashes, and an orphaned
    kube-apiserver would keep its port and memory forever. PR_SET_PDEATHSIG fires when the
    thread that forked the child exits, so start children from a long-lived thread.
    Linux only; elsewhere it returns None and atexit cleanup is all there is.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then nothing would kill us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn(
    args: list[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    detached: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a child in a session of its own, its output appended to `log`.

    Unless `detached`, it dies with this process (`die_with_parent`).
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=None if detached else die_with_parent(),
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child started in a session of its own, and everything it started, unless it
    has ended; an interrupted build (Ctrl-C, a timeout) leaves no workers behind."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone.

    Stored next to a pid so a later `down` never signals an unrelated process that
    reused the pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses; the fields after it do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    if sys.platform.startswith("linux"):
        return start_time(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL it if it lingers.

    Every child is started with start_new_session, so its pid is also its process-group
    id and the group holds nothing else of ours.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            # Reap it if it is our child; otherwise it is init's problem.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not alive(pid) and not _group_exists(pid):
                return
            time.sleep(0.05)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count as group members until reaped; they hold no ports or memory.
    return any(_pgid_of(p) == pgid and alive(p) for p in _all_pids())


def _all_pids() -> list[int]:
    try:
        return [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_refuses(port: int) -> bool:
    """True if nothing accepts connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except (ConnectionRefusedError, TimeoutError):
            return True
        return False
