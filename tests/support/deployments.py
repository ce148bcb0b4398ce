"""Small deployments (a ``langgraph.json`` and its files) written for one test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The least a deployment must serve: one graph of one node.
ONE_NODE_GRAPH_PY = """
from typing import TypedDict

from langgraph.graph import StateGraph


class State(TypedDict):
    n: int


builder = StateGraph(State)
builder.add_node("step", lambda state: {"n": state["n"] + 1})
builder.set_entry_point("step")
graph = builder.compile()
"""


def write_deployment(folder: Path, *, store: dict[str, Any] | None = None, **files: str) -> Path:
    """``folder/langgraph.json`` serving the one-node graph (``./graph.py:graph``), with
    ``store`` as its store key and ``files`` (name: source) beside it; its path."""
    (folder / "graph.py").write_text(ONE_NODE_GRAPH_PY)
    for name, source in files.items():
        (folder / name).write_text(source)
    config: dict[str, Any] = {"graphs": {"g": "./graph.py:graph"}}
    if store is not None:
        config["store"] = store
    path = folder / "langgraph.json"
    path.write_text(json.dumps(config))
    return path
