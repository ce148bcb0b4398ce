"""Choosing the chat model from ``THREADKEEPER_MODEL``."""

from __future__ import annotations

import importlib

from langchain_core.language_models import BaseChatModel

from threadkeeper.service.agent.offline import OfflineChatModel


class ModelConfigError(ValueError):
    """THREADKEEPER_MODEL names something that cannot be loaded."""


def make_model(
    spec: str, *, offline_latency_seconds: float = 0.0, offline_token_seconds: float = 0.0
) -> BaseChatModel:
    """``offline`` or a ``provider:model`` string understood by ``init_chat_model``."""
    if spec == "offline":
        return OfflineChatModel(
            latency_seconds=offline_latency_seconds, token_seconds=offline_token_seconds
        )
    if ":" not in spec:
        raise ModelConfigError(
            f"THREADKEEPER_MODEL must be 'offline' or 'provider:model', got {spec!r}"
        )
    try:
        chat_models = importlib.import_module("langchain.chat_models")
    except ImportError as exc:
        raise ModelConfigError(
            "real providers need an extra: uv sync --extra openai (or --extra anthropic)"
        ) from exc
    model: BaseChatModel = chat_models.init_chat_model(spec)
    return model
