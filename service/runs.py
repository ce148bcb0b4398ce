"""The ``runs`` table: every run of every thread, with its lease.

A run is executing only while its lease is live; the holder renews it. Claiming takes the
thread's row lock and starts only the oldest unfinished run of the thread, so at most one run of
a thread executes at any moment across replicas, and queued runs execute in order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, Self, TypeVar
from uuid import UUID, uuid5

from psycopg import AsyncConnection, AsyncRawCursor
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from threadkeeper.service.db import numbered
from threadkeeper.service.domain import CancelAction, MultitaskStrategy, RunStatus, ThreadStatus
from threadkeeper.service.events import ENDING_CTE
from threadkeeper.service.lease import busy_sql, live_lease_sql, unfinished_sql
from threadkeeper.service.notify import EVENTS_CHANNEL, NOTIFY_SQL, RUNS_CHANNEL, RunNotice

if TYPE_CHECKING:
    from threadkeeper.service.checkpointer import Batch

# LangGraph's (private) name of the input pseudo-task; part of the on-disk format.
INPUT_TASK = "__input__"

COLUMNS_SQL = """
run_id, thread_id, assistant_id, status, attempt, lease_holder, lease_expires_at,
input, kwargs, metadata, multitask_strategy, error, created_at, updated_at, started_at, ended_at,
cancel_action, checkpoint_id, failed_attempts
"""

# Runs of the thread that still own it: waiting to start, or running under a live lease.
ACTIVE_SQL = f"""
SELECT run_id FROM runs
WHERE thread_id = %s
  AND {busy_sql()}
ORDER BY created_at
"""


# A claimed row also says whose run it is: the executor scopes the graph's store by it.
OWNER_OF_RUN_SQL = "(SELECT owner FROM threads WHERE thread_id = run.thread_id) AS owner"


# Whether the owner (SQL naming it) may start one more run under ``%(cap)s`` (migration 3).
def _owner_has_room_sql(owner: str) -> str:
    return f"threadkeeper_owner_has_room({owner}, %(cap)s)"


def _queue_run_sql(owner: str, guard: str | None = None) -> str:
    """The run row (claimed when a replica is given and its owner is under the cap), the thread
    marked busy (and titled, if it has no title yet), and, for a run left pending, the wake-up
    for every replica's workers.

    ``owner``: SQL naming the thread's owner. ``guard``: CTEs ending in one named ``idle``; the
    run is queued only if it has a row.
    """
    claimed = (
        f"CASE WHEN %(replica)s::text IS NULL THEN false ELSE {_owner_has_room_sql(owner)} END"
    )
    return f"""
WITH {guard + "," if guard else ""} run AS (
    INSERT INTO runs (run_id, thread_id, assistant_id, status, input, kwargs, metadata,
                      multitask_strategy, idempotency_key, not_before,
                      attempt, lease_holder, lease_expires_at, started_at)
    SELECT %(run_id)s, %(thread_id)s, %(assistant_id)s,
           CASE WHEN claimed THEN 'running' ELSE 'pending' END,
           %(input)s, %(kwargs)s, %(metadata)s, %(strategy)s, %(key)s,
           now() + make_interval(secs => %(delay)s::float8),
           CASE WHEN claimed THEN 1 ELSE 0 END,
           %(replica)s,
           CASE WHEN claimed THEN now() + make_interval(secs => %(lease)s) END,
           CASE WHEN claimed THEN now() END
    FROM {"idle, " if guard else ""}(SELECT {claimed} AS claimed) AS c
    RETURNING {COLUMNS_SQL}
), thread AS (
    UPDATE threads SET status = 'busy', updated_at = now(), title = coalesce(title, %(title)s),
                       metadata = metadata || %(thread_metadata)s
    WHERE thread_id = (SELECT thread_id FROM run)
)
SELECT run.*, {OWNER_OF_RUN_SQL},
       CASE WHEN run.status = 'pending'
            THEN pg_notify(%(channel)s, '{RunNotice.NEW}:' || run.run_id)::text END AS notified
