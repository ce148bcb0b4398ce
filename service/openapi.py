"""The OpenAPI document, built from the routes and the pydantic request models."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Route

from service import schemas

# Which request model documents which handler's body.
REQUEST_MODELS: dict[str, type[schemas.Body]] = {
    "create_thread": schemas.ThreadCreate,
    "patch_thread": schemas.ThreadPatch,
    "search_threads": schemas.ThreadSearch,
    "count_threads": schemas.ThreadCount,
    "update_state": schemas.StateUpdate,
    "post_state_checkpoint": schemas.StateAtCheckpoint,
    "post_history": schemas.HistoryQuery,
    "wait_run": schemas.RunCreate,
    "chat": schemas.Chat,
}

PROBLEM_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            name = route.endpoint.__name__
            op: dict[str, Any] = {
                "operationId": f"{name}_{method.lower()}",
                "summary": (inspect.getdoc(route.endpoint) or name.replace("_", " ")).split("\n")[
                    0
                ],
                "parameters": [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in route.param_convertors
                ],
                "responses": {
                    "200": {"description": "OK"},
                    "default": {
                        "description": "Problem",
                        "content": {
                            "application/problem+json": {
                                "schema": {"$ref": "#/components/schemas/Problem"}
                            }
                        },
                    },
                },
            }
            model = REQUEST_MODELS.get(name)
            if model is not None:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
                op["requestBody"] = {
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    }
                }
            paths.setdefault(route.path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "threadkeeper", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }
