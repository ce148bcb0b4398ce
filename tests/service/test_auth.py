"""Authentication modes and owner isolation."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.fixtures import app_client
from threadkeeper.service.app import create_app
from threadkeeper.service.settings import Settings

HELLO = {"messages": [{"role": "user", "content": "hello from alice"}]}


async def test_every_endpoint_hides_other_owners_threads(
    settings_for: Callable[..., Settings],
) -> None:
    app = create_app(settings_for(auth="header"), run_migrations=False)
    async with app_client(app) as client:
        alice = {"X-Forwarded-User": "alice"}
        bob = {"X-Forwarded-User": "bob"}
        tid = (await client.post("/threads", json={}, headers=alice)).json()["thread_id"]
        r = await client.post(
            f"/threads/{tid}/runs/wait",
            json={"assistant_id": "agent", "input": HELLO},
            headers=alice,
        )
        assert r.status_code == 200, r.text
        runs = (await client.get(f"/threads/{tid}/runs", headers=alice)).json()
        run_id = runs[0]["run_id"]
        state = (await client.get(f"/threads/{tid}/state", headers=alice)).json()
        cid = state["checkpoint"]["checkpoint_id"]

        calls: list[tuple[str, str, object]] = [
            ("GET", f"/threads/{tid}", None),
            ("PATCH", f"/threads/{tid}", {"title": "mine now"}),
            ("DELETE", f"/threads/{tid}", None),
            ("POST", f"/threads/{tid}/copy", None),
            ("GET", f"/threads/{tid}/state", None),
            ("GET", f"/threads/{tid}/state/{cid}", None),
            ("POST", f"/threads/{tid}/state/checkpoint", {"checkpoint": {"checkpoint_id": cid}}),
            ("POST", f"/threads/{tid}/state", {"values": {"messages": []}}),
            ("GET", f"/threads/{tid}/history", None),
            ("POST", f"/threads/{tid}/history", {"limit": 5}),
            ("POST", f"/threads/{tid}/runs/wait", {"assistant_id": "agent", "input": HELLO}),
            ("GET", f"/threads/{tid}/runs", None),
            ("GET", f"/threads/{tid}/runs/{run_id}", None),
            ("POST", "/chat", {"thread_id": tid, "message": "hi"}),
        ]
        for method, url, body in calls:
            r = await client.request(method, url, json=body, headers=bob)
            assert r.status_code == 404, (method, url, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        found = await client.post("/threads/search", json={"ids": [tid]}, headers=bob)
        assert found.json() == []
        assert (await client.post("/threads/count", json={}, headers=bob)).json() == 0
        # Same id, other owner: a conflict that reveals nothing, and alice's thread is intact.
        r = await client.post(
            "/threads", json={"thread_id": tid, "if_exists": "do_nothing"}, headers=bob
        )
        assert r.status_code == 409
        mine = (await client.get(f"/threads/{tid}", headers=alice)).json()
        assert mine["title"] == "hello from alice"
        assert "hello from alice" in str(mine["values"])


async def test_header_mode_requires_header(settings_for: Callable[..., Settings]) -> None:
    app = create_app(settings_for(auth="header", auth_header="X-User"), run_migrations=False)
    async with app_client(app) as client:
        r = await client.post("/threads", json={})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        r = await client.post("/threads", json={}, headers={"X-User": "carol"})
        assert r.json()["owner"] == "carol"


def _token(key: object, alg: str, **claims: object) -> str:
    payload = {"sub": "dave", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, key, algorithm=alg)  # type: ignore[arg-type]


async def test_jwt_hs256(settings_for: Callable[..., Settings]) -> None:
    secret = "s3cret-s3cret-s3cret-s3cret-s3cret!"
    settings = settings_for(auth="jwt", jwt_secret=secret, jwt_audience="tk", jwt_issuer="me")
    async with app_client(create_app(settings, run_migrations=False)) as client:
        good = _token(secret, "HS256", aud="tk", iss="me")
        r = await client.post("/threads", json={}, headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 200, r.text
        assert r.json()["owner"] == "dave"
        bad = [
            _token("wrong-secret-wrong-secret-wrong-secret", "HS256", aud="tk", iss="me"),
            _token(secret, "HS256", aud="other", iss="me"),
            _token(secret, "HS256", aud="tk", iss="someone"),
            _token(secret, "HS256", aud="tk", iss="me", exp=int(time.time()) - 60),
            # An identity Postgres could not store (NUL, a lone surrogate) is nobody's.
            _token(secret, "HS256", aud="tk", iss="me", sub="da\u0000ve"),
            _token(secret, "HS256", aud="tk", iss="me", sub="da\ud800ve"),
        ]
        for token in [*bad, "garbage"]:
            r = await client.post(
                "/threads/count", json={}, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 401, token
        assert (await client.post("/threads/count", json={})).status_code == 401


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_jwt_public_key(settings_for: Callable[..., Settings], alg: str) -> None:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = settings_for(auth="jwt", jwt_public_key=public_pem)
    async with app_client(create_app(settings, run_migrations=False)) as client:
        token = _token(private, alg)
        r = await client.post("/threads", json={}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.json()["owner"] == "dave"
        forged = _token("a-shared-secret-a-shared-secret-xx", "HS256")
        r = await client.post("/threads", json={}, headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401


def test_jwt_mode_needs_a_key() -> None:
    with pytest.raises(ValueError, match="JWT"):
        Settings(auth="jwt")