FROM run
"""


# Queue a run in one statement. With a replica given, the run is claimed by it on the spot
# (attempt 1, leased) if its owner has room: the caller holds the thread lock and found no
# unfinished run, which is everything else a claim checks.
INSERT_SQL = _queue_run_sql("(SELECT owner FROM threads WHERE thread_id = %(thread_id)s)")

# The common case of INSERT_SQL in one statement: the owner's thread is locked and has no
# unfinished run, so the new run heads it (and is claimed on the spot with a replica given).
# Returns no row when that is not so, or cannot be told, and the caller takes the long way.
# A plain read in the statement sees its snapshot, while FOR UPDATE returns the newest row
# version (after waiting for a holder of the lock): every writer that queues, claims or ends a
# run updates the thread row, so an unchanged xmin proves the snapshot's view of the thread's
# runs is still the truth, and the lock keeps it so until commit.
INSERT_IF_IDLE_SQL = _queue_run_sql(
    "%(owner)s",
    f"""locked AS (
    SELECT thread_id, xmin AS version FROM threads
    WHERE thread_id = %(thread_id)s AND owner = %(owner)s
    FOR UPDATE
), idle AS (
    SELECT locked.thread_id FROM locked
    WHERE locked.version = (SELECT xmin FROM threads WHERE thread_id = %(thread_id)s)
      AND NOT EXISTS (
          SELECT 1 FROM runs
          WHERE thread_id = %(thread_id)s AND {unfinished_sql()}
      )
)""",
)

# Oldest first; expired leases are candidates too, to be resumed by whoever claims them. A new
# run is left to the replica that received it for a moment (it claims right after inserting),
# so the request's replica executes it whenever it has room and streams need no hop. Runs of an
# owner who has ``cap`` runs executing wait, so other owners' runs are claimed first.
CANDIDATES_SQL = f"""
WITH full_owners AS (
    SELECT t.owner FROM runs r JOIN threads t USING (thread_id)
    WHERE %(cap)s > 0 AND {live_lease_sql("r")}
    GROUP BY t.owner
    HAVING count(*) >= %(cap)s
)
SELECT r.run_id, r.thread_id FROM runs r
WHERE ((r.status = 'pending' AND r.updated_at < now() - interval '250 milliseconds'
        AND (r.not_before IS NULL OR r.not_before <= now()))
       OR (r.status = 'running' AND r.lease_expires_at <= now()))
  AND NOT EXISTS (
      SELECT 1 FROM threads t JOIN full_owners USING (owner) WHERE t.thread_id = r.thread_id
  )
ORDER BY r.created_at
LIMIT %(limit)s
"""

LOCK_THREAD_SKIP_SQL = "SELECT 1 FROM threads WHERE thread_id = %s FOR UPDATE SKIP LOCKED"

# The attempts of a run that count toward THREADKEEPER_MAX_ATTEMPTS once it is claimed again (it
# heads its thread, so no live lease holds it): those counted before, and the attempt whose
# lease expired unless Postgres restarted since its last renewal. An attempt is counted when
# its replica died or stopped renewing while the database was up; one that ended because the
# database went away is not, nor one handed back (drain, database error: status 'pending').
FAILURES_SQL = """failed_attempts + CASE
    WHEN status = 'running' AND updated_at >= pg_postmaster_start_time() THEN 1 ELSE 0
END"""

# Under the thread lock: the run must be the oldest unfinished run of its thread and not held by
# a live lease (its own or another run's).
HEAD_OF_THREAD_SQL = f"""
SELECT {COLUMNS_SQL}, (lease_expires_at IS NOT NULL AND lease_expires_at > now()) AS leased,
       {FAILURES_SQL} AS failures, (not_before IS NULL OR not_before <= now()) AS due
