"""Health, readiness, metrics and API documentation."""

from __future__ import annotations

from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import psycopg
import psycopg_pool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from threadkeeper.service.http import MEDIA_JSON, responds, services
from threadkeeper.service.migrations import schema_is_current
from threadkeeper.service.openapi import openapi_document
from threadkeeper.service.problems import Problem


async def ok(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def info(request: Request) -> Response:
    """What this server is and supports, in the Agent Server's shape."""
    return JSONResponse(
        {
            "version": version("threadkeeper"),
            "langgraph_py_version": version("langgraph"),
            "flags": {"assistants": True, "crons": False, "langsmith": False},
            "graphs": services(request).registry.graph_ids,
        }
    )


async def healthz(request: Request) -> Response:
    """The process is alive and its event loop answers."""
    return JSONResponse({"status": "ok"})


@responds({200: ("Ready", MEDIA_JSON), 503: ("Not ready, and why", MEDIA_JSON)})
async def readyz(request: Request) -> Response:
    """Ready only when the database answers with the schema this code expects."""
    svc = services(request)
    if svc.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    try:
        async with svc.pool.connection(timeout=2.0) as conn:
            current = await schema_is_current(conn)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        return JSONResponse({"status": "database unreachable", "error": str(exc)}, 503)
    if not current:
        return JSONResponse({"status": "schema not current"}, status_code=503)
    return JSONResponse({"status": "ready"})


@responds({200: ("Prometheus metrics", CONTENT_TYPE_LATEST.split(";")[0])})
async def metrics(request: Request) -> Response:
    data = generate_latest(services(request).metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.routes))


# Swagger UI's own files, from the swagger-ui-py package: the page works with no network.
SWAGGER_UI = Path(str(files("swagger_ui") / "static"))
DOCS_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
# Relative links, so the page also works behind a path prefix.
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>threadkeeper API</title>
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: false,
});
</script>
</body>
</html>
"""


@responds({200: ("The API as an interactive page (Swagger UI)", "text/html")})
async def docs(request: Request) -> Response:
    """The API as an interactive page, over /openapi.json."""
    return HTMLResponse(DOCS_PAGE)


async def docs_asset(request: Request) -> Response:
    name = request.path_params["asset"]
    media_type = DOCS_ASSETS.get(name)
    if media_type is None:
        raise Problem(404, f"no such file of the docs page: {name}", kind="not-found")
    return FileResponse(SWAGGER_UI / name, media_type=media_type)


routes = [
    Route("/ok", ok, methods=["GET"]),
    Route("/info", info, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/docs/{asset}", docs_asset, methods=["GET"], include_in_schema=False),
]
