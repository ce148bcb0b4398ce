"""The Agent Chat UI of examples/chat-ui, built once and served by ``next start``.

``next build`` costs minutes on two cores, so a build is kept with a stamp of what it was built
from (the lock file, the sources, the build-time settings, Node's version): in ``.next``, and
(without Next's 400 MB compiler cache) in the user's cache folder, where a fresh clone (CI), at
any path, finds it. A later session, or ``make ui``, reuses it while the stamp matches; a change
to any of those inputs builds from source again.
``python -m tests.browser.chat_ui build`` (``make ui-build``, which ``make test`` runs before
pytest) builds if needed; the browser tests start their own server on a free port.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs
import structlog

from tests.cluster.proc import kill_group
from tests.support.processes import free_port, spawn, wait_ready

log = structlog.get_logger("tests.chat_ui")

APP = Path(__file__).resolve().parents[2] / "examples" / "chat-ui"
NEXT = APP / "node_modules" / ".bin" / "next"
BUILD = APP / ".next"
STAMP_FILE = "threadkeeper-build-stamp"
# Builds kept across clones, one per stamp (the latest only).
CACHE = Path(platformdirs.user_cache_dir("threadkeeper")) / "chat-ui"
# What a build depends on besides its sources: changing one of these rebuilds.
BUILD_FILES = (
    "package-lock.json",
    "package.json",
    "next.config.mjs",
    "tsconfig.json",
    "postcss.config.mjs",
    "tailwind.config.js",
    "components.json",
    ".env.production",
)
BUILD_TIMEOUT = 900.0
START_TIMEOUT = 60.0


def _env() -> dict[str, str]:
    return {**os.environ, "NEXT_TELEMETRY_DISABLED": "1"}


def build_stamp(app: Path = APP) -> str:
    """A digest of everything ``next build`` reads: the app's files and sources, the Node
    version.

    Not the app's place: Next writes the absolute paths of the modules it bundled into its
    manifests and server chunks, but only as ids that the build's own files look each other up
    by (a client reference's id, the manifest's key for it), never as files ``next start`` opens,
    so a build serves the same from a clone at another path.
    """
    digest = hashlib.sha256()
    sources = sorted(p for p in (app / "src").rglob("*") if p.is_file())
    for path in [app / name for name in BUILD_FILES] + sources:
        digest.update(str(path.relative_to(app)).encode())
        digest.update(path.read_bytes() if path.exists() else b"-")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    digest.update(node.stdout.encode())
    return digest.hexdigest()


def ensure_built() -> None:
    """``next build`` unless a build of these exact inputs is in ``.next`` or the cache."""
    if not NEXT.exists():
        raise RuntimeError(f"{APP} has no node_modules: run `make ui-deps` (npm ci) first")
    stamp = build_stamp()
    if _stamp_of(BUILD) == stamp:
        return
    kept = CACHE / stamp
    if _stamp_of(kept) == stamp:
        shutil.rmtree(BUILD, ignore_errors=True)
        shutil.copytree(kept, BUILD)
        log.info("chat_ui_build_reused", cache=str(kept))
        return
    log.info("chat_ui_build", app=str(APP))
    began = time.monotonic()
    _next_build()
    (BUILD / STAMP_FILE).write_text(stamp)
    _keep(stamp)
    log.info("chat_ui_built", seconds=round(time.monotonic() - began, 1))


def _next_build() -> None:
    """``next build`` in a session of its own: a build cut short (its timeout, a test's,
    Ctrl-C) takes its worker processes with it."""
    command = [str(NEXT), "build"]
    proc = subprocess.Popen(command, cwd=APP, env=_env(), start_new_session=True)
    try:
        code = proc.wait(BUILD_TIMEOUT)
    finally:
        kill_group(proc)
    if code != 0:
        raise subprocess.CalledProcessError(code, command)


def _stamp_of(build: Path) -> str | None:
    path = build / STAMP_FILE
    return path.read_text() if path.exists() else None


def _keep(stamp: str) -> None:
    """Copy the build (not Next's compiler cache) to the cache, replacing older ones."""
    shutil.rmtree(CACHE, ignore_errors=True)
    partial = CACHE / f"{stamp}.partial"
    shutil.copytree(BUILD, partial, ignore=shutil.ignore_patterns("cache"))
    partial.rename(CACHE / stamp)


@contextmanager
def serving(log_dir: Path) -> Iterator[str]:
    """``next start`` on a free loopback port; yields its URL, stops it afterwards."""
    ensure_built()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "next.log"
    with log_path.open("ab") as out:
        proc = spawn([str(NEXT), "start", "-H", "127.0.0.1", "-p", str(port)], _env(), out, APP)
    try:
        wait_ready(
            proc, url, "next start", lambda: log_path.read_text(errors="replace"), START_TIMEOUT
        )
        yield url
    finally:
        proc.kill()
        proc.wait(10)


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m tests.browser.chat_ui build")
    ensure_built()
