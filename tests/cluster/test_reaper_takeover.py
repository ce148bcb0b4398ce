"""The chart's reaper killed mid-prune, and two reaper pods at once, on the one-node cluster.

One `helm install` of the chart (the image built from the Dockerfile, a database Secret for
`bridge_postgres`; the chart's own RetentionPolicy off, so only the test's policies prune) and
threads seeded straight into the database: thousands of idle ones, so that one prune run
deletes thread after thread (each in its own transaction) for seconds, and a few active ones
that no policy may touch. The tests share the release and run in file order.
Run with `pytest -m node tests/cluster/test_reaper_takeover.py` (root).
"""

from __future__ import annotations

import json
import selectors
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from tests.cluster.image import ImageRef
from tests.cluster.node import NodeCluster
from tests.cluster.pgbridge import BridgePostgres
from tests.cluster.pods import WAIT_S, apply, kubectl
from tests.cluster.release import Release, installed_release, ready

pytestmark = pytest.mark.node

RELEASE = "reap"
REAPER_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=reaper"
# Idle threads per prune: each is one transaction of about ten statements, so a run lasts
# seconds, longer than a tick of the reaper's timer.
IDLE_THREADS = 3000
ACTIVE_THREADS = 20
CHECKPOINTS_PER_THREAD = 3
# The reaper's timer period (`--tick-interval`): a second pod tries within it.
TICK_S = 2
# engine.prune's message with its Skipped outcome (Event PruneSkipped) when another prune
# holds the database's advisory lock.
LOCKED = "locked: another prune is running on this database"

# Idle threads (nobody spoke for two days) or active ones (spoke now), each with checkpoints,
# blobs and writes: the rows a prune must delete together or not at all.
SEED_THREADS_SQL = """
INSERT INTO threads (thread_id, owner, created_at, last_message_at)
SELECT gen_random_uuid(), %(owner)s, now() - %(age)s::interval, now() - %(age)s::interval
FROM generate_series(1, %(count)s)
"""
SEED_CHECKPOINTS_SQL = """
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, type, checkpoint, metadata)
SELECT t.thread_id::text, '', 'cp-' || n, 'json', '{}', '{}'
FROM threads AS t, generate_series(1, %(per_thread)s) AS n WHERE t.owner = %(owner)s
"""
SEED_BLOBS_SQL = """
INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type)
SELECT thread_id::text, '', 'messages', '1', 'empty' FROM threads WHERE owner = %(owner)s
"""
SEED_WRITES_SQL = """
INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, blob)
SELECT thread_id::text, '', 'cp-1', 'task', 0, 'messages', 'empty', ''::bytea
FROM threads WHERE owner = %(owner)s
"""
# design.md: a thread row and its checkpoint rows exist together or not at all.
THREADS_WITHOUT_CHECKPOINTS_SQL = """
SELECT count(*) FROM threads AS t
WHERE NOT EXISTS (SELECT 1 FROM checkpoints AS c WHERE c.thread_id = t.thread_id::text)
"""
CHECKPOINT_ROWS_WITHOUT_THREAD_SQL = """
SELECT (SELECT count(*) FROM checkpoints AS c WHERE NOT EXISTS
          (SELECT 1 FROM threads AS t WHERE t.thread_id::text = c.thread_id))
     + (SELECT count(*) FROM checkpoint_blobs AS b WHERE NOT EXISTS
          (SELECT 1 FROM threads AS t WHERE t.thread_id::text = b.thread_id))
     + (SELECT count(*) FROM checkpoint_writes AS w WHERE NOT EXISTS
          (SELECT 1 FROM threads AS t WHERE t.thread_id::text = w.thread_id))
"""
THREADS_OF_SQL = "SELECT count(*) FROM threads WHERE owner = %(owner)s"
CHECKPOINTS_OF_SQL = """
SELECT count(*) FROM checkpoints AS c JOIN threads AS t ON t.thread_id::text = c.thread_id
WHERE t.owner = %(owner)s
"""


