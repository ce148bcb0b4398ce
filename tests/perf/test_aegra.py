"""Baseline (d)'s plumbing: Aegra's database URL, its interpreter, its environment, its start.

Aegra itself runs only in the benchmarks (its environment is made for ``make bench``); here its
start-up failure path runs a real uvicorn that cannot import it, as on a host without it.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.perf import aegra_env, harness, servers


def test_database_url_of_the_test_database_connects(empty_database_url: str) -> None:
    # The embedded server listens on a Unix socket only: its folder goes in the query.
    params = psycopg.conninfo.conninfo_to_dict(empty_database_url)
    url = aegra_env.database_url(empty_database_url)
    assert url.startswith("postgresql://")
    if str(params.get("host", "")).startswith("/"):
        assert f"?host={params['host']}" in url
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None and row[0] == params["dbname"]


def test_database_url_quotes_what_a_url_cannot_hold() -> None:
    dsn = "host=db.internal port=6543 user=ag@nt password=p/ss:w@rd dbname=app"
    assert (
        aegra_env.database_url(dsn) == "postgresql://ag%40nt:p%2Fss%3Aw%40rd@db.internal:6543/app"
    )
    assert aegra_env.database_url("host=/run/pg port=5433 dbname=x") == (
        "postgresql:///x?host=/run/pg&port=5433"
    )


def _install(root: Path, version: str, python: str = "python3.12") -> None:
    exe = root / "versions" / version / "bin" / python
    exe.parent.mkdir(parents=True)
    exe.touch()


def test_pyenv_pythons_newest_release_first(tmp_path: Path) -> None:
    for version in ("3.12.1", "3.12.10", "3.12.2"):
        _install(tmp_path, version)
    _install(tmp_path, "3.12-dev")  # not a release
    _install(tmp_path, "3.13.0", "python3.13")  # not the version asked for
    (tmp_path / "versions" / "3.12.3").mkdir()  # no interpreter in it
    found = [p.parts[-3] for p in aegra_env.pyenv_pythons(tmp_path)]
    assert found == ["3.12.10", "3.12.2", "3.12.1"]
    assert list(aegra_env.pyenv_pythons(tmp_path / "none")) == []


def test_locked_version_reads_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text(
        'version = 1\n[[package]]\nname = "other"\nversion = "1.0"\n'
        '[[package]]\nname = "aegra-api"\nversion = "9.8.7"\n'
    )
    assert aegra_env.locked_version(lock) == "9.8.7"
    with pytest.raises(LookupError, match="pins no nothing"):
        aegra_env.locked_version(lock, "nothing")
    # The project's own lock pins what the issue names.
    assert aegra_env.locked_version() == "0.11.0"


def test_sync_that_fails_says_why_in_one_line(tmp_path: Path) -> None:
    uv = aegra_env.uv_binary()
    if uv is None:
        pytest.skip("no uv here")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "0"\nrequires-python = ">=3.12"\ndependencies = []\n'
        "[tool.uv]\npackage = false\n"
    )
    result = aegra_env.sync(uv, tmp_path)  # --locked, and there is no lock
    assert isinstance(result, aegra_env.Unavailable)
    assert "\n" not in result.reason and "failed" in result.reason and "lock" in result.reason


def test_ensure_without_uv_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    aegra_env.ensure.cache_clear()
    try:
        result = aegra_env.ensure()
    finally:
        aegra_env.ensure.cache_clear()
    assert result == aegra_env.Unavailable(
        "no uv to make its environment with (`make bench` has one)"
    )


def test_last_line_is_the_error() -> None:
    said = aegra_env.last_line("Resolved 3\n  error: no such version  \n\n")
    assert said == "error: no such version"
    assert aegra_env.last_line("") == "no output"


def test_aegra_that_does_not_start_is_skipped_with_its_error(
    pg_server: str, tmp_path: Path
) -> None:
    # This project's own interpreter has uvicorn but no aegra_api: the server exits at once.
    bench = harness.Bench(server_url=pg_server, work=tmp_path, quick=True)
    environment = aegra_env.Environment(Path(sys.executable))
    with ExitStack() as stack:
        started = servers.start_aegra(stack, bench, "1. x", smoke=True, environment=environment)
    assert started is None
    [skipped] = bench.skipped
    assert (skipped.benchmark, skipped.baseline) == ("1. x", servers.AEGRA)
    assert skipped.reason.startswith("did not start (RuntimeError): ")
    assert "aegra_api" in skipped.reason and "\n" not in skipped.reason
    rows = [harness.alone("1. x", "m", "u", [1.0])]
    text = harness.render(_INFO, rows, {}, bench.skipped)
    assert f"SKIPPED {servers.AEGRA} in 1. x: did not start" in text
    harness.write_json(tmp_path / "r.json", _INFO, rows, {}, True, bench.skipped)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["skipped"] == [skipped.to_json()]


def test_the_quick_run_starts_aegra_only_where_asked(tmp_path: Path) -> None:
    # Not even its environment is made: an interpreter that does not exist would fail.
    bench = harness.Bench(server_url="unused", work=tmp_path, quick=True)
    missing = aegra_env.Environment(tmp_path / "no-python")
    with ExitStack() as stack:
        assert servers.start_aegra(stack, bench, "3. y", environment=missing) is None
    assert bench.skipped == [harness.Skipped("3. y", servers.AEGRA, servers.QUICK_SKIP)]
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_never_answers_is_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(servers, "READY_TIMEOUT", 1.0)
    silent = servers.HttpProcess(
        "silent", [sys.executable, "-c", "import time; time.sleep(120)"], {}, tmp_path, "/"
    )
    with pytest.raises(TimeoutError), silent:
        pass
    assert silent.proc is not None and silent.proc.poll() is not None


_INFO: dict[str, Any] = {
    "cores": 2, "cpu": "cpu", "platform": "linux", "python": "3.11", "postgres": "18",
    "commit": "abc", "packages": {"langgraph": "1"},
}  # fmt: skip