FROM runs
WHERE thread_id = %s AND {unfinished_sql()}
ORDER BY created_at, run_id
"""

# No row when the run's owner has no room (see ``_owner_has_room_sql``).
CLAIM_SQL = f"""
WITH run AS (
    UPDATE runs SET status = 'running', attempt = attempt + 1, lease_holder = %(replica)s,
        lease_expires_at = now() + make_interval(secs => %(lease)s),
        started_at = coalesce(started_at, now()), updated_at = now(),
        failed_attempts = {FAILURES_SQL}
    WHERE run_id = %(run_id)s
      AND {_owner_has_room_sql("(SELECT owner FROM threads WHERE thread_id = runs.thread_id)")}
    RETURNING {COLUMNS_SQL}
), thread AS (
    UPDATE threads SET status = 'busy', updated_at = now()
    WHERE thread_id = (SELECT thread_id FROM run)
)
SELECT *, {OWNER_OF_RUN_SQL} FROM run
"""

HEARTBEAT_SQL = f"""
UPDATE runs SET lease_expires_at = now() + make_interval(secs => %s), updated_at = now()
WHERE run_id = %s AND attempt = %s AND {live_lease_sql()}
RETURNING cancel_action
"""

# The attempt's outcome, the thread's new status and the notification, in one statement (one
# round trip); nothing changes, and nobody is told, if the attempt no longer owns the run.
# The thread row is locked first, as everything else that locks a thread and its runs does
# (claims, deletes, cancels): a run row locked first would deadlock with them.
# "next" when a queued run of the thread may start now, so only then every replica's workers
# look for work; "done" wakes just those waiting for this run. The attempt's last events go in
# with it (events.ENDING_CTE), and their followers are told too.
THREAD_LOCK = "thread_lock"
THREAD_LOCK_CTE = f"""{THREAD_LOCK} AS (
    SELECT thread_id FROM threads WHERE thread_id = %(thread_id)s FOR UPDATE
)"""
FINISH_OWNED = (
    "WHERE run_id = %(run_id)s AND attempt = %(attempt)s AND status = 'running'"
    f" AND EXISTS (SELECT 1 FROM {THREAD_LOCK})"
)
FINISH_SQL = f"""
WITH {THREAD_LOCK_CTE}, done AS (
    UPDATE runs SET status = %(status)s, error = %(error)s, checkpoint_id = %(checkpoint_id)s,
        updated_at = now(), ended_at = now(), lease_expires_at = NULL
    {FINISH_OWNED}
    RETURNING {COLUMNS_SQL}
), thread AS (
    UPDATE threads SET status = %(thread_status)s, updated_at = now(),
        last_message_at = CASE WHEN %(spoke)s THEN now() ELSE last_message_at END
    WHERE thread_id = (SELECT thread_id FROM done)
), {ENDING_CTE}
SELECT done.*,
       pg_notify(%(events_channel)s, done.run_id::text)::text AS events_notified,
       pg_notify(
           %(channel)s,
           CASE WHEN EXISTS (
               SELECT 1 FROM runs AS queued
               WHERE queued.thread_id = done.thread_id AND queued.status = 'pending'
                 AND queued.run_id <> done.run_id
           ) THEN '{RunNotice.NEXT}:' ELSE '{RunNotice.DONE}:' END || done.run_id
       )::text AS notified
FROM done
"""

# FINISH_SQL behind a fenced batch of held rows (see ``finish_after_sql``). The run row is
# share-locked by the fence and updated by ``done``: unless ``done`` reads the fence, Postgres
# may update first, and the fence then finds no live run.
FINISH_FENCED_SQL = FINISH_SQL.replace(
    FINISH_OWNED, f"{FINISH_OWNED} AND EXISTS (SELECT 1 FROM fence)", 1
)

NAMED_PARAMETER = re.compile(r"%\((\w+)\)s")


@lru_cache(maxsize=64)
def finish_after_sql(ctes: str, fenced: bool) -> tuple[bytes, tuple[str, ...], tuple[str, ...]]:
    """The ending with other CTEs (a saver's held rows, see ``Batch``) right after its thread
    lock, so the run's last checkpoints commit with it. Those CTEs take positional parameters,
    and psycopg does not mix the two styles: the ending's names become positions, and the
    whole is numbered for a raw cursor (see ``db.numbered``). Returns the statement, the names
    of the parameters before the CTEs' (the lock's) and of those after them."""
    finish = (FINISH_FENCED_SQL if fenced else FINISH_SQL).lstrip()
    lock = f"WITH {THREAD_LOCK_CTE},"
    assert finish.startswith(lock)
    rest = finish[len(lock) :]
    body = f"{NAMED_PARAMETER.sub('%s', lock)}\n{ctes},{NAMED_PARAMETER.sub('%s', rest)}"
    return (
        numbered(body),
        tuple(NAMED_PARAMETER.findall(lock)),
        tuple(NAMED_PARAMETER.findall(rest)),
    )


# Ends a run that is not executing anywhere (queued, or its replica died).
END_IDLE_SQL = f"""
UPDATE runs SET status = %(status)s, error = %(error)s, updated_at = now(), ended_at = now(),
    lease_expires_at = NULL
