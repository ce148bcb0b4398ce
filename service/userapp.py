"""``http.app``: the user's own Starlette app, its routes served beside ours.

Ours come first, so on a path (and method) both serve, ours answers: a user's app cannot shadow
the API the SDK relies on. A path only the user's app serves is answered by its route; a path
neither serves gets our 404. The app's lifespan runs inside ours; its middleware does not wrap
our routes (nor, since only its routes are taken over, its own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from threadkeeper.service.deployment import Deployment, DeploymentError
from threadkeeper.service.graphs import GraphSpec, MissingAttribute, import_spec, user_error

HTTP_APP_KEY = "http.app"


def load(deployment: Deployment) -> Starlette | None:
    """The app ``http.app`` names, imported; None when the config names none."""
    spec_text = deployment.http_app
    if spec_text is None:
        return None
    try:
        spec = GraphSpec.parse(HTTP_APP_KEY, spec_text, deployment.base_dir)
    except ValueError as exc:
        raise DeploymentError(deployment.path, HTTP_APP_KEY, str(exc)) from None
    try:
        value = import_spec(spec)
    except MissingAttribute as exc:
        raise DeploymentError(deployment.path, HTTP_APP_KEY, f"{spec_text}: {exc}") from None
    except Exception as exc:
        raise DeploymentError(deployment.path, HTTP_APP_KEY, user_error(spec_text, exc)) from None
    if not isinstance(value, Starlette):
        raise DeploymentError(
            deployment.path,
            HTTP_APP_KEY,
            f"{spec_text}: {type(value).__name__} is not a Starlette (or FastAPI) app",
        )
    return value


def routes(ours: Sequence[BaseRoute], user_app: Starlette | None) -> list[BaseRoute]:
    """Ours, then the user's: Starlette answers with the first route that matches fully."""
    return [*ours, *(user_app.routes if user_app is not None else ())]


@asynccontextmanager
async def lifespan(user_app: Starlette | None) -> AsyncIterator[None]:
    if user_app is None:
        yield
        return
    async with user_app.router.lifespan_context(user_app):
        yield
