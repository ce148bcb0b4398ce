"""What every error response must be: an RFC 9457 problem, and nothing leaked."""

from __future__ import annotations

import httpx

PROBLEM = "application/problem+json"


def assert_problem(r: httpx.Response, status: int, mentions: str | None = None) -> None:
    """``r`` is a problem+json response of ``status`` with a detail for people (naming
    ``mentions``, when given) and no traceback."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status
    assert body["detail"]
    if mentions is not None:
        assert mentions in body["detail"], body["detail"]
    assert body["type"].startswith("https://")
    assert "Traceback" not in r.text
