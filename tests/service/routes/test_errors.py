"""Bad input gets a problem response and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
import structlog.testing

from tests.support.fixtures import app_client
from tests.support.problems import assert_problem
from threadkeeper.service.app import create_app
from threadkeeper.service.settings import Settings


async def _snapshot(client: httpx.AsyncClient) -> tuple[int, list[object]]:
    r = await client.post("/threads/search", json={"limit": 1000, "archived": None})
    return int(r.headers["X-Pagination-Total"]), r.json()


async def test_bad_input_gets_problem_and_changes_nothing(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={"metadata": {"k": 1}})).json()["thread_id"]
    before = await _snapshot(client)
    run_url = f"/threads/{tid}/runs/wait"
    hello = {"messages": [{"role": "user", "content": "hi"}]}
    cases: list[tuple[str, str, object, int]] = [
        ("POST", "/threads", b"{not json", 400),
        ("POST", "/threads", [1, 2], 422),
        ("POST", "/threads", {"metadata": "not-a-dict"}, 422),
        ("POST", "/threads", {"thread_id": "nope"}, 422),
        ("POST", "/threads", {"unknown_field": 1}, 422),
        ("POST", "/threads", {"ttl": 60}, 422),
        ("GET", "/threads/not-a-uuid", None, 422),
        ("PATCH", f"/threads/{tid}", {"archived": "maybe"}, 422),
        ("PATCH", f"/threads/{tid}", {"colour": "red"}, 422),
        ("POST", "/threads/search", {"limit": 5000}, 422),
        ("POST", "/threads/search", {"sort_by": "owner"}, 422),
        ("POST", "/threads/search", {"status": "sleeping"}, 422),
        ("POST", "/threads/search", {"values": [42]}, 422),
        ("POST", "/threads/search", {"extract": {"last": "owner"}}, 422),
        ("POST", "/threads/count", {"values": "answer"}, 422),
        ("POST", run_url, {"assistant_id": "nobody", "input": hello}, 404),
        ("POST", run_url, {"input": hello}, 422),
        ("POST", run_url, {"assistant_id": "agent", "input": hello, "bogus": True}, 422),
        ("POST", run_url, {"assistant_id": "agent", "multitask_strategy": "shout"}, 422),
        (
            "POST",
            run_url,
            {"assistant_id": "agent", "input": hello, "stream_mode": "telepathy"},
            422,
        ),
        ("POST", f"/threads/{uuid.uuid4()}/runs/wait", {"assistant_id": "agent"}, 404),
        ("GET", f"/threads/{tid}/runs?limit=-1", None, 422),
        ("GET", f"/threads/{tid}/runs/xyz", None, 422),
        ("POST", "/chat", {"message": ""}, 422),
        ("POST", "/chat", {"message": "hi", "thread_id": str(uuid.uuid4())}, 404),
        ("GET", "/no/such/route", None, 404),
        ("PUT", "/threads", {}, 405),
    ]
    for method, url, body, status in cases:
        if isinstance(body, bytes):
            r = await client.request(
                method, url, content=body, headers={"content-type": "application/json"}
            )
        else:
            r = await client.request(method, url, json=body)
        assert_problem(r, status)
    assert await _snapshot(client) == before
    runs = (await client.get(f"/threads/{tid}/runs")).json()
    assert runs == []


async def test_oversized_body_is_413(settings_for: Callable[..., Settings]) -> None:
    app = create_app(settings_for(max_body_bytes=2048), run_migrations=False)
    async with app_client(app) as client:
        before = await _snapshot(client)
        big = {"metadata": {"blob": "x" * 4096}}
        assert_problem(await client.post("/threads", json=big), 413)

        async def chunks():  # no content-length: the limit must hold while streaming too
            for _ in range(8):
                yield b" " * 1024

        r = await client.post(
            "/threads", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_problem(r, 413)
        assert await _snapshot(client) == before


@pytest.mark.parametrize("path", ["/ok", "/healthz", "/readyz"])
async def test_health_endpoints(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert "/threads/{thread_id}/runs/wait" in doc["paths"]
    assert "RunCreate" in doc["components"]["schemas"]
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # The page's own files come from this service (a package), never a CDN.
    for asset in ("docs/swagger-ui-bundle.js", "docs/swagger-ui.css"):
        assert f'"{asset}"' in page.text
        served = await client.get(f"/{asset}")
        assert served.status_code == 200
        assert len(served.content) > 10_000
    assert "http" not in page.text
    missing = await client.get("/docs/index.html")
    assert_problem(missing, 404)
    assert "/docs/{asset}" not in doc["paths"]


async def test_metrics_use_route_templates(client: httpx.AsyncClient) -> None:
    tid = (await client.post("/threads", json={})).json()["thread_id"]
    await client.get(f"/threads/{tid}")
    await client.get(f"/threads/{uuid.uuid4()}")
    text = (await client.get("/metrics")).text
    assert 'route="/threads/{thread_id}",status="200"' in text
    assert 'route="/threads/{thread_id}",status="404"' in text
    assert tid not in text
    assert "threadkeeper_db_pool_in_use" in text
    assert "threadkeeper_http_request_duration_seconds_bucket" in text


async def test_client_hanging_up_mid_body_is_not_an_error(
    settings_for: Callable[..., Settings],
) -> None:
    """A client that disconnects while sending its body gets 499, not a logged 500, and no thread.

    Driven at the ASGI level: httpx cannot hang up half-way through a body it is sending.
    """
    app = create_app(settings_for(), run_migrations=False)
    async with app_client(app) as client:
        before = await _snapshot(client)
        incoming = [
            {"type": "http.request", "body": b'{"metadata": {"k": ', "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return incoming.pop(0)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/threads",
            "raw_path": b"/threads",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"threadkeeper.test")],
            "client": ("127.0.0.1", 50000),
            "server": ("threadkeeper.test", 80),
            "state": {},
        }
        with structlog.testing.capture_logs() as logs:
            await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        assert start["status"] == 499
        events = [entry["event"] for entry in logs]
        assert "client_disconnected" in events
        assert "unhandled_error" not in events
        assert await _snapshot(client) == before


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        # Paths of their own, not thread ids: the method is what is not supported.
        ("GET", "/threads/search", 405, "POST"),
        ("GET", "/threads/count", 405, "POST"),
        ("GET", "/threads/prune", 405, "POST"),
        ("DELETE", "/threads/search", 405, "POST"),
        ("PUT", "/threads", 405, "POST"),
        ("GET", "/runs/wait", 405, "POST"),
        ("GET", "/no/such/route", 404, None),
        ("POST", "/threads/00000000-0000-0000-0000-000000000000/stream/events", 404, None),
    ],
)
async def test_unsupported_operations_say_so(
    client: httpx.AsyncClient, method: str, path: str, status: int, allow: str | None
) -> None:
    r = await client.request(method, path)
    assert_problem(r, status)
    assert f"{method} {path} is not supported" in r.json()["detail"]
    assert r.headers.get("allow") == allow


async def test_a_bad_thread_id_is_still_a_bad_thread_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/threads/searches")
    assert_problem(r, 422)
    assert "thread_id must be a UUID" in r.json()["detail"]
