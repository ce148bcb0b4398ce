"""threads.search ``values`` and ``extract``, and threads.count ``values``, through langgraph-sdk,
unchanged, on two replicas: threads talked to on one are found by their values on the other,
each caller seeing only their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import UnprocessableEntityError

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

HEADER_AUTH = {"THREADKEEPER_AUTH": "header"}


def _client(replica: ServiceProcess, user: str) -> LangGraphClient:
    return get_client(url=replica.url, api_key=None, headers={"X-Forwarded-User": user})


def _say(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_sdk_search_by_values_and_extract_across_replicas(
    replicas: Callable[..., ServiceProcess],
) -> None:
    a = replicas("a", **HEADER_AUTH).start()
    b = replicas("b", **HEADER_AUTH).start(migrate=False)
    alice_a, alice_b, bob_b = _client(a, "alice"), _client(b, "alice"), _client(b, "bob")
    sums = []
    for _ in range(2):
        thread = await alice_a.threads.create(metadata={"kind": "sum"})
        await alice_a.runs.wait(thread["thread_id"], "agent", input=_say("what is 2+3"))
        sums.append(thread["thread_id"])
    hello = await alice_a.threads.create(metadata={"kind": "greeting"})
    await alice_a.runs.wait(hello["thread_id"], "agent", input=_say("hello"))
    bobs = await bob_b.threads.create()
    await bob_b.runs.wait(bobs["thread_id"], "agent", input=_say("what is 2+3"))
    asked = {"messages": [{"type": "human", "content": "what is 2+3"}]}

    found = await alice_b.threads.search(
        values=asked,
        extract={"answer": "values.messages[-1].content", "kind": "metadata.kind"},
    )

    assert [t["thread_id"] for t in found] == sums[::-1]
    for thread in found:
        assert "5" in thread["extracted"]["answer"]
        assert thread["extracted"]["kind"] == "sum"
    assert await alice_b.threads.count(values=asked) == 2
    assert [t["thread_id"] for t in await bob_b.threads.search(values=asked)] == [bobs["thread_id"]]
    assert await alice_b.threads.search(values={"messages": [{"content": "what is 9+9"}]}) == []
    with pytest.raises(UnprocessableEntityError):
        await alice_b.threads.search(extract={"answer": "messages[-1]"})
