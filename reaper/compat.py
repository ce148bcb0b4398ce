"""Every use of kopf's private internals, in one place, checked against the installed kopf.

kopf marks every timer and daemon as needing a finalizer (``requires_finalizer=True`` in
``kopf/on.py``) with no public switch, and a finalizer would let the operator block the deletion
of its policies (see ``reaper.handlers``). Clearing that mark takes three private things:

- ``OperatorRegistry._spawning``: the registry of timers and daemons;
- its ``_handlers`` list;
- the handlers being dataclasses with a ``requires_finalizer`` field (kopf reads it in
  ``SpawningRegistry.requires_finalizer``).

A kopf upgrade that changes any of them makes :func:`drop_finalizer_requirement` raise
:class:`KopfIncompatible`, naming the kopf version and the symbol, instead of an AttributeError
deep in kopf; ``tests/reaper/test_compat.py`` checks them on every test run.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import version
from typing import Any

import kopf

KOPF_VERSION = version("kopf")


class KopfIncompatible(RuntimeError):
    """The installed kopf no longer has a private symbol this module relies on."""

    def __init__(self, symbol: str, problem: str) -> None:
        super().__init__(
            f"kopf {KOPF_VERSION}: {symbol} {problem}; reaper/compat.py must follow the upgrade"
        )
        self.symbol = symbol


def spawning_handlers(registry: kopf.OperatorRegistry) -> list[Any]:
    """The registry's own (mutable) list of timer and daemon handlers."""
    spawning = getattr(registry, "_spawning", None)
    if spawning is None:
        raise KopfIncompatible("OperatorRegistry._spawning", "is gone")
    handlers = getattr(spawning, "_handlers", None)
    if not isinstance(handlers, list):
        raise KopfIncompatible(f"{type(spawning).__name__}._handlers", "is no longer a list")
    return handlers


def _without_finalizer(handler: Any) -> Any:
    fields = (
        {f.name for f in dataclasses.fields(handler)} if dataclasses.is_dataclass(handler) else ()
    )
    if "requires_finalizer" not in fields:
        raise KopfIncompatible(
            f"{type(handler).__name__}.requires_finalizer", "is no longer a dataclass field"
        )
    return dataclasses.replace(handler, requires_finalizer=False)


def drop_finalizer_requirement(registry: kopf.OperatorRegistry) -> None:
    """Clear kopf's hard-wired ``requires_finalizer`` on every timer and daemon registered yet."""
    handlers = spawning_handlers(registry)
    handlers[:] = [_without_finalizer(handler) for handler in handlers]
