"""What a live lease is, in SQL: the one rule that says whether a run is executing somewhere.

A run holds its thread while it waits to be claimed or runs under a live lease (design.md,
invariants 1, 2 and 4). Every statement that asks goes through these predicates: the thread's
derived status, the claim, the reaper's prune guard, and the fences of checkpoint and event
writes; and every statement that asks whether a run has ended, whatever its lease, goes
through ``unfinished_sql``. ``run`` qualifies the ``runs`` columns (a table alias) where the
statement needs it.
"""

from __future__ import annotations

from threadkeeper.service.domain import ACTIVE_RUN_STATUSES, RunStatus


def live_lease_sql(run: str = "", *, clock: str = "now()") -> str:
    """The run is executing under a lease that has not expired by ``clock``. The write fences
    ask with ``clock_timestamp()``: the moment of the write, not of the statement's start."""
    r = f"{run}." if run else ""
    return f"{r}status = '{RunStatus.RUNNING}' AND {r}lease_expires_at > {clock}"


def busy_sql(run: str = "") -> str:
    """The run keeps its thread busy: waiting to be claimed, or executing under a live lease."""
    r = f"{run}." if run else ""
    return f"({r}status = '{RunStatus.PENDING}' OR ({live_lease_sql(run)}))"


def unfinished_sql(run: str = "") -> str:
    """The run has not ended: it waits to be claimed, or was claimed (its lease live or not)."""
    r = f"{run}." if run else ""
    statuses = ", ".join(f"'{status}'" for status in ACTIVE_RUN_STATUSES)
    return f"{r}status IN ({statuses})"


# The fence of a write: the attempt's lease is live at the moment of the write.
WRITE_FENCE_SQL = live_lease_sql(clock="clock_timestamp()")
