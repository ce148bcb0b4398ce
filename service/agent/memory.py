"""The demo agent's long-term memory: what the user says about themselves, kept in the store
across threads (the owner's own namespace; see ``threadkeeper.service.store``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage
from langgraph.store.base import BaseStore

NAMESPACE = ("memories", "profile")
NAME_KEY = "name"
NAME = re.compile(r"\bmy name is\s+([^\W\d_][\w'-]*)", re.IGNORECASE)


async def remember(store: BaseStore, messages: Sequence[AnyMessage]) -> None:
    """Keep the name the latest user message states, if it states one."""
    # From the end: the whole history is scanned every turn otherwise, longer each turn.
    latest = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
    if latest is not None and (match := NAME.search(latest.text)):
        await store.aput(NAMESPACE, NAME_KEY, {"name": match.group(1)})


async def recall(store: BaseStore) -> SystemMessage | None:
    """What the agent knows about the user from earlier threads, for the model to use."""
    item = await store.aget(NAMESPACE, NAME_KEY)
    if item is None:
        return None
    return SystemMessage(content=f"I remember that your name is {item.value['name']}.")
