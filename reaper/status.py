"""What a RetentionPolicy's status says after a tick, and the Event that reports it.

Owns the status fields the operator writes (``observedGeneration``, ``lastRunNowHandled``,
``lastRunTime``, ``lastSuccessTime``, ``nextRunTime``, ``lastRun``, ``conditions``), the rules
of the two conditions, and which Event goes with each ending of a run:

- ``Ready``: True after a successful run (``PruneSucceeded``, ``DryRunCompleted``); False with
  the failure's reason (``PruneFailed``, ``PruneTimedOut``, or a :class:`StallReason`).
- ``Stalled``: True while the spec, the Secret or the database stops the policy (a
  :class:`StallReason`), False (``AsExpected``) after a run that finished. A timed-out run
  sets only ``Ready``; a skipped one (another pruner holds the database) only ``Stalled``.
- Events: ``Pruned`` / ``DryRun`` / ``PruneSkipped`` (Normal) per run, ``PruneFailed`` and the
  Stalled reasons (Warning); a Stalled reason only when it starts.

Also the metav1.Condition mechanics: ``lastTransitionTime`` moves only when a condition's status
flips. Pure functions: the caller passes the times, posts the Event (``reaper.kube.post``) and
hands the patch to kopf. When the policy is due is ``reaper.schedule``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from threadkeeper.reaper.schedule import Why, format_time, parse_time
from threadkeeper.reaper.summary import Outcome, PruneSummary


class ConditionType(StrEnum):
    READY = "Ready"
    STALLED = "Stalled"


class StallReason(StrEnum):
    """Why a policy cannot run until something outside the operator changes."""

    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    SECRET_FORBIDDEN = "SecretForbidden"
    DATABASE_UNREACHABLE = "DatabaseUnreachable"
    INVALID_DATABASE_URL = "InvalidDatabaseURL"
    INTERNAL_ERROR = "InternalError"


class RunReason(StrEnum):
    """The reasons of the conditions after a run that started."""

    PRUNE_SUCCEEDED = "PruneSucceeded"
    DRY_RUN_COMPLETED = "DryRunCompleted"
    PRUNE_FAILED = "PruneFailed"
    PRUNE_TIMED_OUT = "PruneTimedOut"
    AS_EXPECTED = "AsExpected"


class EventReason(StrEnum):
    PRUNED = "Pruned"
    DRY_RUN = "DryRun"
    PRUNE_SKIPPED = "PruneSkipped"
    PRUNE_FAILED = "PruneFailed"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Stalled(Exception):
    """The policy cannot run until something outside the operator changes."""

    def __init__(self, reason: StallReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Ending:
    """The status fields one ending of a run writes, and the Event to post (None: none)."""

    status: dict[str, Any]
    event: Event | None


# -- metav1.Condition ------------------------------------------------------------------------


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
        "type": str(type_),
        "status": text,
        "reason": str(reason),
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


# -- the endings of a tick -------------------------------------------------------------------


def observed(generation: int | None, run_now_token: str | None) -> dict[str, Any]:
    """What every run records: the generation it applied and the run-now request it handled."""
    patch: dict[str, Any] = {"observedGeneration": generation}
    if run_now_token is not None:
        patch["lastRunNowHandled"] = run_now_token
    return patch


def suspended(generation: int | None) -> dict[str, Any]:
    """A suspended policy has seen its spec and has no next run."""
    return {"observedGeneration": generation, "nextRunTime": None}


def stalled(
    stall: Stalled,
    *,
    conditions: Sequence[Mapping[str, Any]],
    generation: int | None,
    now: datetime,
    next_run: datetime,
) -> Ending:
    """The run could not start or broke off: Ready=False, Stalled=True, with its reason."""
    updates = [
        condition(ConditionType.READY, False, stall.reason, stall.message, generation=generation),
        condition(ConditionType.STALLED, True, stall.reason, stall.message, generation=generation),
    ]
    event = None
    if condition_changed(conditions, updates[1]):
        event = Event(EventType.WARNING, stall.reason, stall.message)
    fields = {
        "nextRunTime": format_time(next_run),
        "conditions": merge_conditions(conditions, updates, now=now),
    }
    return Ending(fields, event)


def timed_out(
    *,
    conditions: Sequence[Mapping[str, Any]],
    generation: int | None,
    grace: timedelta,
    started: datetime,
    finished: datetime,
    next_run: datetime,
) -> Ending:
    """The run was cancelled at maxDuration plus ``grace``: Ready=False (PruneTimedOut)."""
    message = f"the run exceeded maxDuration plus {grace.seconds}s and was cancelled"
    ready = condition(
        ConditionType.READY, False, RunReason.PRUNE_TIMED_OUT, message, generation=generation
    )
    fields = {
        "lastRunTime": format_time(started),
        "nextRunTime": format_time(next_run),
        "conditions": merge_conditions(conditions, [ready], now=finished),
    }
    return Ending(fields, Event(EventType.WARNING, EventReason.PRUNE_FAILED, message))


def _run_conditions(summary: PruneSummary, generation: int | None) -> list[dict[str, Any]]:
    ok = condition(
        ConditionType.STALLED,
        False,
        RunReason.AS_EXPECTED,
        "the policy can run",
        generation=generation,
    )
    if summary.outcome is Outcome.SUCCEEDED:
        reason = RunReason.DRY_RUN_COMPLETED if summary.dry_run else RunReason.PRUNE_SUCCEEDED
        ready = condition(ConditionType.READY, True, reason, summary.message, generation=generation)
    elif summary.outcome is Outcome.FAILED:
        ready = condition(
            ConditionType.READY,
            False,
            RunReason.PRUNE_FAILED,
            summary.message,
            generation=generation,
        )
    else:
        # Another pruner holds the database: nothing about this policy is known to be wrong.
        return [ok]
    return [ready, ok]


def _run_event(summary: PruneSummary, why: Why) -> Event:
    message = f"{summary.message} ({why.value})"
    if summary.outcome is Outcome.FAILED:
        return Event(EventType.WARNING, EventReason.PRUNE_FAILED, message)
    if summary.outcome is Outcome.SKIPPED:
        return Event(EventType.NORMAL, EventReason.PRUNE_SKIPPED, message)
    reason = EventReason.DRY_RUN if summary.dry_run else EventReason.PRUNED
    return Event(EventType.NORMAL, reason, message)


def ran(
    summary: PruneSummary,
    *,
    conditions: Sequence[Mapping[str, Any]],
    generation: int | None,
    why: Why,
    finished: datetime,
    next_run: datetime,
) -> Ending:
    """The run finished (Succeeded, Failed or Skipped): its times, summary and conditions."""
    fields: dict[str, Any] = {"lastRunTime": format_time(summary.started_at)}
    if summary.outcome is Outcome.SUCCEEDED:
        fields["lastSuccessTime"] = format_time(summary.started_at)
    fields["nextRunTime"] = format_time(next_run)
    fields["lastRun"] = summary.last_run_status()
    fields["conditions"] = merge_conditions(
        conditions, _run_conditions(summary, generation), now=finished
    )
    return Ending(fields, _run_event(summary, why))


def last_success(body: Mapping[str, Any]) -> float:
    """When the policy last succeeded: ``status.lastSuccessTime``, else its creation."""
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    for value in (status.get("lastSuccessTime"), meta.get("creationTimestamp")):
        moment = parse_time(value)
        if moment is not None:
            return moment.timestamp()
    return 0.0
