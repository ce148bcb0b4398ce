"""kopf's private internals behind ``reaper/compat.py``, checked against the installed kopf.

When a kopf upgrade changes one of them, these tests fail with a message naming the kopf version
and the symbol. Pure: kopf's registry works without a cluster.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import kopf
import kubernetes.client
import pytest
from prometheus_client import CollectorRegistry

from threadkeeper.reaper import compat
from threadkeeper.reaper.context import OperatorContext
from threadkeeper.reaper.handlers import build_registry
from threadkeeper.reaper.kube import SecretReader
from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.reaper.probe import Heartbeat

RESOURCE = ("threadkeeper.dev", "v1alpha1", "retentionpolicies")


def _timer_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.timer(*RESOURCE, id="t", interval=1, registry=registry)
    def tick(**_: Any) -> None:
        """Never runs: only registered."""

    return registry


def _marks(registry: kopf.OperatorRegistry) -> list[bool | None]:
    return [handler.requires_finalizer for handler in compat.spawning_handlers(registry)]


def test_kopf_still_marks_timers_as_needing_a_finalizer() -> None:
    """The reason for the workaround; when kopf stops doing this, the workaround can go."""
    assert _marks(_timer_registry()) == [True], (
        f"kopf {compat.KOPF_VERSION}: timers no longer carry requires_finalizer=True; "
        "reaper.compat.drop_finalizer_requirement may be unnecessary"
    )


def test_the_finalizer_requirement_is_dropped() -> None:
    registry = _timer_registry()
    compat.drop_finalizer_requirement(registry)
    assert _marks(registry) == [False]
    # kopf's own check reads the mark first and matches the object only when it is set.
    try:
        needed = registry._spawning.requires_finalizer(cause=None)
    except (AttributeError, TypeError) as exc:
        needed = exc
    assert needed is False, (
        f"kopf {compat.KOPF_VERSION}: SpawningRegistry.requires_finalizer no longer decides by "
        f"the handlers' requires_finalizer alone: {needed!r}"
    )


def test_the_operators_timers_need_no_finalizer() -> None:
    ctx = OperatorContext(
        secrets=SecretReader(kubernetes.client.Configuration()),
        metrics=ReaperMetrics(CollectorRegistry()),
        heartbeat=Heartbeat(stale_after=30),
    )
    marks = _marks(build_registry(ctx))
    assert marks and not any(marks)


@pytest.mark.parametrize(
    ("registry", "symbol"),
    [
        (object(), "OperatorRegistry._spawning"),
        (SimpleNamespace(_spawning=SimpleNamespace(_handlers=())), "SimpleNamespace._handlers"),
        (
            SimpleNamespace(_spawning=SimpleNamespace(_handlers=[object()])),
            "object.requires_finalizer",
        ),
    ],
)
def test_a_changed_kopf_is_named_with_its_version_and_symbol(registry: Any, symbol: str) -> None:
    expected = f"kopf {re.escape(compat.KOPF_VERSION)}: {re.escape(symbol)} "
    with pytest.raises(compat.KopfIncompatible, match=expected):
        compat.drop_finalizer_requirement(registry)
