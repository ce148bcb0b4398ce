"""Executing one run attempt: claim under the thread lock, run the graph, keep the lease.

At most one run of a thread executes at a time across replicas: claiming takes the thread's
row lock and refuses while another run holds a live lease. While the graph runs, a keeper task
renews the lease; if renewal fails, the attempt is cancelled, and its fenced checkpoint writes
would be refused anyway.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from psycopg.rows import DictRow

from service import runs, threads
from service.checkpointer import Fence, FencedPostgresSaver, LeaseLostError
from service.db import Pool
from service.metrics import Metrics
from service.problems import Problem, not_found
from service.schemas import RunCreate

log = structlog.get_logger(__name__)

BUSY_DETAIL = (
    "Thread is already running a task. Wait for it to finish or choose a different "
    "multitask strategy."
)
RESERVED_CONFIGURABLE = {"thread_id", "checkpoint_ns", "checkpoint_map", "run_id"}
MAX_RECURSION_LIMIT = 200


@dataclass(frozen=True)
class RunOutcome:
    status: str
    values: Any
    error: dict[str, Any] | None = None


def first_user_text(graph_input: Any) -> str | None:
    """Text of the first user message in an Agent Server style input, if any."""
    if not isinstance(graph_input, dict):
        return None
    messages = graph_input.get("messages")
    if isinstance(messages, dict | str):
        messages = [messages]
    for message in messages or []:
        role, content = None, None
        if isinstance(message, dict):
            role = message.get("role") or message.get("type")
            content = message.get("content")
        elif isinstance(message, list | tuple) and len(message) == 2:
            role, content = message
        elif isinstance(message, str):
            role, content = "user", message
        if role in ("user", "human"):
            if isinstance(content, list):
                content = " ".join(b.get("text", "") for b in content if isinstance(b, dict))
            if isinstance(content, str) and content.strip():
                return content
    return None


def thread_config(thread_id: UUID, checkpoint_id: str | None = None) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": str(thread_id), "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


class Executor:
    def __init__(
        self,
        *,
        pool: Pool,
        graph: CompiledStateGraph[Any],
        metrics: Metrics,
        replica: str,
        lease_seconds: float,
    ) -> None:
        self.pool = pool
        self.graph = graph
        self.metrics = metrics
        self.replica = replica
        self.lease_seconds = lease_seconds
        # Reads and lock-protected state updates need no fence.
        self.reader: CompiledStateGraph[Any] = graph.copy(
            update={"checkpointer": FencedPostgresSaver(pool)}
        )
        self._tasks: set[asyncio.Task[RunOutcome]] = set()

    async def claim(self, owner: str, thread_id: UUID, body: RunCreate) -> DictRow:
        """Create the run already leased to this replica, or refuse (404, 409, 422)."""
        strategy = body.multitask_strategy or "reject"
        if strategy != "reject":
            raise Problem(
                422, f"multitask_strategy {strategy!r} is not supported yet; use 'reject'"
            )
        async with self.pool.connection() as conn, conn.transaction():
            if not await threads.lock(conn, thread_id, owner):
                if body.if_not_exists != "create" or await threads.exists_for_anyone(
                    conn, thread_id
                ):
                    raise not_found("Thread", thread_id)
                await threads.insert(conn, thread_id=thread_id, owner=owner, metadata={})
                if not await threads.lock(conn, thread_id, owner):
                    raise not_found("Thread", thread_id)
            await runs.expire_stale(conn, thread_id)
            if await runs.active_run_ids(conn, thread_id):
                raise Problem(409, BUSY_DETAIL, kind="thread-busy")
            text = first_user_text(body.input)
            title = threads.derive_title(text) if text else None
            if title:
                await threads.set_title_if_empty(conn, thread_id, title)
            kwargs = body.model_dump(
                exclude={"input", "metadata", "assistant_id"}, exclude_none=True, mode="json"
            )
            return await runs.insert_running(
                conn,
                run_id=uuid.uuid4(),
                thread_id=thread_id,
                assistant_id=body.assistant_id,
                replica=self.replica,
                lease_seconds=self.lease_seconds,
                input=body.input,
                kwargs=kwargs,
                metadata=body.metadata,
                strategy=strategy,
            )

    def spawn(self, run: DictRow) -> asyncio.Task[RunOutcome]:
        """Execute ``run`` detached from the request, so a client hanging up cancels nothing."""
        task = asyncio.create_task(self._execute(run), name=f"run-{run['run_id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self, grace_seconds: float) -> None:
        """Let in-flight attempts finish within the grace period, then cancel the rest.

        A cancelled attempt keeps its checkpoints; its lease simply expires.
        """
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks), timeout=grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _config(self, run: DictRow) -> RunnableConfig:
        kwargs = run["kwargs"]
        user = kwargs.get("config") or {}
        configurable = {
            k: v
            for k, v in (user.get("configurable") or {}).items()
            if k not in RESERVED_CONFIGURABLE
        }
        configurable.update(
            thread_config(run["thread_id"], kwargs.get("checkpoint_id"))["configurable"]
        )
        if isinstance(kwargs.get("checkpoint"), dict) and kwargs["checkpoint"].get("checkpoint_id"):
            configurable["checkpoint_id"] = kwargs["checkpoint"]["checkpoint_id"]
        return {
            "configurable": configurable,
            "metadata": {
                **(run["metadata"] or {}),
                "run_id": str(run["run_id"]),
                "assistant_id": run["assistant_id"],
                "graph_id": self.graph.name,
            },
            "recursion_limit": min(int(user.get("recursion_limit", 25)), MAX_RECURSION_LIMIT),
            "tags": list(user.get("tags") or []),
        }

    @staticmethod
    def _input(run: DictRow) -> Any:
        command = run["kwargs"].get("command")
        if command:
            return Command(
                resume=command.get("resume"),
                update=command.get("update"),
                goto=command.get("goto") or (),
            )
        return run["input"]

    async def _execute(self, run: DictRow) -> RunOutcome:
        run_id: UUID = run["run_id"]
        attempt: int = run["attempt"]
        thread_id: UUID = run["thread_id"]
        with structlog.contextvars.bound_contextvars(run_id=str(run_id), thread_id=str(thread_id)):
            started = time.monotonic()
            outcome = await self._attempt(run)
            self.metrics.runs.labels(outcome=outcome.status).inc()
            self.metrics.run_seconds.observe(time.monotonic() - started)
            log.info("run_finished", status=outcome.status, attempt=attempt, error=outcome.error)
            return outcome

    async def _attempt(self, run: DictRow) -> RunOutcome:
        run_id, attempt, thread_id = run["run_id"], run["attempt"], run["thread_id"]
        saver = FencedPostgresSaver(self.pool, Fence(run_id, attempt))
        graph = self.graph.copy(update={"checkpointer": saver})
        kwargs = run["kwargs"]
        config = self._config(run)
        work = asyncio.create_task(
            graph.ainvoke(
                self._input(run),
                config,
                durability="sync",
                interrupt_before=kwargs.get("interrupt_before"),
                interrupt_after=kwargs.get("interrupt_after"),
            )
        )
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(run_id, attempt, work, lost))
        try:
            values = await work
        except (LeaseLostError, asyncio.CancelledError) as exc:
            if lost.is_set() or isinstance(exc, LeaseLostError):
                return RunOutcome(
                    "error", None, {"error": "LeaseLost", "message": "this replica lost the run"}
                )
            raise
        except Exception as exc:
            error = {"error": type(exc).__name__, "message": str(exc)}
            log.warning("run_failed", exc_info=exc)
            await self._finish(run, "error", "error", error)
            return RunOutcome("error", None, error)
        finally:
            keeper.cancel()
        snapshot = await self.reader.aget_state(thread_config(thread_id))
        status = "interrupted" if snapshot.next else "success"
        await self._finish(run, status, "interrupted" if snapshot.next else "idle", None)
        return RunOutcome(status, values)

    async def _finish(
        self, run: DictRow, status: str, thread_status: str, error: dict[str, Any] | None
    ) -> None:
        async with self.pool.connection() as conn:
            row = await runs.finish(
                conn,
                run_id=run["run_id"],
                attempt=run["attempt"],
                thread_id=run["thread_id"],
                status=status,
                thread_status=thread_status,
                error=error,
            )
        if row is None:
            log.warning("run_finish_lost", status=status)

    async def _keep_lease(
        self, run_id: UUID, attempt: int, work: asyncio.Task[Any], lost: asyncio.Event
    ) -> None:
        interval = self.lease_seconds / 3
        while not work.done():
            await asyncio.sleep(interval)
            try:
                async with self.pool.connection() as conn:
                    alive = await runs.heartbeat(conn, run_id, attempt, self.lease_seconds)
            except (psycopg.Error, TimeoutError) as exc:
                # The fence refuses writes once the lease is gone; keep trying until then.
                log.warning("lease_renewal_failed", error=str(exc))
                continue
            if not alive:
                log.warning("lease_lost")
                lost.set()
                work.cancel()
                return
