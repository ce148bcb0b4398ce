"""threads.create / threads.update with ``ttl`` and threads.prune through langgraph-sdk,
unchanged, on two replicas; the reaper's prune run then enforces the ttl."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError
from psycopg.rows import dict_row

from tests.reaper.support import policy
from tests.support.processes import ServiceProcess
from threadkeeper.reaper.engine import prune

pytestmark = pytest.mark.slow


def _say(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_sdk_ttl_and_prune_across_replicas(
    replicas: Callable[..., ServiceProcess], database_url: str
) -> None:
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)

    short = await on_a.threads.create(ttl=5)
    long = await on_a.threads.create(ttl={"ttl": 60 * 24, "strategy": "delete"})
    # Restarted from now, on the other replica.
    await on_b.threads.update(long["thread_id"], metadata={}, ttl={"ttl": 60 * 24})
    seen = await on_a.threads.get(long["thread_id"], include=["ttl"])
    assert (seen["ttl"]["strategy"], seen["ttl"]["ttl_minutes"]) == ("delete", 60 * 24)
    pruned_one = await on_b.threads.create()
    for thread in (short, long, pruned_one):
        for text in ("hello", "what is 2+3"):
            await on_a.runs.wait(thread["thread_id"], "agent", input=_say(text))

    result = await on_b.threads.prune([pruned_one["thread_id"]], strategy="keep_latest")
    assert result == {"pruned_count": 1}
    history = await on_a.threads.get_history(pruned_one["thread_id"], limit=100)
    assert len(history) == 1
    assert "5" in history[0]["values"]["messages"][-1]["content"]

    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        now = (await (await conn.execute("SELECT now() AS now")).fetchone() or {})["now"]
        summary = await prune(
            conn, policy(threads={"maxIdle": "3650d"}), now=now + timedelta(minutes=10)
        )
    assert summary.threads_deleted.ttl == 1
    with pytest.raises(NotFoundError):
        await on_b.threads.get(short["thread_id"])
    assert (await on_b.threads.get(long["thread_id"]))["thread_id"] == long["thread_id"]

    assert await on_a.threads.prune([long["thread_id"], pruned_one["thread_id"]]) == {
        "pruned_count": 2
    }
    assert await on_b.threads.search() == []