WHERE run_id = %(run_id)s AND {unfinished_sql()}
RETURNING {COLUMNS_SQL}
"""

# Give an unfinished run back to the queue (graceful drain, a database error); its checkpoints
# stay. Whether the attempt counts toward THREADKEEPER_MAX_ATTEMPTS is the caller's to say.
HAND_BACK_SQL = """
UPDATE runs SET status = 'pending', lease_holder = NULL, lease_expires_at = NULL,
    updated_at = now(), failed_attempts = failed_attempts + %s
WHERE run_id = %s AND attempt = %s AND status = 'running'
RETURNING run_id
"""

FINISH_THREAD_SQL = """
UPDATE threads SET status = %(status)s, updated_at = now(),
    last_message_at = CASE WHEN %(spoke)s THEN now() ELSE last_message_at END
WHERE thread_id = %(thread_id)s
"""

REQUEST_CANCEL_SQL = f"""
UPDATE runs SET cancel_action = %(action)s, updated_at = now()
WHERE run_id = ANY(%(run_ids)s) AND {unfinished_sql()}
RETURNING {COLUMNS_SQL}
"""

GET_SQL = f"""
SELECT {COLUMNS_SQL} FROM runs r
WHERE r.run_id = %s AND r.thread_id = %s
  AND EXISTS (SELECT 1 FROM threads t WHERE t.thread_id = r.thread_id AND t.owner = %s)
"""

GET_BY_ID_SQL = f"SELECT {COLUMNS_SQL} FROM runs WHERE run_id = %s"

BY_IDEMPOTENCY_KEY_SQL = f"""
SELECT {COLUMNS_SQL} FROM runs WHERE thread_id = %s AND idempotency_key = %s
"""

LIST_SQL = f"""
SELECT {COLUMNS_SQL} FROM runs r
WHERE r.thread_id = %s AND (%s::text IS NULL OR r.status = %s)
ORDER BY r.created_at DESC, r.run_id DESC
LIMIT %s OFFSET %s
"""

OWNED_ACTIVE_SQL = """
SELECT r.run_id, r.thread_id FROM runs r JOIN threads t USING (thread_id)
WHERE t.owner = %(owner)s AND r.status = ANY(%(statuses)s)
  AND (%(thread_id)s::uuid IS NULL OR r.thread_id = %(thread_id)s)
  AND (%(run_ids)s::uuid[] IS NULL OR r.run_id = ANY(%(run_ids)s))
"""

DELETE_SQL = "DELETE FROM runs WHERE run_id = %s"
DELETE_FINISHED_SQL = f"{DELETE_SQL} AND NOT {unfinished_sql()} RETURNING run_id"

HAS_STARTED_SQL = """
SELECT 1 FROM checkpoints
WHERE thread_id = %s AND checkpoint_ns = '' AND metadata @> %s
LIMIT 1
"""

RUN_CHECKPOINTS_SQL = """
SELECT checkpoint_ns, checkpoint_id FROM checkpoints
WHERE thread_id = %(thread)s AND metadata @> %(tag)s
"""

# A run's own checkpoints and their writes, plus the input a DeltaChannel stores on the
# checkpoint the run started from (task id uuid5(input checkpoint id, "__input__")).
ROLLBACK_CHECKPOINTS_SQL = (
    """
    DELETE FROM checkpoint_writes
    WHERE thread_id = %(thread)s
      AND (checkpoint_id = ANY(%(ids)s) OR task_id = ANY(%(input_tasks)s))
    """,
    "DELETE FROM checkpoints WHERE thread_id = %(thread)s AND checkpoint_id = ANY(%(ids)s)",
)


async def notify(conn: AsyncConnection[DictRow], what: RunNotice, run_id: UUID) -> None:
    """Tell every replica about the run; delivered when the transaction commits."""
    await conn.execute(NOTIFY_SQL, (RUNS_CHANNEL, f"{what}:{run_id}"))


async def active_run_ids(conn: AsyncConnection[DictRow], thread_id: UUID) -> list[UUID]:
    """The thread's runs that keep it busy, oldest first."""
    cur = await conn.execute(ACTIVE_SQL, (thread_id,))
    return [row["run_id"] for row in await cur.fetchall()]


