"""What the operator's handlers share, and what it keeps per RetentionPolicy.

Owns the set of live policies (the timer's ``when`` filter reads it), each policy's
:class:`Memory` (derived, never needed by another replica: a restart rebuilds it from the
status), and the bookkeeping when a policy appears or goes: its heartbeat entry
(``reaper.probe``) and its metric series (``reaper.metrics``) start and end here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from threadkeeper.reaper import schedule, status
from threadkeeper.reaper.kube import SecretReader
from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.reaper.probe import Heartbeat
from threadkeeper.reaper.summary import ResumeCursor

log = structlog.get_logger(__name__)

DEFAULT_TICK = 10.0
DEFAULT_STATS_INTERVAL = 60.0
# The status fields a run decides on next time (``reaper.schedule.decide``).
REMEMBERED = ("observedGeneration", "lastRunNowHandled", "nextRunTime", "lastRunTime", "conditions")


@dataclass
class Memory:
    # What this process last wrote to the status: the timer may tick again before the watch
    # brings that write back, and must not run twice for one run-now request or spec edit.
    written: dict[str, Any] = field(default_factory=dict)
    resume: ResumeCursor = field(default_factory=ResumeCursor)
    stats_at: datetime | None = None

    def remember(self, written: Mapping[str, Any]) -> None:
        """Keep what a run wrote, until the watch brings it back."""
        self.written = {k: written[k] for k in REMEMBERED if k in written}


@dataclass
class OperatorContext:
    """Everything the handlers share; built once per operator."""

    secrets: SecretReader
    metrics: ReaperMetrics
    heartbeat: Heartbeat
    tick_interval: float = DEFAULT_TICK
    stats_interval: float = DEFAULT_STATS_INTERVAL
    retry_after: timedelta = schedule.RETRY_AFTER
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    live: set[str] = field(default_factory=set)
    memory: dict[str, Memory] = field(default_factory=dict)

    def memory_of(self, uid: str) -> Memory:
        return self.memory.setdefault(uid, Memory())

    def policy_seen(self, body: Mapping[str, Any], *, uid: str, namespace: str, name: str) -> None:
        """A watch event of a live policy: its timer may tick, its series exist."""
        self.live.add(uid)
        self.heartbeat.seen(uid, f"{namespace}/{name}")
        self.metrics.policy_seen(
            namespace=namespace, policy=name, succeeded_at=status.last_success(body)
        )

    def policy_gone(self, *, uid: str, namespace: str, name: str) -> None:
        """The policy was deleted: forget it, and drop its series so no alert fires for it."""
        self.live.discard(uid)
        self.memory.pop(uid, None)
        self.heartbeat.gone(uid)
        self.metrics.policy_gone(namespace=namespace, policy=name)
        log.info("policy_deleted", namespace=namespace, policy=name)
