"""Baseline (d)'s environment: Aegra, the open-source Agent Server, in a virtualenv of its own.

``aegra-api`` needs Python >= 3.12 (the project supports 3.11) and pins of its own, so it lives
in ``tests/perf/aegra/``: a uv project pinned by its ``uv.lock``, whose ``aegra.json`` maps the
graph every baseline serves (``baselines/dev_graph.py``) as Aegra's docs ship a graph. The first
benchmark that asks makes the environment with ``uv sync --locked`` (seconds from uv's cache;
the next runs find it in place); where it cannot be made, ``ensure`` says why in one line and
the benchmarks run without (d).

The interpreter is Python 3.12, as Aegra's own image runs: the one uv finds, else one pyenv has
installed (uv looks at pyenv's shims, which answer only for pyenv's selected version), else the
one uv downloads.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from psycopg import conninfo

PROJECT = Path(__file__).parent / "aegra"
CONFIG = PROJECT / "aegra.json"
LOCK = PROJECT / "uv.lock"
PACKAGE = "aegra-api"
PYTHON = "3.12"
SYNC_TIMEOUT = 600.0
# What a pyenv install's folder is named: a CPython release, no suffix (3.12.1, not 3.12-dev).
PYENV_RELEASE = re.compile(r"\d+\.\d+\.\d+")


@dataclass(frozen=True)
class Environment:
    """Aegra's environment, made: its interpreter runs ``aegra_api``."""

    python: Path


@dataclass(frozen=True)
class Unavailable:
    """Why there is no (d) in this run, in one line."""

    reason: str


def locked_version(lock: Path = LOCK, package: str = PACKAGE) -> str:
    """The version of ``package`` the environment's lock pins (what the table reports)."""
    for entry in tomllib.loads(lock.read_text()).get("package", []):
        if entry.get("name") == package:
            return str(entry["version"])
    raise LookupError(f"{lock} pins no {package}")


def uv_binary() -> str | None:
    """uv: the one ``uv run`` (so ``make bench``) runs under, else the first on PATH."""
    return os.environ.get("UV") or shutil.which("uv")


def pyenv_pythons(root: Path, version: str = PYTHON) -> Iterator[Path]:
    """pyenv's installs of ``version``, newest release first."""
    folders = [
        p
        for p in (root / "versions").glob(f"{version}.*")
        if PYENV_RELEASE.fullmatch(p.name) and (p / "bin" / f"python{version}").exists()
    ]
    folders.sort(key=lambda p: tuple(int(n) for n in p.name.split(".")), reverse=True)
    return (p / "bin" / f"python{version}" for p in folders)


def interpreter(uv: str) -> str:
    """What ``uv sync --python`` gets: a path where one is found, else the version to fetch."""
    found = subprocess.run(
        [uv, "python", "find", "--no-project", PYTHON], capture_output=True, text=True, check=False
    )
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    return str(next(pyenv_pythons(root), PYTHON))


def last_line(text: str) -> str:
    """The last non-blank line of a tool's output: where uv and Python put the error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def sync(uv: str, project: Path = PROJECT) -> Environment | Unavailable:
    """``uv sync --locked`` of ``project``: its virtualenv, made or brought up to its lock."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    args = [uv, "sync", "--locked", "--quiet", "--project", str(project)]
    try:
        done = subprocess.run(
            [*args, "--python", interpreter(uv)],
            env=env,
            capture_output=True,
            text=True,
            timeout=SYNC_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Unavailable(f"`uv sync` of {project} took over {SYNC_TIMEOUT:.0f} s")
    if done.returncode != 0:
        return Unavailable(f"`uv sync` of {project} failed: {last_line(done.stderr)}")
    return Environment(project / ".venv" / "bin" / "python")


@functools.cache
def ensure() -> Environment | Unavailable:
    """Aegra's environment for this run, made once."""
    uv = uv_binary()
    if uv is None:
        return Unavailable("no uv to make its environment with (`make bench` has one)")
    return sync(uv)


def database_url(dsn: str) -> str:
    """The ``DATABASE_URL`` Aegra reads, for a database given as libpq connection info.

    Aegra derives both of its drivers' URLs from this one (asyncpg for its tables, psycopg for
    LangGraph's), so it must be a URL; a Unix socket folder, which a URL cannot hold as its
    host, goes in the ``host`` query parameter, which both drivers read.
    """
    params = conninfo.conninfo_to_dict(dsn)
    user = quote(str(params.get("user", "")), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    host = str(params.get("host", ""))
    port = params.get("port")
    query: dict[str, str] = {}
    if host.startswith("/"):
        query["host"] = host
        if port:
            query["port"] = str(port)
        netloc = ""
    else:
        netloc = f"{host}:{port}" if port else host
    dbname = quote(str(params.get("dbname", "")), safe="")
    suffix = f"?{urlencode(query, safe='/')}" if query else ""
    return f"postgresql://{auth}{netloc}/{dbname}{suffix}"
