"""Baseline (a): the wiring the article teaches, as a Starlette app.

One ``AsyncPostgresSaver.from_conn_string`` per process, opened in the lifespan, ``setup()`` on
start, the compiled graph on ``app.state``, and a ``/chat`` route that invokes it per request.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.perf.baselines.graph import stock_graph


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with AsyncPostgresSaver.from_conn_string(os.environ["DATABASE_URL"]) as saver:
        await saver.setup()
        app.state.agent = stock_graph().compile(checkpointer=saver)
        yield


async def chat(request: Request) -> JSONResponse:
    payload = await request.json()
    thread_id = payload.get("thread_id") or str(uuid.uuid4())
    result = await request.app.state.agent.ainvoke(
        {"messages": [{"role": "user", "content": payload["message"]}]},
        config={"configurable": {"thread_id": thread_id}},
    )
    return JSONResponse({"thread_id": thread_id, "reply": result["messages"][-1].content})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[Route("/chat", chat, methods=["POST"]), Route("/healthz", healthz)],
    lifespan=lifespan,
)