@dataclass(frozen=True)
class Seeded:
    """The release and its database, into which the tests write threads directly."""

    release: Release
    url: str

    def scalar(self, query: str, **params: object) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        value: int = row[0]
        return value

    def seed(self, owner: str, count: int, age: str) -> None:
        with psycopg.connect(self.url) as conn:
            conn.execute(SEED_THREADS_SQL, {"owner": owner, "count": count, "age": age})
            conn.execute(
                SEED_CHECKPOINTS_SQL, {"owner": owner, "per_thread": CHECKPOINTS_PER_THREAD}
            )
            conn.execute(SEED_BLOBS_SQL, {"owner": owner})
            conn.execute(SEED_WRITES_SQL, {"owner": owner})

    def assert_nothing_half_deleted(self) -> None:
        assert self.scalar(THREADS_WITHOUT_CHECKPOINTS_SQL) == 0
        assert self.scalar(CHECKPOINT_ROWS_WITHOUT_THREAD_SQL) == 0


@pytest.fixture(scope="module")
def installed(
    kube_node: NodeCluster, app_image: ImageRef, bridge_postgres: BridgePostgres
) -> Iterator[Seeded]:
    sets = ("retention.enabled=false", "service.replicas=1",
            f"reaper.extraArgs[0]=--tick-interval={TICK_S}")  # fmt: skip
    with installed_release(kube_node, app_image, bridge_postgres, RELEASE, *sets) as done:
        yield Seeded(done.release, conninfo.make_conninfo(bridge_postgres.host_url,
                                                          dbname=done.database))  # fmt: skip


@pytest.fixture
def apply_policy(installed: Seeded) -> Iterator[Callable[[str], None]]:
    """Applies the test's RetentionPolicy by name; deletes it afterwards, also on failure."""
    release = installed.release
    names: list[str] = []

    def apply_one(name: str) -> None:
        names.append(name)
        apply(release.cluster, _policy(release, name))

    yield apply_one
    for name in names:
        kubectl(release.cluster, "delete", "retentionpolicy", name, "-n", release.namespace,
                "--ignore-not-found")  # fmt: skip


def _policy(release: Release, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "threadkeeper.dev/v1alpha1",
        "kind": "RetentionPolicy",
        "metadata": {"name": name, "namespace": release.namespace},
        "spec": {
            "database": {"secretRef": {"name": release.database_secret}},
            "schedule": {"interval": "1h"},
            "threads": {"maxIdle": "1h"},
            # One run deletes every seeded thread (the batch caps threads per run).
            "limits": {"batchSize": 2 * IDLE_THREADS},
        },
    }


def _status(release: Release, name: str) -> dict[str, Any]:
    got = kubectl(release.cluster, "get", "retentionpolicy", name, "-n", release.namespace,
                  "-o", "json")  # fmt: skip
    body = json.loads(got)
    status: dict[str, Any] = body.get("status") or {}
    status["generation"] = body["metadata"]["generation"]
    return status