@dataclass(frozen=True)
class Run:
    """A run row (``COLUMNS_SQL``), as an executing attempt holds it."""

    run_id: UUID
    thread_id: UUID
    assistant_id: str
    status: RunStatus
    attempt: int
    lease_holder: str | None
    lease_expires_at: datetime | None
    input: Any
    kwargs: dict[str, Any]
    metadata: dict[str, Any] | None
    multitask_strategy: MultitaskStrategy
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    cancel_action: CancelAction | None
    checkpoint_id: str | None
    failed_attempts: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Self:
        """The record of a row with the record's columns (others, such as ``notified``, are
        left)."""
        values = {f.name: row[f.name] for f in fields(cls) if f.name in row or f.default is MISSING}
        values["status"] = RunStatus(row["status"])
        values["multitask_strategy"] = MultitaskStrategy(row["multitask_strategy"])
        action = row["cancel_action"]
        values["cancel_action"] = None if action is None else CancelAction(action)
        return cls(**values)


@dataclass(frozen=True)
class QueuedRun(Run):
    """A run as queueing or claiming it returns it: with its thread's owner (the executor
    scopes the graph's store by it) and, for a queued run left pending, the workers' wake-up."""

    owner: str | None
    notified: str | None = None


@dataclass(frozen=True)
class UnfinishedRun(Run):
    """A run that has not ended, as its thread's queue sees it (``HEAD_OF_THREAD_SQL``)."""

    leased: bool  # it executes under a live lease
    failures: int  # attempts that count toward THREADKEEPER_MAX_ATTEMPTS
    due: bool  # its after_seconds have passed


R = TypeVar("R", bound=Run)


def _maybe(record: type[R], row: Mapping[str, Any] | None) -> R | None:
    return None if row is None else record.of(row)


class RunRef(NamedTuple):
    """Which run of which thread (a run found to claim or to cancel)."""

    run_id: UUID
    thread_id: UUID


class ClaimTerms(NamedTuple):
    """How a replica claims a run: its name, the lease it takes, the per-owner cap (0: none)."""

    replica: str
    lease_seconds: float
    owner_cap: int = 0


@dataclass(frozen=True)
class NewRun:
    """What queueing a run writes: the run row's contents and the thread's title, if new."""

    run_id: UUID
    thread_id: UUID
    assistant_id: str
    input: Any
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    strategy: MultitaskStrategy
    idempotency_key: str | None = None
    title: str | None = None
    # after_seconds: no replica claims the run before then.
    delay_seconds: float | None = None

    def thread_metadata(self) -> dict[str, Any]:
        """What the thread's metadata records of its latest run, as the Agent Server's does:
        the graph (which its state is read with) and the assistant."""
        configurable = (self.kwargs.get("config") or {}).get("configurable") or {}
        return {k: configurable[k] for k in ("graph_id", "assistant_id") if k in configurable}

    def params(self, claim_for: ClaimTerms | None) -> dict[str, Any]:
        terms = claim_for or ClaimTerms("", 0.0)
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "assistant_id": self.assistant_id,
            "input": Jsonb(self.input),
            "kwargs": Jsonb(self.kwargs),
            "metadata": Jsonb(self.metadata),
            "thread_metadata": Jsonb(self.thread_metadata()),
            "strategy": self.strategy,
            "key": self.idempotency_key,
            "title": self.title,
            "delay": self.delay_seconds,
            "replica": terms.replica if claim_for is not None else None,
            "lease": terms.lease_seconds,
            "cap": terms.owner_cap,
            "channel": RUNS_CHANNEL,
        }


async def insert(
    conn: AsyncConnection[DictRow], new: NewRun, claim_for: ClaimTerms | None = None
) -> QueuedRun:
    """Queue a run (caller holds the thread lock); with ``claim_for``, claimed on those terms
    if its owner has room (status ``running``), else left ``pending``."""
    cur = await conn.execute(INSERT_SQL, new.params(claim_for))
    row = await cur.fetchone()
    assert row is not None
    return QueuedRun.of(row)


async def insert_if_idle(
    conn: AsyncConnection[DictRow],
    new: NewRun,
    owner: str,
    claim_for: ClaimTerms | None = None,
) -> QueuedRun | None:
    """Queue a run in one statement if it heads its owner's thread; None: take the long way."""
    cur = await conn.execute(INSERT_IF_IDLE_SQL, {**new.params(claim_for), "owner": owner})
    return _maybe(QueuedRun, await cur.fetchone())


async def by_idempotency_key(
    conn: AsyncConnection[DictRow], thread_id: UUID, key: str
) -> Run | None:
    cur = await conn.execute(BY_IDEMPOTENCY_KEY_SQL, (thread_id, key))
    return _maybe(Run, await cur.fetchone())


