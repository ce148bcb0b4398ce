"""A configuration that cannot be served never half-starts: real ``serve`` processes exit
non-zero at start-up, saying which config, which key and what went wrong (the traceback of the
user's code, not of ours), and ``/readyz`` never answers ready meanwhile."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ServiceProcess

EXIT_TIMEOUT = 60.0
BAD_INPUT = 2

GRAPH = """
from typing import TypedDict
from langgraph.graph import StateGraph, START, END

class State(TypedDict):
    n: int

builder = StateGraph(State)
builder.add_node("bump", lambda state: {"n": state["n"] + 1})
builder.add_edge(START, "bump")
builder.add_edge("bump", END)
graph = builder.compile()
not_a_graph = 42

def broken_factory(config):
    return explode()

def explode():
    raise RuntimeError("the factory's own failure")
"""

HELPER = "def boom():\n    raise ValueError('bad user code')\n"


@dataclass(frozen=True)
class Case:
    config: str | None  # langgraph.json's text; None: no file at all
    key: str
    error: str
    # A line of the user's code the report must show, from its traceback.
    user_frame: str | None = None


CASES = {
    "missing-file": Case(None, "", "no such file"),
    "import-error": Case(
        json.dumps({"graphs": {"agent": "./broken.py:graph"}}),
        "graphs.agent",
        "ValueError: bad user code",
        "raise ValueError('bad user code')",
    ),
    "not-a-graph": Case(
        json.dumps({"graphs": {"agent": "./agent.py:not_a_graph"}}),
        "graphs.agent",
        "int is not a graph",
    ),
    "duplicate-id": Case(
        '{"graphs": {"agent": "./agent.py:graph", "agent": "./agent.py:graph"}}',
        "",
        "key 'agent' is given twice",
    ),
    "factory-raises": Case(
        json.dumps({"graphs": {"agent": "./agent.py:broken_factory"}}),
        "graphs.agent",
        "RuntimeError: the factory's own failure",
        'raise RuntimeError("the factory\'s own failure")',
    ),
    "http-app-not-an-app": Case(
        json.dumps({"graphs": {"agent": "./agent.py:graph"}, "http": {"app": "./agent.py:graph"}}),
        "http.app",
        "is not a Starlette (or FastAPI) app",
    ),
}


def write_project(root: Path, case: Case) -> Path:
    root.mkdir()
    (root / "agent.py").write_text(GRAPH)
    (root / "helper.py").write_text(HELPER)
    (root / "broken.py").write_text("from helper import boom\nboom()\n")
    config = root / "langgraph.json"
    if case.config is not None:
        config.write_text(case.config)
    return config


def exit_code_while_never_ready(server: ServiceProcess) -> int:
    """Poll /readyz until the process exits, failing if it ever answers ready."""
    assert server.proc is not None
    deadline = time.monotonic() + EXIT_TIMEOUT
    while (code := server.proc.poll()) is None:
        assert time.monotonic() < deadline, f"still running:\n{server.logs()[-4000:]}"
        try:
            ready = httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            ready = False
        assert not ready, "a replica with a bad configuration turned ready"
        time.sleep(0.05)
    return code


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_configuration_exits_at_start_up(
    replicas: Callable[..., ServiceProcess], tmp_path: Path, case: Case
) -> None:
    config = write_project(tmp_path / "project", case)
    server = replicas(args=("--config", str(config))).start(wait=False)
    assert exit_code_while_never_ready(server) == BAD_INPUT
    report = server.logs()
    assert f"{config}: {case.key}" in report
    assert case.error in report
    if case.user_frame is not None:
        assert case.user_frame in report
    # Our frames (loading, the CLI, importlib) are left out of what the user reads.
    for ours in ("service/graphs.py", "service/cli.py", "service/served.py", "importlib"):
        assert ours not in report


def test_the_config_comes_from_the_environment_too(
    replicas: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    missing = tmp_path / "elsewhere.json"
    server = replicas(THREADKEEPER_CONFIG=str(missing)).start(wait=False)
    assert exit_code_while_never_ready(server) == BAD_INPUT
    assert f"{missing}: no such file" in server.logs()