def _wait_for_run(
    release: Release, name: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The policy's status once `done` says so (the reaper patches it after each run)."""
    deadline = time.monotonic() + WAIT_S
    while not done(status := _status(release, name)):
        assert time.monotonic() < deadline, f"policy {name} never got there: {status}"
        time.sleep(0.5)
    return status


def _reaper_pods(release: Release) -> list[dict[str, Any]]:
    listed = kubectl(release.cluster, "get", "pods", "-n", release.namespace, "-l",
                     REAPER_SELECTOR, "-o", "json")  # fmt: skip
    pods: list[dict[str, Any]] = json.loads(listed)["items"]
    return [pod for pod in pods if "deletionTimestamp" not in pod["metadata"]]


def _running_reapers(release: Release, count: int, not_named: str = "") -> list[str]:
    """Names of `count` reaper pods (none called `not_named`) whose container has started."""
    deadline = time.monotonic() + WAIT_S
    while True:
        pods = [p for p in _reaper_pods(release) if p["metadata"]["name"] != not_named]
        if len(pods) == count and all(ready(pod) for pod in pods):
            return sorted(pod["metadata"]["name"] for pod in pods)
        assert time.monotonic() < deadline, f"never {count} running reaper pods"
        time.sleep(0.5)


def _log_lines(release: Release, pod: str) -> list[dict[str, Any]]:
    """The reaper pod's structlog lines (one JSON object each; kopf's own lines too)."""
    out = kubectl(release.cluster, "logs", "-n", release.namespace, pod)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _follow_until(release: Release, pod: str, event: str) -> dict[str, Any]:
    """Stream the pod's log (`kubectl logs -f`) until a line with `event`; return it."""
    args = [str(release.cluster.kubectl), "logs", "-f", "-n", release.namespace, pod]
    with subprocess.Popen(args, env=release.cluster.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as follow:  # fmt: skip
        assert follow.stdout is not None
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(follow.stdout, selectors.EVENT_READ)
                deadline = time.monotonic() + WAIT_S
                while (left := deadline - time.monotonic()) > 0:
                    if not selector.select(timeout=left):
                        break
                    line = follow.stdout.readline()
                    assert line, f"the log of {pod} ended before {event!r}"
                    if not line.startswith("{"):
                        continue
                    got: dict[str, Any] = json.loads(line)
                    if got.get("event") == event:
                        return got
            raise AssertionError(f"pod {pod} never logged {event!r}")
        finally:
            follow.kill()


def _interval(finished: dict[str, Any]) -> tuple[datetime, datetime]:
    started = datetime.fromisoformat(finished["startedAt"])
    return started, started + timedelta(seconds=finished["durationSeconds"])


# --- killed mid-prune -------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_reaper_killed_mid_prune_loses_nothing_and_its_successor_finishes(
    installed: Seeded,
    apply_policy: Callable[[str], None],
    record_property: Callable[[str, object], None],
) -> None:
    release = installed.release
    installed.seed("idle-a", IDLE_THREADS, "2 days")
    installed.seed("active-a", ACTIVE_THREADS, "0 seconds")
    first = _running_reapers(release, 1)[0]

    apply_policy("takeover")
    applied = time.monotonic()
    _follow_until(release, first, "thread_deleted")
    kubectl(release.cluster, "delete", "pod", first, "-n", release.namespace,
            "--force", "--grace-period=0")  # fmt: skip
    killed = time.monotonic()
    # The old pod's last transaction is either committed or gone with its connection.
    successor = _running_reapers(release, 1, not_named=first)[0]
    status = _wait_for_run(
        release, "takeover", lambda s: s.get("observedGeneration") == s["generation"]
    )
    finished = time.monotonic()

    run = status["lastRun"]
    record_property(
        "takeover",
        {
            "killed after (s)": round(killed - applied, 1),
            "successor finished after kill (s)": round(finished - killed, 1),
            "successor run (s)": run["durationSeconds"],
            "deleted by the killed pod": IDLE_THREADS - run["threadsDeleted"]["idle"],
            "deleted by the successor": run["threadsDeleted"]["idle"],
        },
    )
    assert run["outcome"] == "Succeeded", status
    assert "stopped early" not in run["message"], run
    # The killed pod had deleted some threads (its log said so) but not all of them.
    assert 0 < run["threadsDeleted"]["idle"] < IDLE_THREADS, run
    assert installed.scalar(THREADS_OF_SQL, owner="idle-a") == 0
    assert installed.scalar(CHECKPOINTS_OF_SQL, owner="idle-a") == 0
    installed.assert_nothing_half_deleted()
    assert installed.scalar(THREADS_OF_SQL, owner="active-a") == ACTIVE_THREADS
    assert (
        installed.scalar(CHECKPOINTS_OF_SQL, owner="active-a")
        == ACTIVE_THREADS * CHECKPOINTS_PER_THREAD
    )
    # The run that completed is the successor's, as its own log says.
    done = [e for e in _log_lines(release, successor) if e.get("event") == "prune_finished"]
    assert [e["threadsDeleted"]["idle"] for e in done] == [run["threadsDeleted"]["idle"]]
    assert "Pruned" in release.events_of("RetentionPolicy", "takeover")


# --- two reaper pods --------------------------------------------------------------------


def _runs(lines: list[dict[str, Any]], policy: str, event: str) -> list[dict[str, Any]]:
    """The policy's prune runs that ended with `event` (prune_finished or prune_skipped)."""
    return [line for line in lines if line.get("event") == event and line["policy"] == policy]


@pytest.mark.timeout(600)
def test_two_reaper_pods_never_prune_at_once(
    installed: Seeded,
    apply_policy: Callable[[str], None],
    record_property: Callable[[str, object], None],
) -> None:
    release = installed.release
    installed.seed("idle-b", IDLE_THREADS, "2 days")
    kubectl(release.cluster, "scale", "-n", release.namespace, f"deployment/{release.reaper}",
            "--replicas=2")  # fmt: skip
    try:
        pods = _running_reapers(release, 2)
        for pod in pods:
            _follow_until(release, pod, "operator_starting")

        # Both pods see the new policy due at once (first sight); its run lasts seconds.
        apply_policy("pair")
        status = _wait_for_run(
            release, "pair", lambda s: s.get("lastRun", {}).get("outcome") == "Succeeded"
        )
        skipped = _wait_for_skip(release, "pair")
        logs = {pod: _log_lines(release, pod) for pod in pods}
    finally:
        kubectl(release.cluster, "scale", "-n", release.namespace,
                f"deployment/{release.reaper}", "--replicas=1")  # fmt: skip

    ran = {pod: _runs(lines, "pair", "prune_finished") for pod, lines in logs.items()}
    skips = {pod: _runs(lines, "pair", "prune_skipped") for pod, lines in logs.items()}
    runs = sorted(_interval(run) for pod_runs in ran.values() for run in pod_runs)
    record_property(
        "pair",
        {
            "runs": [(a.isoformat(), b.isoformat()) for a, b in runs],
            "seconds": [(b - a).total_seconds() for a, b in runs],
            "skipped at": [s["startedAt"] for pod_skips in skips.values() for s in pod_skips],
        },
    )
    for (_, end), (start, _) in pairwise(runs):
        assert end <= start, f"two prune runs overlapped: {runs}"
    # A pod that tried while another pod's run held the database's advisory lock reported
    # the engine's Skipped outcome (its log, and the PruneSkipped Event): the guard engaged.
    tried = [(pod, skip) for pod, pod_skips in skips.items() for skip in pod_skips]
    assert tried, logs
    for pod, skip in tried:
        assert skip["outcome"] == "Skipped" and skip["message"] == LOCKED, skip
        at = datetime.fromisoformat(skip["startedAt"])
        others = [_interval(run) for other, runs_of in ran.items() if other != pod
                  for run in runs_of]  # fmt: skip
        assert any(at <= end for _, end in others), (pod, skip, ran)
    assert LOCKED in skipped["message"], skipped
    assert status["lastRun"]["threadsDeleted"]["idle"] == IDLE_THREADS
    assert installed.scalar(THREADS_OF_SQL, owner="idle-b") == 0
    installed.assert_nothing_half_deleted()


def _wait_for_skip(release: Release, name: str) -> dict[str, Any]:
    """The PruneSkipped Event about the policy (the Skipped outcome of the engine)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        listed = kubectl(release.cluster, "get", "events", "-n", release.namespace,
                         "--field-selector", f"involvedObject.name={name},reason=PruneSkipped",
                         "-o", "json")  # fmt: skip
        items: list[dict[str, Any]] = json.loads(listed)["items"]
        if items:
            return items[0]
        assert time.monotonic() < deadline, f"no PruneSkipped Event about {name}"
        time.sleep(0.5)
