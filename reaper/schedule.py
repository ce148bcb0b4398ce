"""When a RetentionPolicy is due, and the status conditions that record how it went.

Level-triggered: whether to run is decided from the object alone (spec, generation, the run-now
annotation, and the status the operator wrote last), so an operator restart, a missed timer
tick or a spec edit all converge on the same answer. The functions here are pure (the caller
passes ``now``), which keeps them testable without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

# A user (or `kubectl annotate --overwrite`) sets any new value to request one run now; the
# operator echoes the value it handled in status.lastRunNowHandled (the Flux
# `reconcile.fluxcd.io/requestedAt` pattern), so nothing has to remove the annotation.
RUN_NOW_ANNOTATION = "threadkeeper.dev/run-now"

# After a failure that is not the policy's own doing (Secret missing, database down) retry
# sooner than a long interval, but not on every tick.
RETRY_AFTER = timedelta(seconds=30)


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


def condition(
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    *,
    generation: int | None,
) -> dict[str, Any]:
    """A metav1.Condition without its lastTransitionTime (``merge_conditions`` sets it)."""
    text = "Unknown" if status is None else ("True" if status else "False")
    result: dict[str, Any] = {
        "type": type_,
        "status": text,
        "reason": reason,
        # metav1.Condition caps messages at 32768 characters.
        "message": message[:32768],
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def merge_conditions(
    current: Sequence[Mapping[str, Any]] | None,
    updates: Sequence[dict[str, Any]],
    *,
    now: datetime,
) -> list[dict[str, Any]]:
    """The whole new conditions list (a merge patch replaces lists whole).

    lastTransitionTime moves only when a condition's status flips, as the Kubernetes API
    conventions ask; conditions not in ``updates`` are kept as they are.
    """
    by_type = {str(c.get("type")): dict(c) for c in current or ()}
    for update in updates:
        previous = by_type.get(update["type"])
        stamp = format_time(now)
        if previous is not None and previous.get("status") == update["status"]:
            stamp = str(previous.get("lastTransitionTime") or stamp)
        by_type[update["type"]] = {**update, "lastTransitionTime": stamp}
    return list(by_type.values())


def condition_changed(
    current: Sequence[Mapping[str, Any]] | None, update: Mapping[str, Any]
) -> bool:
    """Whether ``update`` differs in status or reason from the stored condition of its type."""
    for existing in current or ():
        if existing.get("type") == update["type"]:
            return bool(
                existing.get("status") != update["status"]
                or existing.get("reason") != update["reason"]
            )
    return True