async def candidates(
    conn: AsyncConnection[DictRow], limit: int, owner_cap: int = 0
) -> list[RunRef]:
    """Runs to claim, oldest first, leaving out those of owners with ``owner_cap`` executing."""
    cur = await conn.execute(CANDIDATES_SQL, {"limit": limit, "cap": owner_cap})
    return [RunRef(row["run_id"], row["thread_id"]) for row in await cur.fetchall()]


async def lock_thread_or_skip(conn: AsyncConnection[DictRow], thread_id: UUID) -> bool:
    cur = await conn.execute(LOCK_THREAD_SKIP_SQL, (thread_id,))
    return await cur.fetchone() is not None


async def unfinished(conn: AsyncConnection[DictRow], thread_id: UUID) -> list[UnfinishedRun]:
    """The thread's unfinished runs, oldest first (caller holds the thread lock)."""
    cur = await conn.execute(HEAD_OF_THREAD_SQL, (thread_id,))
    return [UnfinishedRun.of(row) for row in await cur.fetchall()]


async def head_of_thread(conn: AsyncConnection[DictRow], thread_id: UUID) -> UnfinishedRun | None:
    """The run that may execute next on the thread (caller holds the thread lock)."""
    rows = await unfinished(conn, thread_id)
    if any(r.status == RunStatus.RUNNING and r.leased for r in rows):
        return None
    return rows[0] if rows else None


async def claim(
    conn: AsyncConnection[DictRow],
    run_id: UUID,
    replica: str,
    lease_seconds: float,
    owner_cap: int = 0,
) -> QueuedRun | None:
    """Claim the run (caller holds its thread lock, and found it heads the thread); None when
    its owner already has ``owner_cap`` runs executing."""
    cur = await conn.execute(
        CLAIM_SQL,
        {"run_id": run_id, "replica": replica, "lease": lease_seconds, "cap": owner_cap},
    )
    return _maybe(QueuedRun, await cur.fetchone())


async def heartbeat(
    conn: AsyncConnection[DictRow], run_id: UUID, attempt: int, lease_seconds: float
) -> tuple[bool, CancelAction | None]:
    """Renew the lease. Returns (still ours, requested cancel action)."""
    cur = await conn.execute(HEARTBEAT_SQL, (lease_seconds, run_id, attempt))
    row = await cur.fetchone()
    if row is None:
        return False, None
    action = row["cancel_action"]
    return True, None if action is None else CancelAction(action)


async def finish(
    conn: AsyncConnection[DictRow],
    *,
    run_id: UUID,
    thread_id: UUID,
    attempt: int,
    status: RunStatus,
    thread_status: ThreadStatus,
    error: dict[str, Any] | None = None,
    checkpoint_id: str | None = None,
    spoke: bool = True,
    events: str = "[]",
    before: Batch | None = None,
) -> Run | None:
    """Record the outcome of an attempt, its last ``events`` (a JSON list, see
    ``EventWriter.hand_over``) and the thread's new status, atomically; with ``before`` (a
    saver's held rows), in the same statement as those.

    None when the attempt no longer owned the run (nothing is changed then).
    """
    params = {
        "status": status,
        "error": Jsonb(error) if error else None,
        "checkpoint_id": checkpoint_id,
        "run_id": run_id,
        "thread_id": thread_id,
        "attempt": attempt,
        "thread_status": thread_status,
        "spoke": spoke,
        "channel": RUNS_CHANNEL,
        "events": events,
        "events_channel": EVENTS_CHANNEL,
    }
    if before is None:
        cur = await conn.execute(FINISH_SQL, params)
    else:
        query, first, rest = finish_after_sql(before.ctes_after(THREAD_LOCK), before.fenced)
        cur = AsyncRawCursor(conn, row_factory=dict_row)
        await cur.execute(
            query,
            [
                *(params[name] for name in first),
                *before.params,
                *(params[name] for name in rest),
            ],
        )
    return _maybe(Run, await cur.fetchone())


