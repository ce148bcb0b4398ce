"""What the domain refuses, as exceptions that say what went wrong, not how HTTP answers it.

The HTTP layer maps each to its problem response (``problems.from_domain``), in one place.
"""

from __future__ import annotations

from uuid import UUID


class DomainError(Exception):
    """Something the caller asked for cannot be done; ``detail`` says why, for people."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    """The caller has no such resource (another owner's answers the same)."""

    def __init__(self, what: str, ident: object) -> None:
        super().__init__(f"{what} with ID {ident} not found")


class InvalidInput(DomainError):
    """The request names something this service does not offer."""


class Conflict(DomainError):
    """The resource's state forbids it now; ``kind`` names the conflict (``thread-busy``)."""

    def __init__(self, detail: str, kind: str) -> None:
        super().__init__(detail)
        self.kind = kind


class ThreadBusy(Conflict):
    def __init__(self) -> None:
        super().__init__(
            "Thread is already running a task. Wait for it to finish or choose a different "
            "multitask strategy.",
            "thread-busy",
        )


class StatePruned(DomainError):
    """A run ended, but the checkpoint it ended on was deleted by a history prune."""

    def __init__(self, run_id: UUID, status: str, thread_id: UUID) -> None:
        super().__init__(
            f"run {run_id} ended ({status}), but the state it ended with was "
            "pruned by the retention policy; the thread's current state is at "
            f"/threads/{thread_id}/state"
        )
        self.run_id = run_id
        self.run_status = status
