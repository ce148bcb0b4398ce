"""Baseline (a): the wiring the article teaches, as a Starlette app.

One ``AsyncPostgresSaver.from_conn_string`` per process, opened in the lifespan, ``setup()`` on
start, the compiled graph on ``app.state``, and a ``/chat`` route that invokes it per request.
The graph is the one ours serves, and it keeps the user's name in the store and reads it back on
every turn, so the baseline gets the store LangGraph's long-term memory docs wire beside the
saver (``AsyncPostgresStore.from_conn_string``, ``setup()``, ``compile(store=...)``): without it
the same graph would skip a read per turn that ours pays, and answer differently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.store.postgres.aio import AsyncPostgresStore
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.perf.baselines.graph import stock_graph


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    url = os.environ["DATABASE_URL"]
    async with (
        AsyncPostgresSaver.from_conn_string(url) as saver,
        AsyncPostgresStore.from_conn_string(url) as store,
    ):
        await saver.setup()
        await store.setup()
        app.state.agent = stock_graph().compile(checkpointer=saver, store=store)
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
