"""Every private name of langgraph the service relies on, in one place.

The fenced saver (``service.checkpointer``) extends ``AsyncPostgresSaver`` and calls or
overrides some of its private methods, the pooled store (``service.store``) does the same
with ``AsyncPostgresStore``, and DeltaChannel's snapshot type and messages reducer
have no public name yet. A langgraph upgrade may rename or reshape any of them: ``drift()``
lists what no longer matches, and a test fails on it (tests/test_library_internals.py) before
the service misbehaves.
"""

from __future__ import annotations

import inspect

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import _DeltaSnapshot as DeltaSnapshot
from langgraph.graph.message import _messages_delta_reducer as messages_delta_reducer
from langgraph.store.postgres.aio import AsyncPostgresStore

__all__ = [
    "SAVER_PRIVATE_METHODS",
    "STORE_PRIVATE_METHODS",
    "DeltaSnapshot",
    "drift",
    "messages_delta_reducer",
]

# The private AsyncPostgresSaver methods the fenced saver calls or overrides, with the
# parameters (after ``self``) it passes or expects.
SAVER_PRIVATE_METHODS: dict[str, tuple[str, ...]] = {
    "_cursor": ("pipeline",),
    "_dump_blobs": ("thread_id", "checkpoint_ns", "values", "versions"),
    "_dump_writes": (
        "thread_id",
        "checkpoint_ns",
        "checkpoint_id",
        "task_id",
        "task_path",
        "writes",
    ),
    "_load_blobs": ("blob_values",),
    "_load_writes": ("writes",),
    "_load_checkpoint_tuple": ("value",),
    "_build_delta_channels_writes_history": (
        "channels",
        "chain_by_ch",
        "seed_ver_by_ch",
        "seed_inline_by_ch",
        "stage2_rows",
    ),
}
# The private AsyncPostgresStore methods the pooled store calls or overrides.
STORE_PRIVATE_METHODS: dict[str, tuple[str, ...]] = {
    "_ensure_task": (),
    "_execute_batch": ("grouped_ops", "results", "conn"),
    "_cursor": ("pipeline",),
    "_batch_get_ops": ("get_ops", "results", "cur"),
    "_batch_search_ops": ("search_ops", "results", "cur"),
    "_batch_list_namespaces_ops": ("list_ops", "results", "cur"),
}
# The parameters of the other private names, as this service calls them.
FUNCTION_PARAMETERS: dict[str, tuple[object, tuple[str, ...]]] = {
    "DeltaSnapshot": (DeltaSnapshot, ("value",)),
    "messages_delta_reducer": (messages_delta_reducer, ("state", "writes")),
}


def _parameters(function: object) -> tuple[str, ...]:
    names = tuple(inspect.signature(function).parameters)  # type: ignore[arg-type]
    return names[1:] if names[:1] == ("self",) else names


def drift() -> list[str]:
    """What of the private API no longer matches this module, one line each; empty when
    every name exists with the parameters the service uses."""
    found: list[str] = []
    for cls, methods in (
        (AsyncPostgresSaver, SAVER_PRIVATE_METHODS),
        (AsyncPostgresStore, STORE_PRIVATE_METHODS),
    ):
        for name, wanted in methods.items():
            method = getattr(cls, name, None)
            if method is None:
                found.append(f"{cls.__name__}.{name} is gone")
            elif (got := _parameters(method)) != wanted:
                found.append(f"{cls.__name__}.{name} takes {got}, not {wanted}")
    for name, (function, wanted) in FUNCTION_PARAMETERS.items():
        if (got := _parameters(function)) != wanted:
            found.append(f"{name} takes {got}, not {wanted}")
    return found