async def end_idle(
    conn: AsyncConnection[DictRow],
    run_id: UUID,
    *,
    status: RunStatus,
    error: dict[str, Any] | None,
    thread_status: ThreadStatus,
) -> Run | None:
    """End a run no replica executes (caller holds the thread lock)."""
    cur = await conn.execute(
        END_IDLE_SQL,
        {"run_id": run_id, "status": status, "error": Jsonb(error) if error else None},
    )
    run = _maybe(Run, await cur.fetchone())
    if run is not None:
        await conn.execute(
            FINISH_THREAD_SQL,
            {"status": thread_status, "spoke": False, "thread_id": run.thread_id},
        )
        # A run behind it may start now (rare path: always wake the workers).
        await notify(conn, RunNotice.NEXT, run_id)
    return run


async def hand_back(
    conn: AsyncConnection[DictRow], run_id: UUID, attempt: int, *, counted: bool = False
) -> bool:
    """Give the attempt's run back to the queue; ``counted``: the attempt counts toward
    THREADKEEPER_MAX_ATTEMPTS. False when the attempt no longer owned it."""
    async with conn.transaction():
        cur = await conn.execute(HAND_BACK_SQL, (int(counted), run_id, attempt))
        handed = await cur.fetchone() is not None
        if handed:
            await notify(conn, RunNotice.NEW, run_id)
        return handed


async def request_cancel(
    conn: AsyncConnection[DictRow], run_ids: list[UUID], action: CancelAction
) -> list[Run]:
    cur = await conn.execute(REQUEST_CANCEL_SQL, {"run_ids": run_ids, "action": action})
    told = [Run.of(row) for row in await cur.fetchall()]
    for run in told:
        await notify(conn, RunNotice.CANCEL, run.run_id)
    return told


async def get(
    conn: AsyncConnection[DictRow], thread_id: UUID, run_id: UUID, owner: str
) -> Run | None:
    cur = await conn.execute(GET_SQL, (run_id, thread_id, owner))
    return _maybe(Run, await cur.fetchone())


async def get_by_id(conn: AsyncConnection[DictRow], run_id: UUID) -> Run | None:
    cur = await conn.execute(GET_BY_ID_SQL, (run_id,))
    return _maybe(Run, await cur.fetchone())


async def list_for_thread(
    conn: AsyncConnection[DictRow],
    thread_id: UUID,
    *,
    status: RunStatus | None,
    limit: int,
    offset: int,
) -> list[Run]:
    cur = await conn.execute(LIST_SQL, (thread_id, status, status, limit, offset))
    return [Run.of(row) for row in await cur.fetchall()]


async def owned_active(
    conn: AsyncConnection[DictRow],
    owner: str,
    *,
    statuses: list[RunStatus],
    thread_id: UUID | None = None,
    run_ids: list[UUID] | None = None,
) -> list[RunRef]:
    cur = await conn.execute(
        OWNED_ACTIVE_SQL,
        {"owner": owner, "statuses": statuses, "thread_id": thread_id, "run_ids": run_ids},
    )
    return [RunRef(row["run_id"], row["thread_id"]) for row in await cur.fetchall()]


async def delete_finished(conn: AsyncConnection[DictRow], run_id: UUID) -> bool:
    cur = await conn.execute(DELETE_FINISHED_SQL, (run_id,))
    return await cur.fetchone() is not None


async def delete(conn: AsyncConnection[DictRow], run_id: UUID) -> None:
    """Remove the run row whatever its status (a rolled-back run; caller holds the thread lock)."""
    await conn.execute(DELETE_SQL, (run_id,))


async def has_started(conn: AsyncConnection[DictRow], thread_id: UUID, run_id: UUID) -> bool:
    """Whether an earlier attempt already wrote the run's input into a checkpoint."""
    cur = await conn.execute(HAS_STARTED_SQL, (str(thread_id), Jsonb({"run_id": str(run_id)})))
    return await cur.fetchone() is not None


async def rollback_checkpoints(
    conn: AsyncConnection[DictRow], thread_id: UUID, run_id: UUID
) -> None:
    """Remove every checkpoint the run wrote (and their writes); blobs stay for the reaper."""
    tag = {"thread": str(thread_id), "tag": Jsonb({"run_id": str(run_id)})}
    cur = await conn.execute(RUN_CHECKPOINTS_SQL, tag)
    ids = [row["checkpoint_id"] for row in await cur.fetchall()]
    params = {
        "thread": str(thread_id),
        "ids": ids,
        "input_tasks": [str(uuid5(UUID(cid), INPUT_TASK)) for cid in ids],
    }
    for statement in ROLLBACK_CHECKPOINTS_SQL:
        await conn.execute(statement, params)
