"""A browser app on another origin (the Agent Chat UI on :3000) calls the service directly."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.fixtures import app_client
from threadkeeper.service.app import create_app
from threadkeeper.service.settings import Settings

UI = "http://127.0.0.1:3000"


async def test_preflight_allows_the_sdk_headers_from_any_origin_by_default(
    settings_for: Callable[..., Settings],
) -> None:
    async with app_client(create_app(settings_for(), run_migrations=False)) as client:
        r = await client.options(
            "/threads/search",
            headers={
                "Origin": UI,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-api-key,last-event-id",
            },
        )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].lower().split(",")}
    assert {"content-type", "x-api-key", "last-event-id"} <= allowed
    assert "access-control-allow-credentials" not in r.headers


async def test_a_run_stream_exposes_where_to_rejoin(settings_for: Callable[..., Settings]) -> None:
    """useStream reads Content-Location (the run) and Location (rejoin after a cut stream)."""
    async with app_client(create_app(settings_for(), run_migrations=False)) as client:
        tid = (await client.post("/threads", json={}, headers={"Origin": UI})).json()["thread_id"]
        r = await client.post(
            f"/threads/{tid}/runs/stream",
            json={
                "assistant_id": "agent",
                "input": {"messages": [{"role": "user", "content": "hi"}]},
            },
            headers={"Origin": UI},
        )
    assert r.status_code == 200, r.text
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"content-location", "location"} <= exposed
    assert r.headers["location"].endswith("/stream")


async def test_an_origin_outside_the_list_gets_no_cors_headers(
    settings_for: Callable[..., Settings],
) -> None:
    app = create_app(settings_for(cors_allow_origins="https://chat.example"), run_migrations=False)
    async with app_client(app) as client:
        other = await client.get("/info", headers={"Origin": UI})
        listed = await client.get("/info", headers={"Origin": "https://chat.example"})
    assert "access-control-allow-origin" not in other.headers
    assert listed.headers["access-control-allow-origin"] == "https://chat.example"


async def test_an_empty_setting_turns_cors_off(settings_for: Callable[..., Settings]) -> None:
    async with app_client(
        create_app(settings_for(cors_allow_origins=""), run_migrations=False)
    ) as client:
        r = await client.options(
            "/info", headers={"Origin": UI, "Access-Control-Request-Method": "GET"}
        )
    assert "access-control-allow-origin" not in r.headers
