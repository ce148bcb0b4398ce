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
    humans = [m for m in messages if isinstance(m, HumanMessage)]
    if humans and (match := NAME.search(humans[-1].text)):
        await store.aput(NAMESPACE, NAME_KEY, {"name": match.group(1)})


async def recall(store: BaseStore) -> SystemMessage | None:
    """What the agent knows about the user from earlier threads, for the model to use."""
    item = await store.aget(NAMESPACE, NAME_KEY)
    if item is None:
        return None
    return SystemMessage(content=f"I remember that your name is {item.value['name']}.")
