"""Conversation storage stays close to linear in conversation length."""

from __future__ import annotations

import random
import string
import uuid
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from langgraph.graph.state import StateGraph

from threadkeeper.service.agent.graph import build_graph
from threadkeeper.service.agent.offline import OfflineChatModel
from threadkeeper.service.checkpointer import FencedPostgresSaver
from threadkeeper.service.db import Pool

TURNS = 200
STOCK_TURNS = 60
MESSAGE_BYTES = 2500

THREAD_BYTES_SQL = """
SELECT
    (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM checkpoints c WHERE thread_id = %(t)s)
  + (SELECT coalesce(sum(pg_column_size(b.*)), 0) FROM checkpoint_blobs b
     WHERE thread_id = %(t)s)
  + (SELECT coalesce(sum(pg_column_size(w.*)), 0) FROM checkpoint_writes w
     WHERE thread_id = %(t)s)
  AS bytes
"""


class StockState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _message(rng: random.Random, turn: int) -> str:
    # Random words, so compression cannot hide what is stored.
    words = []
    size = 0
    while size < MESSAGE_BYTES:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        words.append(word)
        size += len(word) + 1
    return f"turn {turn}: " + " ".join(words)[:MESSAGE_BYTES]


async def _thread_bytes(pool: Pool, thread_id: str) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(THREAD_BYTES_SQL, {"t": thread_id})
        row = await cur.fetchone()
        assert row is not None
        return int(row["bytes"])


async def _conversation(
    pool: Pool, builder: StateGraph[Any], turns: int = TURNS
) -> tuple[list[int], int]:
    """Run ``turns`` turns; returns bytes stored after each turn and the total message text."""
    graph = builder.compile(checkpointer=FencedPostgresSaver(pool))
    thread_id = str(uuid.uuid4())
    config = {"configurable": {"thread_id": thread_id}}
    rng = random.Random(7)
    sizes: list[int] = []
    for turn in range(1, turns + 1):
        await graph.ainvoke(
            {"messages": [{"role": "user", "content": _message(rng, turn)}]}, config
        )
        sizes.append(await _thread_bytes(pool, thread_id))
    state = await graph.aget_state(config)
    text = sum(len(m.text.encode()) for m in state.values["messages"])
    assert len(state.values["messages"]) == 2 * turns
    return sizes, text


async def test_two_hundred_turns_stay_linear(pool: Pool) -> None:
    sizes, text = await _conversation(pool, build_graph(OfflineChatModel()))
    assert sizes[-1] <= 20 * text, f"{sizes[-1]} bytes for {text} bytes of text"
    early = (sizes[99] - sizes[9]) / 90
    late = (sizes[199] - sizes[99]) / 100
    assert late <= 2 * early, f"bytes per turn grew from {early:.0f} to {late:.0f}"


async def test_stock_add_messages_is_quadratic(pool: Pool) -> None:
    """The same measurement fails for stock add_messages, so the test can tell them apart."""
    stock = build_graph(OfflineChatModel(), state_schema=StockState)
    sizes, text = await _conversation(pool, stock, turns=STOCK_TURNS)
    assert sizes[-1] > 20 * text
