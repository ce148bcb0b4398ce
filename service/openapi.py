"""The OpenAPI document, built from the routes and what each declares (``service.http``)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route

from threadkeeper.service.http import Declared, declared
from threadkeeper.service.problems import PROBLEM_MEDIA_TYPE

UUID_SCHEMA: dict[str, Any] = {"type": "string", "format": "uuid"}
# Path parameters by name; ``uuid_param`` refuses anything else for these with a 422.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "thread_id": UUID_SCHEMA,
    "run_id": UUID_SCHEMA,
    "checkpoint_id": UUID_SCHEMA,
    "cron_id": UUID_SCHEMA,
    # An assistant's id, or a graph id for that graph's system assistant.
    "assistant_id": {"type": "string", "description": "an assistant id, or a graph id"},
}
STRING_SCHEMA: dict[str, Any] = {"type": "string"}

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
PROBLEM_RESPONSE = {
    "description": "Problem",
    "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def openapi_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operations = paths.setdefault(route.path, {})
            # The first route of a path and method answers it (ours before an http.app's).
            if method.lower() not in operations:
                operations[method.lower()] = _operation(route, method, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "threadkeeper", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }


def _operation(route: Route, method: str, components: dict[str, Any]) -> dict[str, Any]:
    name = route.endpoint.__name__
    spec = declared(route.endpoint)
    op: dict[str, Any] = {
        "operationId": f"{name}_{method.lower()}",
        "summary": (inspect.getdoc(route.endpoint) or name.replace("_", " ")).split("\n")[0],
        "parameters": [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": PATH_PARAMETERS.get(p, STRING_SCHEMA),
            }
            for p in route.param_convertors
        ]
        + [
            {"name": q.name, "in": "query", "required": False, "schema": q.schema()}
            for q in spec.query
        ],
        "responses": {**_responses(spec), "default": PROBLEM_RESPONSE},
    }
    if spec.body is not None:
        op["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": _ref(spec.body, components)}},
        }
    return op


def _responses(spec: Declared) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, (description, media_type) in sorted(spec.responses.items()):
        answer: dict[str, Any] = {"description": description}
        if media_type is not None:
            answer["content"] = {media_type: {}}
        answers[str(status)] = answer
    return answers


def _ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}
