"""``POST /chat``: the short form for curl users, one message in, one reply out."""

from __future__ import annotations

import asyncio
import uuid

from langchain_core.messages import AIMessage
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import serialize, threads
from threadkeeper.service.domain import MultitaskStrategy
from threadkeeper.service.http import accepts, owner, services, until_closing
from threadkeeper.service.problems import Problem
from threadkeeper.service.schemas import Chat, RunCreate
from threadkeeper.service.submit import RunRequest, result_of, submit


def _is_ai(message: object) -> bool:
    if isinstance(message, AIMessage):
        return True
    return isinstance(message, dict) and message.get("type") == "ai"


def _text(message: object) -> str:
    if isinstance(message, AIMessage):
        return message.text
    content = message.get("content", "") if isinstance(message, dict) else ""
    return content if isinstance(content, str) else str(content)


@accepts(Chat, required=True)
async def chat(request: Request, body: Chat) -> Response:
    who = owner(request)
    svc = services(request)
    thread_id = body.thread_id
    if thread_id is None:
        thread_id = uuid.uuid4()
        async with svc.pool.connection() as conn:
            await threads.insert(conn, thread_id=thread_id, owner=who, metadata={})
    run_body = RunCreate(
        assistant_id=svc.registry.default,
        input={"messages": [{"role": "user", "content": body.message}]},
        multitask_strategy=MultitaskStrategy.REJECT,
    )
    run, attempt = await submit(svc, RunRequest(who, thread_id, run_body, waited=True))
    # A client hanging up ends the wait, not the run it started.
    join = f"/threads/{thread_id}/runs/{run.run_id}/join"
    result = await until_closing(
        svc.closing, asyncio.create_task(result_of(svc, run, attempt)), {"Location": join}
    )
    if isinstance(result, dict) and "__error__" in result:
        raise Problem(502, f"the agent failed: {result['__error__']['message']}", kind="run-failed")
    messages = (result or {}).get("messages", [])
    reply = next((_text(m) for m in reversed(messages) if _is_ai(m)), "")
    return serialize.JSON({"thread_id": thread_id, "run_id": run.run_id, "reply": reply})


routes = [Route("/chat", chat, methods=["POST"])]
