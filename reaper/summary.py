"""What one prune run did (or, in a dry run, would have done).

The JSON form (camelCase) is what ``threadkeeper-reaper prune`` prints and what the operator
copies into ``status.lastRun`` of the RetentionPolicy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field
from pydantic.alias_generators import to_camel


class Outcome(StrEnum):
    SUCCEEDED = "Succeeded"
    # Some threads raised unexpected errors (not lock conflicts); the rest were pruned.
    FAILED = "Failed"
    # Nothing was attempted: another prune holds the database, or the policy is suspended.
    SKIPPED = "Skipped"


class Reason(StrEnum):
    IDLE = "idle"
    ARCHIVED = "archived"
    ORPHAN = "orphan"
    # The thread's own ttl ran out (set through the API, strategy delete).
    TTL = "ttl"


@dataclass
class RowCounts:
    """Rows removed from each table by one thread's transaction."""

    checkpoints: int = 0
    blobs: int = 0
    writes: int = 0
    runs: int = 0
    threads: int = 0
    snapshots: int = 0

    def add(self, other: RowCounts) -> None:
        self.checkpoints += other.checkpoints
        self.blobs += other.blobs
        self.writes += other.writes
        self.runs += other.runs
        self.threads += other.threads
        self.snapshots += other.snapshots

    @property
    def any_deleted(self) -> bool:
        return bool(self.checkpoints or self.blobs or self.writes or self.runs or self.threads)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True
    )


class ThreadsDeleted(_Model):
    idle: int = 0
    archived: int = 0
    orphan: int = 0
    ttl: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return self.idle + self.archived + self.orphan + self.ttl


class ResumeCursor(_Model):
    """Where the two full sweeps (history depth, orphans) stopped; None means "from the start".

    Whole-thread deletion needs no cursor: its candidates come oldest first from an index and a
    deleted thread no longer matches. The sweeps visit every thread, so a run cut short by its
    limits hands this to the next run (the operator keeps it in memory).
    """

    history_after: str | None = None
    orphans_after: str | None = None


class PruneSummary(_Model):
    policy: str
    namespace: str
    dry_run: bool
    outcome: Outcome
    message: str
    started_at: datetime
    duration_seconds: float
    threads_deleted: ThreadsDeleted
    threads_pruned: int = 0
    threads_skipped: int = 0
    threads_failed: int = 0
    checkpoints_deleted: int = 0
    blobs_deleted: int = 0
    writes_deleted: int = 0
    runs_deleted: int = 0
    snapshots_written: int = 0
    # Long-term memory items past their TTL (``store.sweepExpired``), idle (``store.maxIdle``),
    # and beyond ``store.maxItemsPerNamespace``.
    store_expired_items_deleted: int = 0
    store_idle_items_deleted: int = 0
    store_excess_items_deleted: int = 0
    backlog: int = 0
    resume: ResumeCursor = ResumeCursor()

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def last_run_status(self) -> dict[str, Any]:
        """The ``status.lastRun`` object of the custom resource."""
        data = self.to_json()
        keys = (
            "dryRun",
            "threadsDeleted",
            "checkpointsDeleted",
            "blobsDeleted",
            "writesDeleted",
            "storeExpiredItemsDeleted",
            "storeIdleItemsDeleted",
            "storeExcessItemsDeleted",
            "durationSeconds",
            "outcome",
            "message",
        )
        return {k: data[k] for k in keys}


@dataclass
class Tally:
    """Running totals while a prune run is in progress."""

    rows: RowCounts = field(default_factory=RowCounts)
    deleted_by_reason: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(Reason, 0))
    pruned: int = 0
    store_expired: int = 0
    store_idle: int = 0
    store_excess: int = 0
    # Thread ids, so a thread skipped by two rules of one run counts once.
    skipped: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    @property
    def acted_on(self) -> int:
        return sum(self.deleted_by_reason.values()) + self.pruned
