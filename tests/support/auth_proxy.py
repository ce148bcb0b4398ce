"""A loopback auth proxy, as oauth2-proxy or an ingress's auth is in front of the service.

It knows its users by API key (``X-Api-Key``, which the Agent Chat UI and the SDKs send),
answers 401 without a known one, and passes the request on with the user in the header the
service trusts (``X-Forwarded-User``), after dropping any such header the caller sent. CORS
preflights carry no credentials and go through as they are; responses stream back unbuffered.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.processes import free_port

USER_HEADER = "x-forwarded-user"
KEY_HEADER = "x-api-key"
# Hop-by-hop, or recomputed by the next hop.
DROPPED = {"host", "connection", "content-length", "transfer-encoding", "keep-alive", USER_HEADER}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class AuthProxy:
    def __init__(self, upstream: str, users_by_key: Mapping[str, str]) -> None:
        self.upstream = upstream
        self.users_by_key = dict(users_by_key)
        self.port = free_port()
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=METHODS)])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="auth-proxy", daemon=True)
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AuthProxy:
        self._thread.start()
        for _ in range(200):
            if self._server.started:
                return self
            threading.Event().wait(0.05)
        raise TimeoutError("the auth proxy did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    async def _forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        if request.method != "OPTIONS":
            user = self.users_by_key.get(request.headers.get(KEY_HEADER, ""))
            if user is None:
                return JSONResponse({"detail": "unknown API key"}, status_code=401)
            headers[USER_HEADER] = user
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.upstream, timeout=None)
        upstream = await self._client.send(
            self._client.build_request(
                request.method,
                request.url.path,
                params=request.query_params.multi_items(),
                headers=headers,
                content=await request.body(),
            ),
            stream=True,
        )
        return StreamingResponse(
            _relay(upstream),
            status_code=upstream.status_code,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in DROPPED},
            background=BackgroundTask(upstream.aclose),
        )


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it comes; a cut upstream cuts this response too (no clean end)."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        raise ConnectionError("upstream cut the response") from exc
    finally:
        await asyncio.shield(upstream.aclose())
