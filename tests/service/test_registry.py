"""The deployment's graphs as runs use them: resolved from a graph id or a system assistant's
id, stamped into each run, bound once when compiled and per run when a factory, always on the
service's checkpointer. In-process app and executor, real Postgres."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from langchain_core.runnables import RunnableConfig
from structlog.testing import capture_logs

from tests.support.fixtures import app_client
from tests.support.runs import claimed
from threadkeeper.service import deployment
from threadkeeper.service.app import create_app
from threadkeeper.service.db import Pool
from threadkeeper.service.executor import Executor
from threadkeeper.service.metrics import Metrics
from threadkeeper.service.notify import Hub
from threadkeeper.service.registry import Registry, system_assistant_id
from threadkeeper.service.served import Served, prepare
from threadkeeper.service.settings import Settings

PROJECT = """
from typing import TypedDict
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import StateGraph, START, END

class State(TypedDict):
    n: int
    by: str

def builder(name):
    def step(state: State) -> dict:
        return {"n": state["n"] + 1, "by": name}
    b = StateGraph(State)
    b.add_node("step", step)
    b.add_edge(START, "step")
    b.add_edge("step", END)
    return b

# Compiled with a checkpointer of its own: the service's replaces it.
counting = builder("counting").compile(checkpointer=InMemorySaver())
seen = []

def factory(config):
    seen.append(config)
    if config["configurable"].get("explode"):
        raise RuntimeError("no graph for this run")
    return builder("factory")
"""


def served_project(tmp_path: Path) -> Served:
    (tmp_path / "project.py").write_text(PROJECT)
    config = tmp_path / "langgraph.json"
    graphs = {"counting": "./project.py:counting", "built": "./project.py:factory"}
    config.write_text(json.dumps({"graphs": graphs}))
    return prepare(deployment.load(config))


def factory_calls(served: Served) -> list[RunnableConfig]:
    built = served.graphs["built"].factory
    assert built is not None
    seen: list[RunnableConfig] = sys.modules[built.__module__].seen
    return seen


def project_client(settings_for: Callable[..., Settings], served: Served) -> app_client:
    """An in-process replica serving the project."""
    return app_client(create_app(settings_for(), run_migrations=False, served=served))


async def run(client: httpx.AsyncClient, assistant: str, **body: Any) -> httpx.Response:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    return await client.post(
        f"/threads/{tid}/runs/wait", json={"assistant_id": assistant, "input": {"n": 0}, **body}
    )


def test_system_assistant_ids_are_the_agent_servers() -> None:
    assert system_assistant_id("agent") == UUID("fe096781-5601-53d2-b2f6-0d3403f7e9ca")


async def test_resolve_names_a_graph_by_id_or_system_assistant(pool: Pool, tmp_path: Path) -> None:
    registry = Registry(served_project(tmp_path).graphs, pool)
    assert registry.resolve("counting") == "counting"
    assert registry.resolve(str(system_assistant_id("built"))) == "built"
    assert registry.resolve("agent") is None
    assert registry.resolve(str(uuid.uuid4())) is None
    assert registry.default == "counting"


async def test_a_compiled_graph_is_bound_once_a_factory_per_run(pool: Pool, tmp_path: Path) -> None:
    with capture_logs() as logs:
        served = served_project(tmp_path)
    # Start-up says the graph's own checkpointer is not the one that keeps its threads.
    (warned,) = [e for e in logs if e["event"] == "graph_persistence_replaced"]
    assert (warned["graph_id"], warned["replaced"]) == ("counting", ["checkpointer"])
    registry = Registry(served.graphs, pool)
    config = RunnableConfig(configurable={"thread_id": "t"})
    first = await registry.bind("counting", config)
    assert await registry.bind("counting", config) is first
    # The user's own checkpointer is gone: the service attaches its saver per run.
    assert served.graphs["counting"].replaced == ("checkpointer",)
    assert first.graph.checkpointer is None
    calls = len(factory_calls(served))
    one, two = await registry.bind("built", config), await registry.bind("built", config)
    assert one.graph is not two.graph
    assert len(factory_calls(served)) == calls + 2


async def test_runs_execute_the_graph_their_assistant_names(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    served = served_project(tmp_path)
    async with project_client(settings_for, served) as client:
        by_id = await run(client, "counting")
        assert by_id.json() == {"n": 1, "by": "counting"}
        # A caller's own graph_id in its config does not pick the graph; the assistant does.
        picked = await run(
            client,
            str(system_assistant_id("built")),
            config={"configurable": {"graph_id": "counting", "user_key": "u"}},
        )
        assert picked.json() == {"n": 1, "by": "factory"}
        configurable = factory_calls(served)[-1]["configurable"]
        assert configurable["graph_id"] == "built"
        assert configurable["assistant_id"] == str(system_assistant_id("built"))
        assert configurable["user_key"] == "u"
        assert (await run(client, "agent")).status_code == 404


async def test_a_factory_failing_for_one_run_ends_that_run_with_its_error(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    async with project_client(settings_for, served_project(tmp_path)) as client:
        failed = await run(client, "built", config={"configurable": {"explode": True}})
        assert failed.json() == {
            "__error__": {"error": "RuntimeError", "message": "no graph for this run"}
        }
        assert (await run(client, "built")).json() == {"n": 1, "by": "factory"}


async def test_a_graph_compiled_with_its_own_checkpointer_keeps_state_in_postgres(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    async with project_client(settings_for, served_project(tmp_path)) as client:
        tid = (await client.post("/threads", json={})).json()["thread_id"]
        url = f"/threads/{tid}/runs/wait"
        await client.post(url, json={"assistant_id": "counting", "input": {"n": 0}})
    # Another app (a replica) sees the thread's state: it lives in Postgres, not in memory.
    async with project_client(settings_for, served_project(tmp_path)) as client:
        state = (await client.get(f"/threads/{tid}/state")).json()
        assert state["values"] == {"n": 1, "by": "counting"}


async def test_a_run_queued_without_a_graph_id_runs_its_assistants_graph(
    pool: Pool, tmp_path: Path
) -> None:
    registry = Registry(served_project(tmp_path).graphs, pool)
    executor = Executor(
        pool=pool,
        hub=Hub("postgresql://unused"),
        registry=registry,
        metrics=Metrics(),
        replica="registry-test",
        lease_seconds=30.0,
    )
    row = await claimed(pool, "registry-test", assistant_id="built", input={"n": 5})
    attempt = executor.start(row)
    assert attempt.task is not None
    outcome = await attempt.task
    assert outcome.values == {"n": 6, "by": "factory"}
