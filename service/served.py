"""What one replica serves, prepared before it serves anything.

The configuration is read, its ``env`` exported, every graph and the ``http.app`` imported, and
(on the server's event loop, just before it listens) every factory called once. Whatever fails
stops start-up with a ``DeploymentError`` naming the config, the key and the error: a replica
either serves the whole deployment or nothing, and never turns ready half-configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from langchain_core.embeddings import Embeddings
from langgraph.store.base.embed import ensure_embeddings
from starlette.applications import Starlette

from threadkeeper.service import deployment as deployments
from threadkeeper.service import graphs, userapp
from threadkeeper.service.deployment import Deployment, DeploymentError
from threadkeeper.service.graphs import LoadedGraph, user_error
from threadkeeper.service.store import StoreSettings, embed_from_path, is_path_spec

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Served:
    deployment: Deployment
    graphs: dict[str, LoadedGraph]
    http_app: Starlette | None
    store: StoreSettings = field(default_factory=StoreSettings)


def prepare(deployment: Deployment) -> Served:
    """Export the config's env, then import the graphs and the http app (in that order: the
    user's modules may read their env at import)."""
    for warning in deployment.warnings:
        log.warning("config_key_ignored", config=str(deployment.path), detail=warning)
    deployments.apply_env(deployment)
    loaded = graphs.load_all(deployment)
    for graph_id, graph in loaded.items():
        _warn_replaced(deployment, graph_id, graph.replaced)
    return Served(deployment, loaded, userapp.load(deployment), store_settings(deployment))


def store_settings(deployment: Deployment) -> StoreSettings:
    """The store's settings, its embedding loaded: a ``path.py:function`` imported (user code
    runs), a ``provider:model`` built (its package and credentials checked), once, here."""
    config = deployment.store
    if config is None or config.index is None:
        return StoreSettings.of(config)
    spec = config.index.embed
    try:
        embed = _embedding(spec, deployment)
    except Exception as exc:
        raise DeploymentError(deployment.path, "store.index.embed", user_error(spec, exc)) from None
    return StoreSettings.of(config, embed)


def _embedding(spec: str, deployment: Deployment) -> Embeddings:
    if not is_path_spec(spec):
        return ensure_embeddings(spec)
    embed = embed_from_path(spec, deployment.base_dir)
    if not callable(embed):
        raise TypeError(f"{spec} is not callable")
    return ensure_embeddings(embed)


async def check(served: Served) -> None:
    """Call every factory once, on the loop that will serve (a factory may be async)."""
    await graphs.check_factories(served.deployment, served.graphs)


def builtin() -> Served:
    """The demo, as a deployment without a config file serves it."""
    return prepare(deployments.BUILTIN)


def _warn_replaced(deployment: Deployment, graph_id: str, replaced: tuple[str, ...]) -> None:
    if replaced:
        log.warning(
            "graph_persistence_replaced",
            config=str(deployment.path),
            graph_id=graph_id,
            replaced=list(replaced),
            detail="the service's Postgres checkpointer is used instead, on every replica",
        )
