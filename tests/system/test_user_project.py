"""A user's project served by a real ``serve`` process started in its folder, through its own
./langgraph.json: graphs by file and by module, its own http app, and packages named
``service`` and ``reaper`` (names users' projects commonly have) that neither shadow ours nor are
shadowed by them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
from langgraph_sdk import get_client

from tests.support.processes import ServiceProcess
from threadkeeper.service.registry import system_assistant_id

FILES = {
    "service/__init__.py": "",
    "service/wording.py": "def shout(text):\n    return text.upper() + ' (said service)'\n",
    "service/graph.py": """
from typing import TypedDict
from langgraph.graph import StateGraph, START, END

from reaper.rules import keep
from service.wording import shout


class State(TypedDict, total=False):
    text: str
    said: str
    kept: bool


def speak(state: State) -> dict:
    return {"said": shout(state["text"]), "kept": keep(state["text"])}


builder = StateGraph(State)
builder.add_node("speak", speak)
builder.add_edge(START, "speak")
builder.add_edge("speak", END)
graph = builder.compile()
""",
    "reaper/__init__.py": "",
    "reaper/rules.py": "def keep(text):\n    return 'keep' in text\n",
    # By file, as `./agent.py:graph`: its siblings import as they would from a script.
    "agent.py": "from service.graph import builder\n\ngraph = builder.compile(name='by_file')\n",
    "webapp.py": """
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def hello(request):
    return JSONResponse({"hello": "from the user's app"})


async def not_ours(request):
    return PlainTextResponse("the user's readyz", status_code=418)


app = Starlette(routes=[Route("/hello", hello), Route("/readyz", not_ours)])
""",
    "langgraph.json": json.dumps(
        {
            "graphs": {"by_module": "service.graph:graph", "by_file": "./agent.py:graph"},
            "http": {"app": "./webapp.py:app"},
            "dependencies": ["."],
        }
    ),
}


def write_project(root: Path) -> Path:
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


async def test_a_project_with_its_own_service_package_is_served(
    replicas: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    project = write_project(tmp_path / "project")
    server = replicas(cwd=project).start()
    client = get_client(url=server.url)

    for graph_id in ("by_module", "by_file"):
        thread = await client.threads.create()
        result = await client.runs.wait(thread["thread_id"], graph_id, input={"text": "keep me"})
        assert result == {"text": "keep me", "said": "KEEP ME (said service)", "kept": True}
        # The thread's state is read with the graph its run executed.
        state = await client.threads.get_state(thread["thread_id"])
        assert state["values"]["said"] == "KEEP ME (said service)"
        assert state["metadata"]["graph_id"] == graph_id

    # A graph's system assistant is the Agent Server's, and names the graph in a run.
    assistant_id = str(system_assistant_id("by_module"))
    found = {a["graph_id"]: a["assistant_id"] for a in await client.assistants.search()}
    assert found == {g: str(system_assistant_id(g)) for g in ("by_module", "by_file")}
    thread = await client.threads.create()
    result = await client.runs.wait(thread["thread_id"], assistant_id, input={"text": "drop"})
    assert result["kept"] is False


def test_the_projects_http_app_is_served_beside_ours(
    replicas: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    project = write_project(tmp_path / "project")
    server = replicas(cwd=project).start()

    hello = httpx.get(f"{server.url}/hello")
    assert hello.json() == {"hello": "from the user's app"}
    # On a path both serve, ours answers.
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    # A path neither serves is our 404.
    missing = httpx.get(f"{server.url}/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
