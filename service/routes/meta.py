"""Health, readiness, metrics and API documentation."""

from __future__ import annotations

import html
from importlib.metadata import version

import psycopg
import psycopg_pool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from threadkeeper.service.http import MEDIA_JSON, responds, services
from threadkeeper.service.migrations import schema_is_current
from threadkeeper.service.openapi import openapi_document


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


@responds({200: ("The API as a page", "text/html")})
async def docs(request: Request) -> Response:
    doc = openapi_document(request.app.routes)
    rows = "".join(
        f"<tr><td><code>{html.escape(method.upper())}</code></td>"
        f"<td><code>{html.escape(path)}</code></td>"
        f"<td>{html.escape(op.get('summary', ''))}</td></tr>"
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    )
    page = (
        "<!doctype html><meta charset=utf-8><title>threadkeeper API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em 1em}</style>"
        "<h1>threadkeeper API</h1><p>Machine-readable: <a href=/openapi.json>/openapi.json</a>. "
        "Wire-compatible with the LangGraph Agent Server for the endpoints listed.</p>"
        f"<table>{rows}</table>"
    )
    return HTMLResponse(page)


routes = [
    Route("/ok", ok, methods=["GET"]),
    Route("/info", info, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
