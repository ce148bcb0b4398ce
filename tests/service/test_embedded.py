"""With no DATABASE_URL the service starts its own Postgres, and its data survives restarts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow


def test_embedded_postgres_keeps_threads_across_restarts(tmp_path: Path) -> None:
    # Outside pytest's basetemp, which a concurrent pytest session may prune.
    data_dir = Path(tempfile.mkdtemp(prefix="threadkeeper-data-"))
    env = {"THREADKEEPER_DATA_DIR": str(data_dir)}
    try:
        # An empty DATABASE_URL means none: the service starts the embedded server.
        first = ServiceProcess("", tmp_path, "embedded", **env)
        first.start()
        r = httpx.post(f"{first.url}/chat", json={"message": "remember the embedded teapot"})
        assert r.status_code == 200, r.text
        tid = r.json()["thread_id"]
        first.terminate()
        assert (data_dir / "pgdata" / "PG_VERSION").is_file()

        second = ServiceProcess("", tmp_path, "embedded-again", **env)
        second.start()
        try:
            again = httpx.post(
                f"{second.url}/chat", json={"thread_id": tid, "message": "still there?"}
            )
            assert again.status_code == 200, again.text
            assert "Turn 2." in again.json()["reply"]
            assert "embedded teapot" in again.json()["reply"]
        finally:
            second.terminate()
        # The last service to stop also stopped the server (after SIGTERM, too).
        assert _processes_using(data_dir) == []
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _processes_using(path: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if str(path) in cmdline and state != "Z":
            found.append(int(proc.name))
    return found
