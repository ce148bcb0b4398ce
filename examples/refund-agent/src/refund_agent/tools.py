"""The agent's tool: looking an order up (a stand-in for the shop's order service)."""

from __future__ import annotations

import os

from langchain_core.tools import tool


@tool
def lookup_order(order_id: int) -> dict[str, object]:
    """Look up an order by its number: its amount and currency."""
    # Deterministic, so the example runs anywhere: order 7 costs 70.
    return {"order_id": order_id, "amount": order_id * 10, "currency": currency()}


def currency() -> str:
    # Set by langgraph.json's `env`; a deployment's own environment wins over it.
    return os.environ.get("REFUND_CURRENCY", "USD")
