"""The graphs a deployment names: imported once at start-up, handed out per run.

A spec is ``./file.py:attr`` (relative to the config file) or ``package.module:attr``. The
attribute may be a compiled graph, an uncompiled ``StateGraph`` (compiled here), or a factory,
sync or async, taking no argument or a ``RunnableConfig``; a factory is called per run with the
run's config, as the Agent Server calls it. Every graph runs on the service's checkpointer: a
checkpointer or store the user compiled in is replaced (the Agent Server does the same), since
state that lived anywhere else would be lost to the other replicas.

Everything that can go wrong with the user's code goes wrong here, at start-up: a missing file,
an import error, an attribute that is not a graph, a factory that raises. The error names the
config, the graph id and the spec, with the traceback of the user's code and not of ours.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from langgraph.store.base import BaseStore

from threadkeeper.service.deployment import Deployment, DeploymentError

AnyGraph = Pregel[Any, Any, Any, Any]


class GraphKind(StrEnum):
    COMPILED = "compiled"
    FACTORY = "factory"


@dataclass(frozen=True)
class GraphSpec:
    """One ``graphs`` entry, parsed."""

    graph_id: str
    module: str | None
    file: Path | None
    attr: str

    @classmethod
    def parse(cls, graph_id: str, spec: str, base_dir: Path) -> GraphSpec:
        where, sep, attr = spec.rpartition(":")
        if not sep or not where or not attr.isidentifier():
            raise ValueError(f"{spec!r} is not `./path/file.py:attribute` or `package.module:attr`")
        if where.endswith(".py") or "/" in where or where.startswith("."):
            return cls(graph_id, None, (base_dir / where).resolve(), attr)
        return cls(graph_id, where, None, attr)


@dataclass(frozen=True)
class LoadedGraph:
    """A graph ready to serve: compiled, or a factory to call per run."""

    graph_id: str
    kind: GraphKind
    compiled: AnyGraph | None = None
    factory: Callable[..., Any] | None = None
    takes_config: bool = False
    # What the user compiled into the graph that the service replaces (checkpointer, store).
    replaced: tuple[str, ...] = ()

    async def build(self, config: RunnableConfig) -> AnyGraph:
        """The graph one run executes (a factory's result, compiled if it is a StateGraph)."""
        if self.compiled is not None:
            return self.compiled
        assert self.factory is not None
        value = self.factory(config) if self.takes_config else self.factory()
        if inspect.isawaitable(value):
            value = await value
        return _as_pregel(self.graph_id, value)


class GraphLoadError(DeploymentError):
    """A graph that cannot be served, with the user's own traceback when their code raised."""

    def __init__(self, deployment: Deployment, graph_id: str, message: str) -> None:
        super().__init__(deployment.path, f"graphs.{graph_id}", message)


def load_all(deployment: Deployment) -> dict[str, LoadedGraph]:
    """Import every graph of the deployment; the first failure stops start-up."""
    return {
        graph_id: load_one(deployment, graph_id, spec)
        for graph_id, spec in deployment.graphs.items()
    }


def load_one(deployment: Deployment, graph_id: str, spec_text: str) -> LoadedGraph:
    try:
        spec = GraphSpec.parse(graph_id, spec_text, deployment.base_dir)
    except ValueError as exc:
        raise GraphLoadError(deployment, graph_id, str(exc)) from None
    try:
        value = import_spec(spec)
    except MissingAttribute as exc:
        raise GraphLoadError(deployment, graph_id, f"{spec_text}: {exc}") from None
    except Exception as exc:
        raise GraphLoadError(deployment, graph_id, user_error(spec_text, exc)) from None
    try:
        return _classify(graph_id, value)
    except TypeError as exc:
        raise GraphLoadError(deployment, graph_id, f"{spec_text}: {exc}") from None
    except Exception as exc:  # compiling a StateGraph runs the user's graph definition
        raise GraphLoadError(deployment, graph_id, user_error(spec_text, exc)) from None


class MissingAttribute(Exception):
    """The module a spec names imported, but has no such attribute."""

    def __init__(self, attr: str) -> None:
        super().__init__(f"the module has no {attr!r}")


def import_spec(spec: GraphSpec) -> Any:
    """The object a spec names, its module imported (the user's code runs here)."""
    module = _import(spec)
    if not hasattr(module, spec.attr):
        raise MissingAttribute(spec.attr)
    return getattr(module, spec.attr)


def _import(spec: GraphSpec) -> ModuleType:
    if spec.module is not None:
        return importlib.import_module(spec.module)
    assert spec.file is not None
    if not spec.file.is_file():
        raise FileNotFoundError(f"{spec.file} does not exist")
    # A stable, unique name, so two graphs in files of the same name do not collide.
    name = "threadkeeper_user_graph_" + "_".join(spec.file.with_suffix("").parts[1:])
    loader_spec = importlib.util.spec_from_file_location(name, spec.file)
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"{spec.file} cannot be imported")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    # The user's file imports its siblings as a script would.
    parent = str(spec.file.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _classify(graph_id: str, value: Any) -> LoadedGraph:
    if isinstance(value, Pregel | StateGraph):
        return LoadedGraph(
            graph_id,
            GraphKind.COMPILED,
            compiled=_as_pregel(graph_id, value),
            replaced=own_persistence(value),
        )
    if callable(value):
        return LoadedGraph(
            graph_id, GraphKind.FACTORY, factory=value, takes_config=_takes_config(value)
        )
    raise TypeError(f"{type(value).__name__} is not a graph, a StateGraph or a graph factory")


def _takes_config(factory: Callable[..., Any]) -> bool:
    try:
        params = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    if len(params) > 1:
        raise TypeError("a graph factory takes at most one argument, the run's RunnableConfig")
    return len(params) == 1


def own_persistence(value: Any) -> tuple[str, ...]:
    """The checkpointer and store a graph was compiled with, which the service replaces.

    The Agent Server does the same in a deployment (only ``langgraph dev`` refuses such a graph,
    to catch the mistake early): state kept anywhere else would be lost to the other replicas.
    ``checkpointer=True``/``False`` on a subgraph is a choice of scope, not a saver, and stays.
    """
    found = []
    if isinstance(getattr(value, "checkpointer", None), BaseCheckpointSaver):
        found.append("checkpointer")
    if isinstance(getattr(value, "store", None), BaseStore):
        found.append("store")
    return tuple(found)


def _as_pregel(graph_id: str, value: Any) -> AnyGraph:
    if isinstance(value, StateGraph):
        value = value.compile()
    if not isinstance(value, Pregel):
        raise TypeError(f"graph {graph_id!r}: the factory returned {type(value).__name__}")
    # The service's saver (and later store) is attached per run; nothing of the user's stays.
    update: dict[str, Any] = {"checkpointer": None, "store": None}
    if value.name == "LangGraph":
        update["name"] = graph_id
    return value.copy(update=update)


def user_error(spec_text: str, exc: BaseException) -> str:
    """The exception with the frames of the user's code only (ours and importlib's dropped)."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not _is_ours(f.filename)]
    lines = traceback.format_list(user) if user else []
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if not lines:
        return f"{spec_text}: {detail}"
    return f"{spec_text}: {detail}\nTraceback of your code:\n" + "".join(lines).rstrip()


# Resolved: the editable install reaches this package through a symlink (.dev/threadkeeper).
_OURS = Path(__file__).resolve().parent


def _is_ours(filename: str) -> bool:
    if filename.startswith("<frozen importlib") or "importlib" in Path(filename).parts:
        return True
    return Path(filename).resolve().is_relative_to(_OURS)


async def check_factories(deployment: Deployment, graphs: Mapping[str, LoadedGraph]) -> None:
    """Call every factory once, so one that raises stops start-up instead of every run."""
    for graph_id, loaded in graphs.items():
        if loaded.kind is not GraphKind.FACTORY:
            continue
        try:
            await loaded.build(RunnableConfig(configurable={}))
        except Exception as exc:
            spec = deployment.graphs[graph_id]
            raise GraphLoadError(deployment, graph_id, user_error(spec, exc)) from None
