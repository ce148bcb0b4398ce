"""Chaos: replicas killed, drained and restarted, and Postgres restarted, under conversations.

3 replicas with a 3 s lease; 30 conversations of 8 turns each talk at once, every turn with an
``Idempotency-Key`` through ``/runs/wait``, ``/runs`` + ``/join`` or ``/runs/stream`` (rejoined
where it is cut). Meanwhile a replica is SIGKILLed and restarted every few seconds, one is
drained (SIGTERM) twice, and Postgres restarts once, down for longer than a lease. Afterwards
every acknowledged message is in its thread exactly once and in order, every reply matched its
thread, no thread is stuck, no 200 carried an empty body or an error its run did not end with,
and the only 5xx were 503 + Retry-After while Postgres was down.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.chaos import Client, Conversation, Fleet, Score, settled
from tests.support.postgres import RestartableServer
from tests.support.processes import ServiceProcess

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

CONVERSATIONS = 30
TURNS = 8
ENV = {
    "THREADKEEPER_LEASE_SECONDS": "3",
    # Shorter than a slow turn: a drain hands runs back, and its waiting clients must not see it.
    "THREADKEEPER_DRAIN_SECONDS": "0.5",
    "THREADKEEPER_POOL_TIMEOUT": "2",
    "THREADKEEPER_LOG_LEVEL": "info",
    # The retry budget is for poison runs (tests/service/test_executor_failures.py). Here the
    # random victims can land on one run's replica three times in a row (its resumption is
    # killed again), which the default budget rightly ends with "gave up"; this test is about
    # losing nothing when attempts may go on, so no run can use this budget up.
    "THREADKEEPER_MAX_ATTEMPTS": "50",
}
STEP_SECONDS = 3.0  # one chaos event every this many seconds (after the previous one)
DRAIN_STEPS = (2, 5)  # the steps that drain a replica instead of killing one
POSTGRES_STEP = 3  # the step that restarts Postgres
LAST_STEP = max(*DRAIN_STEPS, POSTGRES_STEP)
POSTGRES_DOWN_SECONDS = 5.0  # longer than a lease
# 503s are expected from Postgres going down until every replica has its pool back.
RECOVERY_SECONDS = 10.0
SETTLE_SECONDS = 60.0


@dataclass
class Chaos:
    """Kills, drains and a Postgres restart, one every STEP_SECONDS, until told to stop. A
    replica is started again at once, without waiting for it to be ready (the next event may
    hit it while it starts, as long as another replica is ready); one that exited by itself (it
    started while Postgres was down) is started again at the next step."""

    fleet: Fleet
    db: RestartableServer
    outage: list[float] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failure: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def note(self, what: str) -> None:
        self.done.append(f"{what} at {time.monotonic() - self.fleet.started:.0f}s")

    def run(self) -> None:
        step = 0
        try:
            # Until the conversations are over, and at least until every scheduled event.
            while not self.stop.wait(STEP_SECONDS) or step < LAST_STEP:
                step += 1
                self._revive()
                victim = random.choice(self.fleet.replicas)
                if step != POSTGRES_STEP and not self._others_ready(victim):
                    # On a starved machine replicas restart slower than STEP_SECONDS; killing
                    # the last ready one would leave the fleet down for good, which no deploy
                    # does (the chart's PodDisruptionBudget), so that step waits.
                    step -= 1
                    self.note(f"spared {victim.name}")
                    continue
                if step == POSTGRES_STEP:
                    self._restart_postgres()
                elif step in DRAIN_STEPS:
                    victim.terminate(timeout=30)
                    victim.start(migrate=False, wait=False)
                    self.note(f"drained {victim.name}")
                else:
                    victim.kill()
                    victim.start(migrate=False, wait=False)
                    self.note(f"killed {victim.name}")
            self._revive()
            for replica in self.fleet.replicas:
                replica.wait_ready()
        except BaseException as exc:  # surfaced by the test
            self.failure.append(exc)

    def _others_ready(self, victim: ServiceProcess) -> bool:
        for replica in self.fleet.replicas:
            if replica is victim:
                continue
            try:
                if httpx.get(f"{replica.url}/readyz", timeout=1).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
        return False

    def _revive(self) -> None:
        for replica in self.fleet.replicas:
            if replica.proc is None or replica.proc.poll() is not None:
                replica.start(migrate=False, wait=False)
                self.note(f"revived {replica.name}")

    def _restart_postgres(self) -> None:
        self.outage.append(time.monotonic())
        self.db.stop()
        time.sleep(POSTGRES_DOWN_SECONDS)  # the outage itself
        self.db.start()
        self.outage.append(time.monotonic())
        self.note("restarted postgres")

    def in_outage(self, at: float) -> bool:
        return len(self.outage) == 2 and self.outage[0] <= at <= self.outage[1] + RECOVERY_SECONDS


@pytest.fixture
def database(tmp_path: Path) -> Any:
    db = RestartableServer()
    try:
        yield db
    finally:
        db.cleanup()


def test_chaos_loses_duplicates_and_misanswers_nothing(
    database: RestartableServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    replicas = [ServiceProcess(database.url, tmp_path, name, **ENV) for name in "abc"]
    try:
        replicas[0].start()
        for replica in replicas[1:]:
            replica.start(migrate=False)
        fleet = Fleet(replicas)
        score = Score()
        conversations = [
            Conversation(i, httpx.post(f"{fleet.url()}/threads", json={}).json()["thread_id"])
            for i in range(CONVERSATIONS)
        ]
        chaos = Chaos(fleet, database)
        chaos_thread = threading.Thread(target=chaos.run)
        chaos_thread.start()
        try:
            _talk(fleet, score, conversations)
        finally:
            chaos.note("conversations over")
            chaos.stop.set()
            chaos_thread.join()
        assert not chaos.failure, chaos.failure
        figures, problems = _verdict(fleet, score, conversations, chaos)
        figures.update(_from_logs(replicas))
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        with capsys.disabled():
            reporter.write_line(f"\nchaos: {', '.join(chaos.done)}\nchaos figures: {figures}")
        assert problems == {}, (figures, problems)
    finally:
        for replica in replicas:
            replica.kill()


def _talk(fleet: Fleet, score: Score, conversations: list[Conversation]) -> None:
    def converse(convo: Conversation) -> None:
        client = Client(fleet, score)
        try:
            client.converse(convo, TURNS)
        finally:
            client.close()

    with ThreadPoolExecutor(len(conversations)) as pool:
        for future in [pool.submit(converse, c) for c in conversations]:
            future.result()


def _verdict(
    fleet: Fleet, score: Score, conversations: list[Conversation], chaos: Chaos
) -> tuple[dict[str, int], dict[str, Any]]:
    """The figures, and every problem found (by kind)."""
    base = fleet.replicas[0].url
    deadline = time.monotonic() + SETTLE_SECONDS
    lost: list[str] = []
    duplicated: list[str] = []
    out_of_order: list[str] = []
    stuck: list[str] = []
    replies: list[str] = []
    final: dict[str, dict[str, Any]] = {}
    # Per thread, what a failed assertion needs to be understood: its runs and messages.
    seen: dict[str, Any] = {}
    for convo in conversations:
        runs = settled(base, convo.thread_id, deadline)
        final.update({r["run_id"]: r for r in runs})
        if any(r["status"] in ("pending", "running") for r in runs):
            stuck.append(convo.thread_id)
        state = httpx.get(f"{base}/threads/{convo.thread_id}/state", timeout=30).json()
        messages = state["values"].get("messages", []) if state["values"] else []
        humans = [m["content"] for m in messages if m["type"] == "human"]
        counts = Counter(humans)
        lost += [t for t in convo.acknowledged if counts[t] == 0]
        duplicated += [t for t, n in counts.items() if n > 1]
        if [t for t in humans if t in convo.acknowledged] != convo.acknowledged:
            out_of_order.append(convo.thread_id)
        seen[convo.thread_id] = {
            "runs": [(r["status"], r.get("attempt"), r.get("error")) for r in runs],
            "messages": [
                (m["type"], str(m["content"])[:40], bool(m.get("tool_calls"))) for m in messages
            ],
        }
        answers = [m["content"] for m in messages if m["type"] == "ai" and not m.get("tool_calls")]
        replies += [
            f"{convo.thread_id} reply {n}"
            for n, answer in enumerate(answers, start=1)
            if f"Turn {n}." not in answer
        ]
    # An error told in a 200 is a wrong answer unless its run really ended with that error.
    told_wrongly = [
        (path, error)
        for path, run_path, error in score.errors_told
        if not _ended_with(final, run_path, error)
    ]
    unexpected_5xx = [
        e
        for e in score.server_errors
        if not (e.status == 503 and e.retry_after and chaos.in_outage(e.at))
    ]
    figures = {
        "turns tried": score.tried,
        "acknowledged": score.acknowledged,
        "lost": len(lost),
        "duplicated": len(duplicated),
        "wrong answers": len(score.wrong_answers) + len(told_wrongly) + len(replies),
        "5xx": len(score.server_errors),
        "unexpected 5xx": len(unexpected_5xx),
        "stream rejoins": score.stream_rejoins,
        **{f"rejoins {cause.value}": n for cause, n in score.rejoin_causes.items()},
        "stuck threads": len(stuck),
    }
    problems = {
        name: items
        for name, items in {
            "failed turns": score.failed_turns,
            "lost": lost,
            "duplicated": duplicated,
            "out of order": out_of_order,
            "stuck": stuck,
            "wrong replies": score.wrong_answers,
            "errors the run did not end with": told_wrongly,
            "replies in the thread": replies,
            "unexpected 5xx": unexpected_5xx,
            "streams ended without end": score.ended_early,
        }.items()
        if items
    }
    troubled = {
        thread_id
        for items in problems.values()
        for item in items
        for thread_id in seen
        if isinstance(item, str) and item.startswith(thread_id)
    }
    if troubled:
        problems["threads"] = {t: seen[t] for t in sorted(troubled)}
    return figures, problems


# What the replicas did about it, from their logs (all of their lives).
LOGGED = {
    "runs resumed": '"run_resuming"',
    "runs handed back": '"run_handed_back"',
    "attempts lost to the database": '"run_attempt_lost"',
}


def _from_logs(replicas: list[ServiceProcess]) -> dict[str, int]:
    logs = [replica.logs() for replica in replicas]
    return {name: sum(log.count(marker) for log in logs) for name, marker in LOGGED.items()}


def _ended_with(final: dict[str, dict[str, Any]], run_path: str | None, told: Any) -> bool:
    run = final.get((run_path or "").rsplit("/", 1)[-1])
    if run is None or run["status"] != "error":
        return False
    error = told.get("__error__", told) if isinstance(told, dict) else told
    return bool(run["error"] == error)
