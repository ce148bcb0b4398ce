"""A user's day with the chart on the one-node cluster: install, talk, scale, uninstall.

`helm install` of `charts/threadkeeper` as published (the cached helm), with the image
built from the Dockerfile and a database Secret pointing at a Postgres outside the
cluster (`bridge_postgres`, the managed-database case). The tests share one release and
run in file order: install, traffic, scale and roll under load, uninstall and reinstall.
Run with `pytest -m node tests/cluster` (root).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import watch
from langgraph_sdk import get_sync_client
from psycopg import conninfo

from tests.cluster import conversations, load
from tests.cluster.image import ImageRef
from tests.cluster.node import NodeCluster
from tests.cluster.pgbridge import BridgePostgres
from tests.cluster.pods import (
    WAIT,
    WAIT_S,
    apply,
    kubectl,
    run_pod,
    wait_for_success,
)
from tests.cluster.release import CHART, Installed, Release, installed_release, ready
from tests.cluster.test_app_image import MIGRATED_TABLES

pytestmark = pytest.mark.node
log = logging.getLogger(__name__)

RELEASE = "day"
SECRET = f"{RELEASE}-database"
SCALE_STEPS = (4, 1, 3)
# The chart's default `service.preStopSleepSeconds`: a pod serves this long after deletion.
PRE_STOP_S = yaml.safe_load((CHART / "values.yaml").read_text())["service"]["preStopSleepSeconds"]


@pytest.fixture(scope="module")
def installed(
    kube_node: NodeCluster, app_image: ImageRef, bridge_postgres: BridgePostgres
) -> Iterator[Installed]:
    with installed_release(kube_node, app_image, bridge_postgres, RELEASE) as done:
        yield done


def _policy_status(release: Release, name: str) -> dict[str, Any]:
    got = kubectl(release.cluster, "get", "retentionpolicy", name, "-n", release.namespace,
                  "-o", "json")  # fmt: skip
    status: dict[str, Any] = json.loads(got).get("status") or {}
    return status


# --- 1. install -----------------------------------------------------------------------


def _notes_commands(notes: str, verb: str) -> list[list[str]]:
    """The `kubectl ... <verb> ...` command lines the NOTES tell the user to run."""
    lines = [line.strip().rstrip("&").strip() for line in notes.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("kubectl ")]
    return [command for command in commands if verb in command]


def test_helm_install_migrates_rolls_out_and_passes_helm_test(
    installed: Installed, bridge_postgres: BridgePostgres, kube_node: NodeCluster
) -> None:
    release = installed.release
    # The pre-install hook Job ran to completion (Helm deletes it then; its events stay).
    reasons = release.events_of("Job", f"{release.fullname}-migrate")
    assert "SuccessfulCreate" in reasons
    assert "Completed" in reasons
    assert bridge_postgres.tables(installed.database) >= MIGRATED_TABLES
    pods = release.service_pods()
    assert len(pods) == 2
    assert all(ready(pod) for pod in pods)
    # Replicas do not migrate: the hook did.
    assert all("--no-migrate" in pod["spec"]["containers"][0]["args"] for pod in pods)
    # The reaper works too: it schedules the chart's RetentionPolicy. (`helm --wait`, `rollout
    # status` and even the pod's Ready condition pass for a reaper that dies a second after
    # it starts: it has no readiness probe, and its Deployment allows no ready replica.)
    deadline = time.monotonic() + WAIT_S
    while "nextRunTime" not in (status := _policy_status(release, release.fullname)):
        assert time.monotonic() < deadline, f"the reaper never scheduled the policy: {status}"
        time.sleep(1)

    tested = release.helm("test", RELEASE, "--logs")
    assert "Phase:          Succeeded" in tested.stdout, tested.stdout
    assert "deleted thread" in tested.stdout and ": OK" in tested.stdout, tested.stdout


def test_the_notes_commands_work_as_written(
    installed: Installed, kube_node: NodeCluster, port_forward: Callable[..., str]
) -> None:
    release, notes = installed.release, installed.notes
    assert f'release "{RELEASE}" in namespace "{release.namespace}"' in notes
    rollouts = _notes_commands(notes, "rollout")
    assert [command[-1] for command in rollouts] == [
        f"deployment/{release.fullname}",
        f"deployment/{release.reaper}",
    ]
    for command in [*rollouts, *_notes_commands(notes, "retentionpolicies")]:
        out = kubectl(kube_node, *command[1:])
        assert out.strip(), command
    forwards = _notes_commands(notes, "port-forward")
    assert len(forwards) == 1
    target, ports = forwards[0][-2:]
    assert target == f"service/{release.fullname}"
    local, remote = ports.split(":")
    # The NOTES' local port may be taken on this machine: any free one does the same.
    url = port_forward(release.namespace, target, int(remote))
    curl = re.search(r"curl -s localhost:(\d+)(/\S+) .* -d '(.+)'", notes)
    assert curl, notes
    assert curl[1] == local
    answer = httpx.post(url + curl[2], json=json.loads(curl[3]), timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["reply"].startswith("Turn 1.")


# --- 2. traffic through the Service -----------------------------------------------------


def test_conversations_through_the_service_from_a_pod(installed: Installed) -> None:
    release = installed.release
    pod = load.client_pod(release, "traffic", uuid.uuid4().hex[:8], count=4, turns=3, think=0)

    summary = load.summary_of(run_pod(release.cluster, pod))

    load.assert_clean(summary)
    assert summary["turns"] == 4 * 3


# --- 3. scale and roll under load -------------------------------------------------------


@dataclass(frozen=True)
class Termination:
    pod: str
    exit_code: int
    reason: str
    seconds: float
    grace: int


class TerminationWatch(threading.Thread):
    """Watches the service pods and keeps how each one that was deleted ended; as a context
    manager, from entry until exit (or ``stop``, which also reports what it saw)."""

    def __init__(self, cluster: NodeCluster, namespace: str, selector: str) -> None:
        super().__init__(name="termination-watch", daemon=True)
        self.cluster, self.namespace, self.selector = cluster, namespace, selector
        self.stopping = threading.Event()
        self.ended: dict[str, Termination] = {}
        self.asked: dict[str, datetime] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _watch(self) -> None:
        with self.cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            resource_version: str | None = None
            while not self.stopping.is_set():
                events = watch.Watch()
                for event in events.stream(core.list_namespaced_pod, self.namespace,
                                           label_selector=self.selector, timeout_seconds=2,
                                           resource_version=resource_version):  # fmt: skip
                    self._record(event["object"])
                resource_version = events.resource_version

    def _record(self, pod: k8s.V1Pod) -> None:
        meta, status = pod.metadata, pod.status
        if meta.deletion_timestamp is None:
            return
        # The first sight of the deletion dates the request (deletionTimestamp = request +
        # grace); the kubelet's final delete later rewrites both fields with grace 0.
        asked = meta.deletion_timestamp - timedelta(seconds=meta.deletion_grace_period_seconds)
        self.asked.setdefault(meta.name, asked)
        terminated = status.container_statuses and status.container_statuses[0].state.terminated
        if not terminated:
            return
        self.ended[meta.name] = Termination(
            pod=meta.name,
            exit_code=terminated.exit_code,
            reason=terminated.reason,
            seconds=(terminated.finished_at - self.asked[meta.name]).total_seconds(),
            grace=pod.spec.termination_grace_period_seconds,
        )

    def __enter__(self) -> TerminationWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()

    def stop(self) -> list[Termination]:
        self.stopping.set()
        self.join(timeout=30)
        if self.error is not None:
            raise self.error
        return list(self.ended.values())


def _settle(release: Release, replicas: int) -> float:
    """Wait until exactly `replicas` service pods exist, all Ready; return the seconds."""
    started = time.monotonic()
    deadline = started + 3 * WAIT_S
    while True:
        pods = release.service_pods()
        if len(pods) == replicas and all(ready(pod) for pod in pods):
            return time.monotonic() - started
        states = [(p["metadata"]["name"], ready(p)) for p in pods]
        assert time.monotonic() < deadline, f"never {replicas} ready pods: {states}"
        time.sleep(1)


@contextmanager
def _deleted_after(cluster: NodeCluster, namespace: str, pod: str) -> Iterator[None]:
    try:
        yield
    finally:
        kubectl(cluster, "delete", "pod", "-n", namespace, pod, "--ignore-not-found",
                "--grace-period=1", check=False)  # fmt: skip


def _scale_and_roll(release: Release, label: str) -> dict[str, float]:
    """The scale steps, then a rolling upgrade; how long each took to settle."""
    steps: dict[str, float] = {}
    for replicas in SCALE_STEPS:
        kubectl(release.cluster, "scale", "-n", release.namespace,
                f"deployment/{release.fullname}", f"--replicas={replicas}")  # fmt: skip
        steps[f"scale to {replicas}"] = round(_settle(release, replicas), 1)
        log.info("scaled to %d: %s", replicas, steps)
    started = time.monotonic()
    # A change of the pod template: every pod is replaced, one new pod first. Helm sets the
    # replicas it renders, so an upgrade names the count `kubectl scale` chose. Annotations
    # are strings; --set would hand the chart's schema a number for an all-digit label.
    release.upgrade("service.replicas=3", strings=(f"service.podAnnotations.rolled={label}",))
    log.info("helm upgrade done after %.1fs", time.monotonic() - started)
    steps["helm upgrade (rolling)"] = round(time.monotonic() - started + _settle(release, 3), 1)
    return steps


# Four rollouts, each ending pods that drain for up to their grace period.
@pytest.mark.timeout(1200)
def test_scale_and_roll_under_load_loses_nothing(
    installed: Installed, record_property: Callable[[str, object], None]
) -> None:
    release = installed.release
    cluster, namespace = release.cluster, release.namespace
    # All digits on purpose: an annotation value YAML would read as a number.
    label = f"{uuid.uuid4().int % 10**8:08d}"
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=service"
    client = load.client_pod(
        release, "load", label, load.CONVERSATIONS, load.MAX_TURNS, load.THINK_S
    )
    # A failed step must not leave the load writing into the next tests' counts.
    with (
        TerminationWatch(cluster, namespace, selector) as watcher,
        _deleted_after(cluster, namespace, "load"),
    ):
        apply(cluster, client)
        load.wait_for_line(cluster, namespace, "load", conversations.STARTED)
        steps = _scale_and_roll(release, label)
        kubectl(cluster, "exec", "-n", namespace, "load", "--",
                "python", "-c", f"open({load.STOP_FILE!r}, 'w').close()")  # fmt: skip
        summary = load.summary_of(wait_for_success(cluster, namespace, "load", wait_s=3 * WAIT_S))
        ended = watcher.stop()

    record_property("load", {k: v for k, v in summary.items() if k != "thread_ids"})
    record_property("steps", steps)
    record_property("terminations", [t.__dict__ for t in ended])
    assert summary["stopped_by_file"], "a conversation hit the turn limit before the stop"
    load.assert_clean(summary)
    assert summary["conversations"] == load.CONVERSATIONS
    # 4 -> 1 ends three pods, the rollout the three of the old template.
    assert len(ended) >= 6, ended
    for termination in ended:
        assert termination.exit_code == 0, termination
        # At least the preStop sleep (so the pod was not killed at once), within the grace.
        assert PRE_STOP_S <= termination.seconds <= termination.grace, termination


# --- 4. the reaper in the cluster ------------------------------------------------------

KEEP_LAST = 2
# Checkpoints per thread and namespace, as the reaper's keepLast counts them.
_MOST_CHECKPOINTS = """
SELECT coalesce(max(n), 0) FROM (
    SELECT count(*) AS n FROM checkpoints GROUP BY thread_id, checkpoint_ns
) AS per_thread
"""


def _scalar(bridge_postgres: BridgePostgres, database: str, query: str) -> int:
    url = conninfo.make_conninfo(bridge_postgres.host_url, dbname=database)
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    value: int = row[0]
    return value


def test_a_retention_policy_applied_with_kubectl_prunes_for_real(
    installed: Installed, bridge_postgres: BridgePostgres
) -> None:
    """The chart's reaper pod (its ServiceAccount token, the chart's Role) prunes."""
    release = installed.release
    pod = load.client_pod(release, "history", uuid.uuid4().hex[:8], count=2, turns=4, think=0)
    load.assert_clean(load.summary_of(run_pod(release.cluster, pod)))
    before = _count(bridge_postgres, installed.database, "checkpoints")
    assert _scalar(bridge_postgres, installed.database, _MOST_CHECKPOINTS) > KEEP_LAST

    policy = {
        "apiVersion": "threadkeeper.dev/v1alpha1",
        "kind": "RetentionPolicy",
        "metadata": {"name": "keep-two", "namespace": release.namespace},
        "spec": {
            "database": {"secretRef": {"name": SECRET}},
            "schedule": {"interval": "1h"},
            "checkpoints": {"keepLast": KEEP_LAST},
        },
    }
    apply(release.cluster, policy)
    deadline = time.monotonic() + WAIT_S
    while (status := _policy_status(release, "keep-two")).get("lastRun", {}).get(
        "outcome"
    ) != "Succeeded":
        assert time.monotonic() < deadline, f"the policy never pruned: {status}"
        time.sleep(1)

    assert status["lastRun"]["checkpointsDeleted"] > 0
    after = _count(bridge_postgres, installed.database, "checkpoints")
    assert after == before - status["lastRun"]["checkpointsDeleted"]
    assert _scalar(bridge_postgres, installed.database, _MOST_CHECKPOINTS) <= KEEP_LAST
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", status
    assert "Pruned" in release.events_of("RetentionPolicy", "keep-two")
    kubectl(release.cluster, "delete", "retentionpolicy", "keep-two", "-n", release.namespace,
            f"--timeout={WAIT}")  # fmt: skip


# --- 6. uninstall keeps the data and the CRD; reinstall picks the threads up ----------


def _count(bridge_postgres: BridgePostgres, database: str, table: str) -> int:
    url = conninfo.make_conninfo(bridge_postgres.host_url, dbname=database)
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    count: int = row[0]
    return count


def test_uninstall_keeps_data_and_crd_and_reinstall_picks_threads_up(
    installed: Installed,
    bridge_postgres: BridgePostgres,
    kube_node: NodeCluster,
    port_forward: Callable[..., str],
) -> None:
    release = installed.release
    first = f"remember {uuid.uuid4().hex}"
    sdk = get_sync_client(url=port_forward(release.namespace, f"service/{release.fullname}",
                                           load.SERVICE_PORT))  # fmt: skip
    thread = sdk.threads.create()
    message: Any = {"role": "user", "content": first}
    sdk.runs.wait(thread["thread_id"], "agent", input={"messages": [message]})
    threads_before = _count(bridge_postgres, installed.database, "threads")
    checkpoints_before = _count(bridge_postgres, installed.database, "checkpoints")

    release.uninstall()

    # The Deployment is gone at once; its pods end within their grace period.
    _settle(release, 0)
    crd = kubectl(kube_node, "get", "crd", "retentionpolicies.threadkeeper.dev", "-o", "name")
    assert (
        crd.strip()
        == "customresourcedefinition.apiextensions.k8s.io/retentionpolicies.threadkeeper.dev"
    )
    assert _count(bridge_postgres, installed.database, "threads") == threads_before
    assert _count(bridge_postgres, installed.database, "checkpoints") == checkpoints_before

    release.install()

    sdk = get_sync_client(url=port_forward(release.namespace, f"service/{release.fullname}",
                                           load.SERVICE_PORT))  # fmt: skip
    again: Any = {"role": "user", "content": "still there?"}
    state: Any = sdk.runs.wait(thread["thread_id"], "agent", input={"messages": [again]})
    reply = state["messages"][-1]["content"]
    assert reply.startswith("Turn 2.")
    assert first in reply
    assert _count(bridge_postgres, installed.database, "threads") == threads_before
