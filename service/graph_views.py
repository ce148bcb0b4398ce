"""What a graph shows of itself to clients: its drawing, its JSON schemas, its subgraphs.

The shapes are langgraph-api's (``/assistants/{id}/graph``, ``/schemas``, ``/subgraphs``), so
``RemoteGraph.get_graph()`` and the SDK read them unchanged. A schema LangGraph cannot derive is
null, as there, rather than an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import structlog
from langchain_core.utils.pydantic import create_model
from langgraph.warnings import LangGraphDeprecatedSinceV10
from pydantic import TypeAdapter

from threadkeeper.service.graphs import AnyGraph

log = structlog.get_logger(__name__)

# Keys of ``configurable`` the server sets itself; not part of what an assistant configures.
SERVER_CONFIGURABLE = (
    "__pregel_checkpointer",
    "__pregel_store",
    "checkpoint_id",
    "checkpoint_ns",
    "thread_id",
)


async def drawing(graph: AnyGraph, xray: bool | int) -> dict[str, Any]:
    """The drawable graph as JSON (nodes and edges), without nodes' internal ids."""
    found = (await graph.aget_graph(xray=xray)).to_json()
    for node in found.get("nodes", []):
        data = node.get("data")
        if isinstance(data, dict):
            data.pop("id", None)
    return found


def schemas(graph: AnyGraph) -> dict[str, Any]:
    return {
        "input_schema": _derived(graph, "input", graph.get_input_jsonschema),
        "output_schema": _derived(graph, "output", graph.get_output_jsonschema),
        "state_schema": _derived(graph, "state", lambda: _state_schema(graph)),
        "config_schema": _derived(graph, "config", lambda: _configurable_schema(graph)),
        "context_schema": _derived(graph, "context", graph.get_context_jsonschema),
    }


async def subgraphs(graph: AnyGraph, namespace: str | None, recurse: bool) -> dict[str, Any]:
    """Each subgraph's schemas, by namespace."""
    return {
        ns: schemas(sub)  # type: ignore[arg-type]  # a Pregel, unless it is a RemoteGraph
        async for ns, sub in graph.aget_subgraphs(namespace=namespace, recurse=recurse)
    }


def _derived(graph: AnyGraph, what: str, derive: Callable[[], Any]) -> Any:
    try:
        return derive()
    except Exception as exc:  # the user's types may be anything pydantic cannot describe
        log.warning("schema_not_derived", graph=graph.name, schema=what, error=str(exc))
        return None


def _state_schema(graph: AnyGraph) -> dict[str, Any]:
    """Every channel a client sees in ``values``, typed by what an update to it takes."""
    fields: dict[str, Any] = {}
    for key in graph.stream_channels_list:
        update_type = getattr(graph.channels[key], "UpdateType", Any)
        try:
            create_model(key, __root__=(update_type, None)).model_json_schema()
            fields[key] = (update_type, None)
        except Exception:
            fields[key] = (Any, None)
    schema: dict[str, Any] = create_model(graph.get_name("State"), **fields).model_json_schema()
    return schema


def _configurable_schema(graph: AnyGraph) -> dict[str, Any]:
    """The ``configurable`` part of the config schema only, as langgraph-api answers it."""
    # Deprecated in LangGraph 1.0, and still what langgraph-api answers this schema with.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangGraphDeprecatedSinceV10)
        model = graph.config_schema()
    fields = getattr(model, "model_fields", None) or {}
    if "configurable" not in fields:
        return {}
    annotation: Any = fields["configurable"].annotation
    schema: dict[str, Any] = TypeAdapter(annotation).json_schema()
    for key in SERVER_CONFIGURABLE:
        schema.get("properties", {}).pop(key, None)
    config_type = getattr(graph, "config_type", None)
    if config_type is not None and hasattr(config_type, "__name__"):
        schema["title"] = config_type.__name__
    return schema
