"""``POST /chat``: the short form for curl users, one message in, one reply out."""

from __future__ import annotations

import asyncio
import uuid

from langchain_core.messages import AIMessage
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import serialize, threads
from service.agent.graph import GRAPH_ID
from service.http import owner, parse, services
from service.problems import Problem
from service.schemas import Chat, RunCreate


async def chat(request: Request) -> Response:
    who = owner(request)
    body = await parse(request, Chat, empty_ok=False)
    svc = services(request)
    thread_id = body.thread_id
    if thread_id is None:
        thread_id = uuid.uuid4()
        async with svc.pool.connection() as conn:
            await threads.insert(conn, thread_id=thread_id, owner=who, metadata={})
    run_body = RunCreate(
        assistant_id=GRAPH_ID, input={"messages": [{"role": "user", "content": body.message}]}
    )
    run = await svc.executor.claim(who, thread_id, run_body)
    # Shielded: a client hanging up must not cancel the run it started.
    outcome = await asyncio.shield(svc.executor.spawn(run))
    if outcome.error is not None:
        raise Problem(502, f"the agent failed: {outcome.error['message']}", kind="run-failed")
    messages = (outcome.values or {}).get("messages", [])
    reply = next((m.text for m in reversed(messages) if isinstance(m, AIMessage)), "")
    return serialize.JSON({"thread_id": thread_id, "run_id": run["run_id"], "reply": reply})


routes = [Route("/chat", chat, methods=["POST"])]
