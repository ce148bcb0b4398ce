"""``/openapi.json`` is complete (every body, typed ids, every answer) and is what parsing uses."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

RUN_OPERATIONS = [
    ("/threads/{thread_id}/runs", "post"),
    ("/threads/{thread_id}/runs/stream", "post"),
    ("/threads/{thread_id}/runs/wait", "post"),
]
# Every operation that takes a JSON body (the Agent Server's, plus /chat).
WITH_BODY = {
    *RUN_OPERATIONS,
    ("/runs/cancel", "post"),
    ("/threads", "post"),
    ("/threads/search", "post"),
    ("/threads/count", "post"),
    ("/threads/prune", "post"),
    ("/threads/{thread_id}", "patch"),
    ("/threads/{thread_id}/state", "post"),
    ("/threads/{thread_id}/state/checkpoint", "post"),
    ("/threads/{thread_id}/history", "post"),
    ("/chat", "post"),
    ("/assistants", "post"),
    ("/assistants/search", "post"),
    ("/assistants/count", "post"),
    ("/assistants/{assistant_id}", "patch"),
    ("/assistants/{assistant_id}/versions", "post"),
    ("/assistants/{assistant_id}/latest", "post"),
    ("/threads/{thread_id}/runs/crons", "post"),
    ("/runs/crons", "post"),
    ("/runs/crons/search", "post"),
    ("/runs/crons/count", "post"),
    ("/runs/crons/{cron_id}", "patch"),
    ("/runs", "post"),
    ("/runs/stream", "post"),
    ("/runs/wait", "post"),
    ("/runs/batch", "post"),
    ("/store/items", "put"),
    ("/store/items", "delete"),
    ("/store/items/search", "post"),
    ("/store/namespaces", "post"),
}


async def _spec(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    spec: dict[str, Any] = r.json()
    return spec


def _body_schema(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = spec["paths"][path][method]["requestBody"]
    ref: str = body["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return {"body_required": body["required"], **schema}


async def test_every_request_body_is_declared(client: httpx.AsyncClient) -> None:
    spec = await _spec(client)
    for path, method in RUN_OPERATIONS:
        schema = _body_schema(spec, path, method)
        assert schema["body_required"] is True
        assert "assistant_id" in schema["properties"]
    cancel = _body_schema(spec, "/runs/cancel", "post")
    assert {"thread_id", "run_ids", "status"} <= set(cancel["properties"])


async def test_ids_are_uuids_and_every_answer_is_documented(client: httpx.AsyncClient) -> None:
    spec = await _spec(client)
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for param in op["parameters"]:
                if param["name"] in ("thread_id", "run_id", "checkpoint_id"):
                    assert param["schema"] == {"type": "string", "format": "uuid"}, (path, param)
            assert "default" in op["responses"], (path, method)
            if method == "delete":
                assert "204" in op["responses"], (path, method)
    cancel = spec["paths"]["/threads/{thread_id}/runs/{run_id}/cancel"]["post"]["responses"]
    assert {"200", "202", "204"} <= set(cancel)
    assert "204" in spec["paths"]["/runs/cancel"]["post"]["responses"]
    assert "204" in spec["paths"]["/threads/{thread_id}"]["patch"]["responses"]
    stream = spec["paths"]["/threads/{thread_id}/runs/stream"]["post"]["responses"]
    assert "text/event-stream" in stream["200"]["content"]


async def test_the_declared_body_is_the_one_parsed(client: httpx.AsyncClient) -> None:
    """Each operation refuses a field its declared body lacks, naming it: parsing and the
    document read the same declaration."""
    spec = await _spec(client)
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    declared: set[tuple[str, str]] = set()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if "requestBody" not in op:
                continue
            declared.add((path, method))
            url = re.sub(
                r"\{(\w+)\}", lambda m: tid if m[1] == "thread_id" else str(uuid.uuid4()), path
            )
            stray = {"not_a_field_of_it": 1}
            listed = _body_schema(spec, path, method).get("type") == "array"
            r = await client.request(method, url, json=[stray] if listed else stray)
            assert r.status_code == 422, (method, path, r.text)
            refused = [e["loc"] for e in r.json()["errors"]]
            where = [0, "not_a_field_of_it"] if listed else ["not_a_field_of_it"]
            assert where in refused, (method, path, r.text)
    assert declared == WITH_BODY


async def test_query_parameters_are_declared_and_enforced(client: httpx.AsyncClient) -> None:
    """A query parameter is in the document as it is parsed: a value the document rules out is a
    422 naming the parameter."""
    spec = await _spec(client)
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    checked = 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for param in op["parameters"]:
                free_text = param["schema"].get("type") == "string" and not (
                    {"enum", "format"} & set(param["schema"])
                )
                if param["in"] != "query" or free_text:
                    continue
                url = re.sub(
                    r"\{(\w+)\}", lambda m: tid if m[1] == "thread_id" else str(uuid.uuid4()), path
                )
                r = await client.request(method, url, params={param["name"]: "nonsense"})
                assert r.status_code == 422, (method, path, param, r.text)
                assert param["name"] in r.json()["detail"]
                checked += 1
    runs = spec["paths"]["/threads/{thread_id}/runs"]["get"]["parameters"]
    assert {p["name"] for p in runs if p["in"] == "query"} == {"limit", "offset", "status"}
    assert checked
