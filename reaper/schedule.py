"""When a RetentionPolicy is due: its interval, the run-now request, the retry after a stall.

Level-triggered: whether to run is decided from the object alone (spec, generation, the run-now
annotation, and the status the operator wrote last), so an operator restart, a missed timer
tick or a spec edit all converge on the same answer. The functions here are pure (the caller
passes ``now``), which keeps them testable without a cluster. What the status says after a run
is ``reaper.status``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from threadkeeper.reaper.durations import parse_duration

# A user (or `kubectl annotate --overwrite`) sets any new value to request one run now; the
# operator echoes the value it handled in status.lastRunNowHandled (the Flux
# `reconcile.fluxcd.io/requestedAt` pattern), so nothing has to remove the annotation.
RUN_NOW_ANNOTATION = "threadkeeper.dev/run-now"

# After a failure that is not the policy's own doing (Secret missing, database down, the prune
# lock held elsewhere) retry sooner than a long interval, but not on every tick. The default of
# `threadkeeper-reaper run --retry-after`.
RETRY_AFTER = timedelta(seconds=30)
# The CRD validates the interval; this only covers an object the API server let through anyway
# (the run then stalls on InvalidSpec and retries after the retry delay).
FALLBACK_INTERVAL = timedelta(minutes=10)


class Why(StrEnum):
    RUN_NOW = "run-now"
    SPEC_CHANGED = "spec-changed"
    SCHEDULED = "scheduled"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with whole seconds, as Kubernetes writes its own timestamps."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Decision:
    why: Why
    run_now_token: str | None = None


def decide(
    *,
    now: datetime,
    generation: int | None,
    annotations: Mapping[str, str],
    status: Mapping[str, Any],
    interval: timedelta,
) -> Decision | None:
    """Why the policy should run at ``now``, or None when it is not due."""
    token = annotations.get(RUN_NOW_ANNOTATION)
    if token and token != status.get("lastRunNowHandled"):
        return Decision(Why.RUN_NOW, token)
    if generation is not None and status.get("observedGeneration") != generation:
        # First sight, or the spec changed: apply (and validate) the new spec right away.
        return Decision(Why.SPEC_CHANGED)
    next_run = parse_time(status.get("nextRunTime"))
    if next_run is None:
        last = parse_time(status.get("lastRunTime"))
        next_run = last + interval if last is not None else now
    return Decision(Why.SCHEDULED) if now >= next_run else None


def interval_of(spec: Mapping[str, Any]) -> timedelta:
    """``spec.schedule.interval`` (10m when absent or unreadable)."""
    try:
        return parse_duration(str((spec.get("schedule") or {}).get("interval", "10m")))
    except ValueError:
        return FALLBACK_INTERVAL


def retry_time(now: datetime, interval: timedelta, retry_after: timedelta) -> datetime:
    """When a stalled or skipped policy tries again: after its interval, at most ``retry_after``."""
    return now + min(interval, retry_after)
