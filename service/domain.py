"""The service's vocabulary: the statuses, actions, reasons and choices runs, threads and
searches are described by, and the events that frame a run's stream.

Each is a ``StrEnum`` whose values are exactly what the API, the SQL and the ``runs``/``threads``
columns use, so a member compares equal to (and serialises as) its wire value.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"


# A run that still owns its thread's queue position (waiting, or executing somewhere).
ACTIVE_RUN_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)
# A run that has ended; its events are all written.
ENDED_RUN_STATUSES = (
    RunStatus.SUCCESS,
    RunStatus.ERROR,
    RunStatus.TIMEOUT,
    RunStatus.INTERRUPTED,
)


class ThreadStatus(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class CancelAction(StrEnum):
    """What cancelling a run does: stop it keeping its checkpoints, or remove all it wrote."""

    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"


class StopReason(StrEnum):
    """Why an executing attempt was stopped before its graph finished."""

    LEASE_LOST = "lease_lost"
    DRAIN = "drain"
    INTERRUPT = CancelAction.INTERRUPT.value
    ROLLBACK = CancelAction.ROLLBACK.value


class MultitaskStrategy(StrEnum):
    """What a new run does to the runs already queued or executing on its thread."""

    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = CancelAction.INTERRUPT.value
    ROLLBACK = CancelAction.ROLLBACK.value


class OnCompletion(StrEnum):
    """What becomes of a stateless run's thread (a stateless cron's too) after the run."""

    DELETE = "delete"
    KEEP = "keep"


class DisconnectMode(StrEnum):
    """What a client hanging up on a run it streams or waits for does to the run."""

    CANCEL = "cancel"
    CONTINUE = "continue"


class SortOrder(StrEnum):
    ASC = "asc"
    DESC = "desc"

    @property
    def sql(self) -> str:
        """The order's SQL keyword (a constant, never client text)."""
        return "ASC" if self is SortOrder.ASC else "DESC"


class RunEvent(StrEnum):
    """The events of a run's stream that belong to no stream mode: sent whatever a joiner
    asked for."""

    METADATA = "metadata"  # an attempt starts: the run's id and the attempt's number
    ERROR = "error"  # the run failed: what went wrong
    END = "end"  # the run's last event
