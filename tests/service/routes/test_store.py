"""The store API (``/store/...``) in process, two owners via header auth."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.support.fixtures import app_client
from threadkeeper.service.app import create_app
from threadkeeper.service.settings import Settings

ADA = {"x-forwarded-user": "ada@example.com"}
BOB = {"x-forwarded-user": "bob"}


@pytest.fixture
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(auth="header", workers=0), run_migrations=False)
    async with app_client(app) as c:
        yield c


async def put(
    c: httpx.AsyncClient, who: dict[str, str], ns: list[str], key: str, **kw: Any
) -> None:
    r = await c.put("/store/items", json={"namespace": ns, "key": key, **kw}, headers=who)
    assert r.status_code == 204, r.text


async def test_put_get_search_delete(client: httpx.AsyncClient) -> None:
    await put(client, ADA, ["memories", "profile"], "name", value={"name": "Ada"})
    await put(client, ADA, ["memories", "food"], "likes", value={"food": "tea", "n": 3})

    r = await client.get(
        "/store/items", params={"namespace": "memories.profile", "key": "name"}, headers=ADA
    )
    assert r.status_code == 200
    item = r.json()
    assert item["namespace"] == ["memories", "profile"]
    assert item["value"] == {"name": "Ada"}
    assert {"created_at", "updated_at", "key"} <= set(item)

    r = await client.post(
        "/store/items/search",
        json={"namespace_prefix": ["memories"], "filter": {"n": {"$gte": 3}}},
        headers=ADA,
    )
    assert [i["key"] for i in r.json()["items"]] == ["likes"]

    r = await client.post("/store/namespaces", json={"max_depth": 1}, headers=ADA)
    assert r.json() == {"namespaces": [["memories"]]}

    r = await client.request(
        "DELETE",
        "/store/items",
        json={"namespace": ["memories", "food"], "key": "likes"},
        headers=ADA,
    )
    assert r.status_code == 204
    r = await client.post("/store/items/search", json={}, headers=ADA)
    assert [i["key"] for i in r.json()["items"]] == ["name"]


async def test_another_owners_items_are_absent(client: httpx.AsyncClient) -> None:
    await put(client, ADA, ["memories"], "secret", value={"v": "ada's"})
    r = await client.get(
        "/store/items", params={"namespace": "memories", "key": "secret"}, headers=BOB
    )
    assert r.status_code == 200 and r.json() is None  # as the Agent Server answers a missing item
    r = await client.post("/store/items/search", json={"namespace_prefix": []}, headers=BOB)
    assert r.json() == {"items": []}
    r = await client.post("/store/namespaces", json={}, headers=BOB)
    assert r.json() == {"namespaces": []}
    r = await client.request(
        "DELETE", "/store/items", json={"namespace": ["memories"], "key": "secret"}, headers=BOB
    )
    assert r.status_code == 204
    r = await client.get(
        "/store/items", params={"namespace": "memories", "key": "secret"}, headers=ADA
    )
    assert r.json()["value"] == {"v": "ada's"}  # Bob's delete touched nothing of Ada's


async def test_without_identity_is_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/store/items/search", json={})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("method", "url", "body", "params", "where"),
    [
        ("PUT", "/store/items", {"namespace": [], "key": "k", "value": {}}, None, "namespace"),
        ("PUT", "/store/items", {"namespace": ["a.b"], "key": "k", "value": {}}, None, "namespace"),
        ("PUT", "/store/items", {"namespace": ["a"], "key": "", "value": {}}, None, "key"),
        ("PUT", "/store/items", {"namespace": ["a"], "key": "k", "value": [1]}, None, "value"),
        (
            "PUT",
            "/store/items",
            {"namespace": ["a"], "key": "k", "value": {}, "ttl": 0},
            None,
            "ttl",
        ),
        ("PUT", "/store/items", None, None, "body"),
        ("GET", "/store/items", None, {"namespace": "a"}, "namespace and key"),
        ("GET", "/store/items", None, {"namespace": "a..b", "key": "k"}, "label"),
        (
            "GET",
            "/store/items",
            None,
            {"namespace": "a", "key": "k", "refresh_ttl": "x"},
            "refresh_ttl",
        ),
        ("POST", "/store/items/search", {"limit": 0}, None, "limit"),
        ("POST", "/store/items/search", {"filter": {"n": {"$nope": 1}}}, None, "$nope"),
        ("POST", "/store/items/search", {"namespace_prefix": [""]}, None, "namespace_prefix"),
        ("POST", "/store/namespaces", {"max_depth": 0}, None, "max_depth"),
        ("DELETE", "/store/items", {"namespace": ["a"]}, None, "key"),
    ],
)
async def test_bad_input_is_a_422_problem(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    body: dict[str, Any] | None,
    params: dict[str, str] | None,
    where: str,
) -> None:
    r = await client.request(method, url, json=body, params=params, headers=ADA)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert where in r.json()["detail"]
