"""``threadkeeper-reaper`` as a process: prune, stats, run, and its errors."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.reaper.support import add_thread, chat, idle_conversations, policy_document, rows_of

DAY = timedelta(days=1)
SCRIPT = Path(sys.executable).parent / "threadkeeper-reaper"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def reaper(*args: str, env: dict[str, str] | None = None, script: bool = False) -> Result:
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "threadkeeper.reaper.cli"]
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = await asyncio.create_subprocess_exec(
        *command,
        *args,
        env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def write_policy(tmp_path: Path, **spec: Any) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy_document(**spec)))
    return str(path)


async def test_prune_prints_a_json_summary(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    database_url: str,
    tmp_path: Path,
) -> None:
    stale = await add_thread(conn, spoke=40 * DAY)
    await chat(graph, stale, "hello")
    policy_file = write_policy(tmp_path, threads={"maxIdle": "30d"})

    dry = await reaper(
        "prune", "--policy", policy_file, "--database-url", database_url, "--dry-run"
    )
    assert dry.code == 0, dry.stderr
    assert dry.json()["dryRun"] is True
    assert dry.json()["threadsDeleted"]["idle"] == 1
    assert (await rows_of(conn, stale))["threads"] == 1

    real = await reaper("prune", "--policy", policy_file, env={"DATABASE_URL": database_url})
    assert real.code == 0, real.stderr
    summary = real.json()
    assert summary["outcome"] == "Succeeded"
    assert summary["dryRun"] is False
    deleted = {"idle": 1, "archived": 0, "orphan": 0, "ttl": 0, "total": 1}
    assert summary["threadsDeleted"] == deleted
    assert summary["checkpointsDeleted"] > 0
    assert set(summary) >= {
        "blobsDeleted",
        "writesDeleted",
        "durationSeconds",
        "message",
        "backlog",
        "threadsSkipped",
    }
    assert (await rows_of(conn, stale))["threads"] == 0
    # Logs go to stderr, one JSON object per line; stdout holds only the summary.
    events = [json.loads(line)["event"] for line in real.stderr.splitlines()]
    assert "thread_deleted" in events and "prune_finished" in events


async def test_stats_prints_table_sizes(
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    database_url: str,
) -> None:
    await chat(graph, await add_thread(conn), "hello")
    result = await reaper("stats", "--database-url", database_url, script=True)
    assert result.code == 0, result.stderr
    data = result.json()
    assert set(data["tables"]) == {
        "checkpoints",
        "checkpoint_blobs",
        "checkpoint_writes",
        "threads",
        "runs",
    }
    assert data["tables"]["checkpoints"]["bytes"] > 0
    assert data["threads"]["active"] == 1


async def test_a_bad_policy_file_exits_2_with_the_reason(tmp_path: Path) -> None:
    policy_file = write_policy(tmp_path, checkpoints={"keepLast": 0})
    result = await reaper("prune", "--policy", policy_file, "--database-url", "postgresql:///x")
    assert result.code == 2
    assert result.stdout == ""
    assert "invalid RetentionPolicy" in result.stderr
    assert "spec.checkpoints.keepLast" in result.stderr

    missing = await reaper("prune", "--policy", str(tmp_path / "nope.yaml"))
    assert missing.code == 2
    assert "cannot read policy file" in missing.stderr


async def test_a_missing_database_url_exits_2(tmp_path: Path) -> None:
    result = await reaper("prune", "--policy", write_policy(tmp_path, checkpoints={}))
    assert result.code == 2
    assert "pass --database-url or set DATABASE_URL" in result.stderr
    stats = await reaper("stats")
    assert stats.code == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_unreachable_database_exits_1_without_leaking_the_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://reaper:s3cret-pw@127.0.0.1:{_closed_port()}/threadkeeper?connect_timeout=2"
    for args in (("prune", "--policy", write_policy(tmp_path, checkpoints={})), ("stats",)):
        result = await reaper(*args, "--database-url", url)
        assert result.code == 1
        assert "cannot use the database" in result.stderr
        assert "s3cret-pw" not in result.stderr + result.stdout


async def test_run_needs_a_namespace(tmp_path: Path) -> None:
    # No --namespace, no POD_NAMESPACE, no kubeconfig context: a usage error, before any
    # connection attempt. (The operator itself is tested in test_operator.py.)
    env = {"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none"), "POD_NAMESPACE": ""}
    result = await reaper("run", env=env)
    assert result.code == 2
    assert "no namespace" in result.stderr


@pytest.mark.parametrize("option", ["--tick-interval", "--retry-after"])
async def test_run_refuses_a_delay_that_is_not_positive(tmp_path: Path, option: str) -> None:
    env = {"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    result = await reaper("run", "--namespace", "ns", option, "0", env=env)
    assert result.code == 2
    assert f"{option} must be positive" in _one_line_error(result)


def _one_line_error(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("threadkeeper-reaper: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


async def test_a_policy_file_that_is_not_utf8_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    text = yaml.safe_dump(policy_document(checkpoints={}, dryRun=True)) + "# caf\xe9\n"
    path.write_bytes(text.encode("latin-1"))
    result = await reaper("prune", "--policy", str(path), "--database-url", "postgresql:///x")
    assert result.code == 2
    assert "is not UTF-8 text" in _one_line_error(result)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("not a url", 'missing "=" after "not"'),
        ("postgresql://reaper:s3cret-pw@127.0.0.1/x?connect_timeout=abc", "connect_timeout"),
        ("postgresql://reaper:s3cret-pw@[::1/x", "IPv6 host address"),
    ],
)
async def test_a_malformed_database_url_exits_2_in_one_line(
    tmp_path: Path, url: str, reason: str
) -> None:
    for args in (("prune", "--policy", write_policy(tmp_path, checkpoints={})), ("stats",)):
        result = await reaper(*args, "--database-url", url)
        assert result.code == 2, result.stderr
        line = _one_line_error(result)
        assert "not a valid database URL" in line and reason in line
        assert "s3cret-pw" not in result.stderr + result.stdout


async def test_a_read_only_role_gets_one_summary_not_a_traceback_per_thread(
    tmp_path: Path,
    conn: AsyncConnection[DictRow],
    graph: CompiledStateGraph,  # type: ignore[type-arg]
    read_only_url: str,
) -> None:
    threads = await idle_conversations(conn, graph)
    policy_file = write_policy(tmp_path, threads={"maxIdle": "30d"})

    result = await reaper("prune", "--policy", policy_file, "--database-url", read_only_url)

    assert result.code == 1
    summary = result.json()
    assert summary["outcome"] == "Failed"
    assert summary["message"].startswith("interrupted: permission denied")
    assert summary["threadsFailed"] == 0
    assert "Traceback" not in result.stderr
    errors = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["event"] for e in errors if e["level"] == "error"] == ["prune_refused"]
    for thread_id in threads:
        assert (await rows_of(conn, thread_id))["threads"] == 1


async def test_stats_of_a_database_without_threadkeepers_tables_exits_1_in_one_line(
    empty_database_url: str,
) -> None:
    result = await reaper("stats", "--database-url", empty_database_url)
    assert result.code == 1
    assert 'relation "threads" does not exist' in _one_line_error(result)


async def test_a_duration_beyond_100_years_exits_2_without_a_traceback(tmp_path: Path) -> None:
    policy_file = write_policy(tmp_path, threads={"maxIdle": "999999d"})
    result = await reaper("prune", "--policy", policy_file, "--database-url", "postgresql:///x")
    assert result.code == 2
    assert "Traceback" not in result.stderr and "OverflowError" not in result.stderr
    assert "spec.threads.maxIdle: '999999d' is too long" in result.stderr
