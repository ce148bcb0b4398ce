"""The operator (``threadkeeper-reaper run``) against a real API server and a real Postgres.

Each cluster test gets a namespace of its own (this control plane cannot finish deleting one)
and runs the operator as a subprocess, the way the Deployment runs it, under a ServiceAccount
bound to exactly the Role the chart grants (``deploy/rbac/reaper-role-rules.yaml``). Waits are
polls of observable state (status, rows, Events, metrics) with deadlines, never bare sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import psycopg
import pytest
import yaml
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from tests.cluster.controlplane import Cluster
from tests.reaper.support import INSERT_THREAD_SQL, OWNER
from threadkeeper.reaper import schedule, status
from threadkeeper.reaper.engine import ADVISORY_LOCK_KEY
from threadkeeper.reaper.kube import Connection
from threadkeeper.reaper.operator import run_operator
from threadkeeper.reaper.probe import Heartbeat, OperatorStalled

ROOT = Path(__file__).parents[2]
CRD = ROOT / "deploy" / "crds" / "retentionpolicies.threadkeeper.dev.yaml"
RULES_FILE = ROOT / "deploy" / "rbac" / "reaper-role-rules.yaml"
GROUP, VERSION, PLURAL = "threadkeeper.dev", "v1alpha1", "retentionpolicies"
SECRET = "threadkeeper-db"
SERVICE_ACCOUNT = "threadkeeper-reaper"

# Exactly what the chart's reaper Role grants (the chart engineer compares against RULES_FILE;
# test_rules_file_matches keeps the two identical).
ROLE_RULES = yaml.safe_load(
    f"""
- apiGroups: [threadkeeper.dev]
  resources: [retentionpolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [threadkeeper.dev]
  resources: [retentionpolicies/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
  resourceNames: [{SECRET}]
"""
)

T = TypeVar("T")
# A 403 from the API server always says "forbidden" (kopf: APIForbiddenError; the Secret
# reader: SecretForbidden); a bare "403" also matches timestamps and durations.
FORBIDDEN = re.compile(r"forbidden", re.IGNORECASE)
# `--retry-after` of the lock test: far below the 30 s default, well above a tick (0.5 s).
LOCK_RETRY = timedelta(seconds=2)


def eventually(check: Callable[[], T | None], *, within: float = 60.0, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- cluster fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd(kube: Cluster) -> Cluster:
    env = kube.env()
    applied = subprocess.run(
        [str(kube.kubectl), "apply", "-f", str(CRD)], env=env, capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr
    ready = subprocess.run(
        [
            str(kube.kubectl),
            "wait",
            "--for=condition=Established",
            f"crd/{PLURAL}.{GROUP}",
            "--timeout=60s",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ready.returncode == 0, ready.stderr
    return kube


@pytest.fixture(scope="module")
def api(crd: Cluster) -> Iterator[ApiClient]:
    client = crd.api_client()
    try:
        yield client
    finally:
        client.close()


@dataclass
class Namespace:
    name: str
    api: ApiClient
    database_url: str

    @property
    def core(self) -> CoreV1Api:
        return CoreV1Api(self.api)

    @property
    def custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self.api)

    def create_secret(self, url: str | None = None) -> None:
        data = {"url": base64.b64encode((url or self.database_url).encode()).decode()}
        self.core.create_namespaced_secret(self.name, {"metadata": {"name": SECRET}, "data": data})

    def create_policy(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RetentionPolicy",
            "metadata": {"name": name},
            "spec": {"database": {"secretRef": {"name": SECRET}}, **spec},
        }
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.name, PLURAL, body
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.name, PLURAL, name
        )
        return got

    def merge(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.name, PLURAL, name, patch)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        listed = self.core.list_namespaced_event(
            self.name, field_selector=f"involvedObject.name={name}"
        )
        return [(e.type, e.reason, e.message or "") for e in listed.items]

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for c in self.get(name).get("status", {}).get("conditions", []):
            if c["type"] == type_:
                return dict(c)
        return None

    def grant_reaper_role(self) -> None:
        rbac = RbacAuthorizationV1Api(self.api)
        rbac.create_namespaced_role(
            self.name, {"metadata": {"name": "reaper"}, "rules": ROLE_RULES}
        )
        rbac.create_namespaced_role_binding(
            self.name,
            {
                "metadata": {"name": "reaper"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "reaper",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": self.name}
                ],
            },
        )


@pytest.fixture
def namespace(api: ApiClient, database_url: str) -> Namespace:
    name = f"rp-{uuid.uuid4().hex[:10]}"
    CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    ns = Namespace(name, api, database_url)
    ns.grant_reaper_role()
    return ns


# -- the operator process --------------------------------------------------------------------


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    liveness_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthz(self) -> int:
        try:
            return httpx.get(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=5
            ).status_code
        except httpx.TransportError:
            return 0

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def forbidden(self) -> list[str]:
        return [line for line in self.log().splitlines() if FORBIDDEN.search(line)]


class StartOperator(Protocol):
    def __call__(self, ns: Namespace, *extra_args: str) -> Operator:
        """Start ``threadkeeper-reaper run`` for ``ns`` (plus ``extra_args``); wait until live."""
        ...


@pytest.fixture
def start_operator(kube: Cluster, tmp_path: Path) -> Iterator[StartOperator]:
    started: list[Operator] = []

    def start(ns: Namespace, *extra_args: str) -> Operator:
        kubeconfig = kube.as_service_account(ns.name, SERVICE_ACCOUNT)
        metrics_port, liveness_port = free_port(), free_port()
        log_path = tmp_path / f"operator-{len(started)}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "POD_NAMESPACE")}
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "threadkeeper.reaper.cli",
                    "run",
                    "--namespace",
                    ns.name,
                    "--kubeconfig",
                    str(kubeconfig),
                    "--metrics-port",
                    str(metrics_port),
                    "--liveness-port",
                    str(liveness_port),
                    "--tick-interval",
                    "0.5",
                    *extra_args,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        operator = Operator(process, log_path, metrics_port, liveness_port)
        started.append(operator)

        def healthy() -> bool:
            assert process.poll() is None, f"operator exited:\n{operator.log()[-4000:]}"
            return operator.healthz() == 200

        eventually(healthy, within=60, what="the operator's liveness endpoint")
        return operator

    try:
        yield start
    finally:
        for operator in started:
            operator.stop()


def plant_idle_thread(database_url: str, idle: timedelta = timedelta(hours=2)) -> str:
    thread_id = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            INSERT_THREAD_SQL,
            {
                "id": thread_id,
                "owner": OWNER,
                "created": idle + timedelta(hours=1),
                "spoke": idle,
                "archived": None,
            },
        )
    return thread_id


def thread_exists(database_url: str, thread_id: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM threads WHERE thread_id = %s", (thread_id,)).fetchone()
        return row is not None


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            series, _, value = line.rpartition(" ")
            got = ",".join(sorted(series[len(name) + 1 : -1].split(",")))
            if got == wanted:
                return float(value)
    return None


# -- cluster tests -----------------------------------------------------------------------------


def test_rules_file_matches_the_tested_role() -> None:
    assert yaml.safe_load(RULES_FILE.read_text()) == ROLE_RULES


@pytest.mark.cluster
def test_the_api_server_refuses_an_invalid_policy(namespace: Namespace) -> None:
    with pytest.raises(ApiException) as refused:
        namespace.create_policy("bad", threads={"maxIdle": "30 days"})
    assert refused.value.status == 422
    assert "spec.threads.maxIdle" in str(refused.value.body)


@pytest.mark.cluster
def test_prunes_on_schedule_with_the_charts_rbac(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    ns = namespace
    ns.create_secret()
    idle = plant_idle_thread(ns.database_url)
    fresh = plant_idle_thread(ns.database_url, idle=timedelta(minutes=1))
    ns.create_policy("idle", schedule={"interval": "2s"}, threads={"maxIdle": "1h"}, dryRun=True)
    operator = start_operator(ns)

    # A dry run first: reported, nothing deleted.
    def dry_run_reported() -> dict[str, Any] | None:
        status = ns.get("idle").get("status", {})
        last = status.get("lastRun", {})
        return status if last.get("dryRun") and last.get("outcome") == "Succeeded" else None

    status = eventually(dry_run_reported, what="a dry run in the status")
    assert status["lastRun"]["threadsDeleted"]["idle"] == 1
    assert status["observedGeneration"] == 1
    ready = ns.condition("idle", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "DryRunCompleted")
    assert ready["observedGeneration"] == 1
    stalled = ns.condition("idle", "Stalled")
    assert stalled is not None and stalled["status"] == "False"
    assert thread_exists(ns.database_url, idle)

    # Scheduled: later runs follow on their own (lastRunTime moves on).
    first = status["lastRunTime"]
    eventually(
        lambda: ns.get("idle")["status"]["lastRunTime"] != first, what="the next scheduled run"
    )

    # A spec edit takes effect: dryRun false deletes the idle thread, keeps the fresh one.
    ns.merge("idle", {"spec": {"dryRun": False}})
    eventually(lambda: not thread_exists(ns.database_url, idle), what="the idle thread deleted")
    assert thread_exists(ns.database_url, fresh)

    def real_run_reported() -> dict[str, Any] | None:
        status = ns.get("idle").get("status", {})
        ok = status.get("observedGeneration") == 2 and not status["lastRun"]["dryRun"]
        return status if ok else None

    status = eventually(real_run_reported, what="a real run in the status")
    assert status["lastSuccessTime"]
    assert schedule.parse_time(status["nextRunTime"]) is not None
    assert {"checkpoints", "threads"} <= set(status["tables"])
    assert status["tables"]["threads"]["bytes"] > 0
    ready = ns.condition("idle", "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "PruneSucceeded")

    # Events of the runs, posted with the operator's own (Role-limited) credentials.
    events = eventually(
        lambda: [e for e in ns.events("idle") if e[1] == "Pruned" and "deleted 1 threads" in e[2]],
        what=f"a Pruned event: {ns.events('idle')}\n{operator.log()[-3000:]}",
    )
    assert events[0][0] == "Normal"
    assert any(e[1] == "DryRun" for e in ns.events("idle"))

    # Metrics on the metrics port, labelled by namespace and policy, without credentials.
    labels = {"namespace": ns.name, "policy": "idle"}
    text = eventually(
        lambda: (
            t
            if metric(
                t := operator.metrics(),
                "threadkeeper_prune_threads_deleted_total",
                **labels,
                reason="idle",
            )
            else None
        ),
        what="the deleted-threads counter",
    )
    assert metric(text, "threadkeeper_prune_threads_deleted_total", **labels, reason="idle") == 1
    assert metric(text, "threadkeeper_prune_runs_total", **labels, outcome="Succeeded")
    assert metric(text, "threadkeeper_checkpoint_table_bytes", **labels, table="threads")
    assert metric(text, "threadkeeper_threads", **labels, state="active") == 1
    assert ns.database_url not in text and "postgresql://" not in text

    assert operator.healthz() == 200
    assert operator.process.poll() is None
    assert operator.forbidden() == []
    assert ns.database_url not in operator.log()


PLANT_ITEM_SQL = """
INSERT INTO store (prefix, key, value, expires_at, ttl_minutes)
VALUES ('oada.memories', %(key)s, '{}', now() + %(expires_in)s::interval, 60)
"""
ITEM_KEYS_SQL = "SELECT key FROM store ORDER BY key"


def store_keys(database_url: str) -> list[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return [row[0] for row in conn.execute(ITEM_KEYS_SQL).fetchall()]


@pytest.mark.cluster
def test_expired_store_items_are_swept_by_the_operator(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    ns = namespace
    ns.create_secret()
    with psycopg.connect(ns.database_url, autocommit=True) as conn:
        conn.execute(PLANT_ITEM_SQL, {"key": "expired", "expires_in": "-1 minute"})
        conn.execute(PLANT_ITEM_SQL, {"key": "live", "expires_in": "1 hour"})
    ns.create_policy("memory", schedule={"interval": "2s"}, store={"sweepExpired": True})
    operator = start_operator(ns)

    eventually(lambda: store_keys(ns.database_url) == ["live"], what="the expired item swept")
    eventually(
        lambda: [e for e in ns.events("memory") if "deleted 1 expired store items" in e[2]],
        what=f"a Pruned event: {ns.events('memory')}\n{operator.log()[-3000:]}",
    )
    labels = {"namespace": ns.name, "policy": "memory"}
    swept = "threadkeeper_store_expired_items_deleted_total"
    text = eventually(
        lambda: t if metric(t := operator.metrics(), swept, **labels) else None,
        what="the swept-items counter",
    )
    assert metric(text, swept, **labels) == 1
    assert metric(text, "threadkeeper_store_table_bytes", **labels, table="store")
    assert operator.forbidden() == []


# Items as the service writes them, last written ``age`` ago, without a TTL.
PLANT_WRITTEN_SQL = """
INSERT INTO store (prefix, key, value, created_at, updated_at)
VALUES (%(prefix)s, %(key)s, '{}', now() - %(age)s::interval, now() - %(age)s::interval)
"""


@pytest.mark.cluster
def test_idle_and_excess_store_items_are_deleted_by_the_operator(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    """``store.maxIdle`` and ``store.maxItemsPerNamespace`` through the operator: a dry run
    first (counts in the status and an Event, nothing deleted), then the real run."""
    ns = namespace
    ns.create_secret()
    with psycopg.connect(ns.database_url, autocommit=True) as conn:
        for key, age in (("idle", "40 days"), ("old", "3 hours"), ("mid", "2 hours")):
            conn.execute(PLANT_WRITTEN_SQL, {"prefix": "oada.memories", "key": key, "age": age})
        conn.execute(PLANT_WRITTEN_SQL, {"prefix": "oada.memories", "key": "new", "age": "1 hour"})
        conn.execute(PLANT_WRITTEN_SQL, {"prefix": "obob.notes", "key": "bob", "age": "1 day"})
    rules = {"maxIdle": "30d", "maxItemsPerNamespace": 2}
    ns.create_policy(
        "memory", schedule={"interval": "2s"}, store=rules, dryRun=True, limits={"batchSize": 1}
    )
    operator = start_operator(ns)

    def last_run() -> dict[str, Any] | None:
        found: dict[str, Any] | None = ns.get("memory").get("status", {}).get("lastRun")
        return found

    dry = eventually(last_run, what="a dry run's status")
    assert (dry["storeIdleItemsDeleted"], dry["storeExcessItemsDeleted"]) == (1, 2)
    assert store_keys(ns.database_url) == ["bob", "idle", "mid", "new", "old"]
    eventually(
        lambda: [e for e in ns.events("memory") if "would delete 1 store items idle" in e[2]],
        what=f"a dry run's event: {ns.events('memory')}",
    )

    ns.merge("memory", {"spec": {"dryRun": False}})
    eventually(lambda: store_keys(ns.database_url) == ["bob", "mid", "new"], what="the deletes")
    eventually(
        lambda: [e for e in ns.events("memory") if "deleted 1 store items beyond 2" in e[2]],
        what=f"a Pruned event: {ns.events('memory')}\n{operator.log()[-3000:]}",
    )
    labels = {"namespace": ns.name, "policy": "memory"}
    text = eventually(
        lambda: (
            t
            if metric(
                t := operator.metrics(), "threadkeeper_store_excess_items_deleted_total", **labels
            )
            else None
        ),
        what="the excess-items counter",
    )
    assert metric(text, "threadkeeper_store_idle_items_deleted_total", **labels) == 1
    assert metric(text, "threadkeeper_store_excess_items_deleted_total", **labels) == 1
    assert operator.forbidden() == []


@pytest.mark.cluster
def test_run_now_annotation_triggers_a_run(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    ns = namespace
    ns.create_secret()
    ns.create_policy("hourly", schedule={"interval": "1h"}, threads={"maxIdle": "1h"})
    operator = start_operator(ns)
    # The first run comes on first sight; the next would be an hour later.
    first = eventually(
        lambda: ns.get("hourly").get("status", {}).get("lastRunTime"), what="the first run"
    )
    idle = plant_idle_thread(ns.database_url)
    ns.merge("hourly", {"metadata": {"annotations": {schedule.RUN_NOW_ANNOTATION: "req-1"}}})
    eventually(lambda: not thread_exists(ns.database_url, idle), what="the run-now run")
    status = eventually(
        lambda: (s := ns.get("hourly")["status"]).get("lastRunNowHandled") == "req-1" and s,
        what="the handled run-now value in the status",
    )
    assert status["lastRun"]["threadsDeleted"]["idle"] == 1
    assert status["lastRunTime"] >= first
    next_run = schedule.parse_time(status["nextRunTime"])
    assert next_run is not None and next_run > datetime.now(UTC) + timedelta(minutes=50)
    assert any("run-now" in e[2] for e in ns.events("hourly") if e[1] == "Pruned")
    assert operator.forbidden() == []


@pytest.mark.cluster
def test_a_run_skipped_on_the_lock_is_retried_soon(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    """Another session holds the prune lock (as a killed reaper pod's may for a while): the
    skipped run comes back after ``--retry-after``, not before and not an interval later, and
    does the work."""
    ns = namespace
    ns.create_secret()
    idle = plant_idle_thread(ns.database_url)
    holder = psycopg.connect(ns.database_url, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        ns.create_policy("blocked", schedule={"interval": "1h"}, threads={"maxIdle": "1h"})
        start_operator(ns, "--retry-after", str(LOCK_RETRY.total_seconds()))
        status = eventually(
            lambda: (s := ns.get("blocked").get("status", {})).get("lastRun") and s,
            what="the first run",
        )
        # Checked while the lock is still held: the skipped run itself deleted nothing.
        assert thread_exists(ns.database_url, idle)
    finally:
        holder.close()
    assert status["lastRun"]["outcome"] == "Skipped", status
    skipped_at = schedule.parse_time(status["lastRunTime"])
    next_run = schedule.parse_time(status["nextRunTime"])
    assert skipped_at is not None and next_run is not None
    # Both are whole seconds (the skipped run's start, and its end plus the delay).
    assert LOCK_RETRY <= next_run - skipped_at <= LOCK_RETRY + timedelta(seconds=5), status
    eventually(
        lambda: not thread_exists(ns.database_url, idle),
        within=LOCK_RETRY.total_seconds() + 60,
        what="the retried run",
    )
    retried = eventually(
        lambda: (s := ns.get("blocked")["status"])["lastRun"]["outcome"] == "Succeeded" and s,
        what="the retried run's status",
    )
    retried_at = schedule.parse_time(retried["lastRunTime"])
    assert retried_at is not None and retried_at >= next_run, (status, retried)


@pytest.mark.cluster
def test_a_missing_secret_stalls_the_policy_until_it_exists(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    ns = namespace
    ns.create_policy("nosecret", schedule={"interval": "2s"}, checkpoints={"keepLast": 2})
    operator = start_operator(ns)
    stalled = eventually(
        lambda: (c := ns.condition("nosecret", "Stalled")) and c["status"] == "True" and c,
        what="Stalled=True",
    )
    assert stalled["reason"] == "SecretNotFound"
    ready = ns.condition("nosecret", "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    eventually(
        lambda: [e for e in ns.events("nosecret") if e[:2] == ("Warning", "SecretNotFound")],
        what="a SecretNotFound event",
    )
    # Recovers by itself once the Secret appears.
    ns.create_secret()
    eventually(
        lambda: (c := ns.condition("nosecret", "Ready")) and c["status"] == "True",
        what="Ready=True after the Secret appeared",
    )
    stalled_now = ns.condition("nosecret", "Stalled")
    assert stalled_now is not None and stalled_now["status"] == "False"
    assert operator.forbidden() == []


def _failed_runs(operator: Operator, ns: Namespace, name: str) -> float | None:
    labels = {"namespace": ns.name, "policy": name, "outcome": "Failed"}
    return metric(operator.metrics(), "threadkeeper_prune_runs_total", **labels)


@pytest.mark.cluster
def test_a_policy_that_never_succeeded_is_covered_by_both_alerts(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    """ThreadkeeperReaperStalled needs a last-success series, ThreadkeeperPruneFailing an
    increasing Failed counter: both exist for a policy whose Secret never appeared."""
    ns = namespace
    created = ns.create_policy("never", schedule={"interval": "2s"}, checkpoints={"keepLast": 2})
    operator = start_operator(ns)
    eventually(lambda: (_failed_runs(operator, ns, "never") or 0) >= 2, what="failed runs")
    labels = {"namespace": ns.name, "policy": "never"}
    text = operator.metrics()
    since = schedule.parse_time(created["metadata"]["creationTimestamp"])
    assert since is not None
    last_success = "threadkeeper_prune_last_success_timestamp_seconds"
    assert metric(text, last_success, **labels) == since.timestamp()
    assert metric(text, "threadkeeper_prune_runs_total", **labels, outcome="Succeeded") == 0


FAILURES = {
    # The URL's database, the reason and message in the Ready condition, whether Stalled.
    "no-tables": ("empty_database_url", "PruneFailed", "not a threadkeeper database", False),
    "read-only": ("read_only_url", "PruneFailed", "permission denied", False),
    "down": (None, "DatabaseUnreachable", "cannot connect to the database", True),
}


@pytest.mark.cluster
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_each_failure_ends_in_a_condition_an_event_and_a_metric(
    namespace: Namespace,
    start_operator: StartOperator,
    request: pytest.FixtureRequest,
    failure: str,
) -> None:
    ns = namespace
    fixture, reason, message, stalls = FAILURES[failure]
    if fixture is None:
        url = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    else:
        url = request.getfixturevalue(fixture)
    if failure == "read-only":
        plant_idle_thread(ns.database_url)
    ns.create_secret(url)
    ns.create_policy("failing", schedule={"interval": "2s"}, threads={"maxIdle": "1h"})
    operator = start_operator(ns)

    ready = eventually(
        lambda: (c := ns.condition("failing", "Ready")) and c["status"] == "False" and c,
        what=f"Ready=False\n{operator.log()[-3000:]}",
    )
    assert ready["reason"] == reason
    assert message in ready["message"]
    stalled = ns.condition("failing", "Stalled")
    assert stalled is not None and stalled["status"] == ("True" if stalls else "False")
    eventually(
        lambda: [e for e in ns.events("failing") if e[:2] == ("Warning", reason)],
        what=f"a Warning {reason} event: {ns.events('failing')}",
    )
    eventually(lambda: (_failed_runs(operator, ns, "failing") or 0) >= 1, what="a Failed run")
    assert "Traceback" not in operator.log()
    assert operator.forbidden() == []


@pytest.mark.cluster
def test_a_deleted_policy_stops_ticking_and_loses_its_series(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    ns = namespace
    ns.create_secret()
    ns.create_policy("doomed", schedule={"interval": "1s"}, checkpoints={"keepLast": 1})
    operator = start_operator(ns)
    last_success = "threadkeeper_prune_last_success_timestamp_seconds"
    doomed = {"namespace": ns.name, "policy": "doomed"}
    eventually(lambda: ns.get("doomed").get("status", {}).get("lastSuccessTime"), what="a run")
    assert metric(operator.metrics(), last_success, **doomed)
    ns.custom.delete_namespaced_custom_object(GROUP, VERSION, ns.name, PLURAL, "doomed")

    eventually(lambda: 'policy="doomed"' not in operator.metrics(), what="the series to disappear")
    # Another policy's runs mark time: the deleted one's timer would have ticked meanwhile.
    ns.create_policy("after", schedule={"interval": "1s"}, checkpoints={"keepLast": 1})
    first = eventually(lambda: ns.get("after").get("status", {}).get("lastRunTime"), what="a run")
    eventually(lambda: ns.get("after")["status"]["lastRunTime"] != first, what="a second run")
    log = operator.log()
    assert "tick_after_deletion" not in log
    assert "the policy was deleted" not in log
    assert 'policy="doomed"' not in operator.metrics()
    assert operator.healthz() == 200


@pytest.mark.cluster
def test_no_finalizer_so_deletion_never_waits_for_the_operator(
    namespace: Namespace, start_operator: StartOperator
) -> None:
    ns = namespace
    ns.create_secret()
    ns.create_policy("gone", schedule={"interval": "1h"}, checkpoints={"keepLast": 1})
    operator = start_operator(ns)
    eventually(lambda: ns.get("gone").get("status", {}).get("lastRunTime"), what="a run")
    assert not ns.get("gone")["metadata"].get("finalizers")
    operator.stop()
    ns.custom.delete_namespaced_custom_object(GROUP, VERSION, ns.name, PLURAL, "gone")

    def deleted() -> bool:
        try:
            ns.get("gone")
        except ApiException as exc:
            return exc.status == 404
        return False

    eventually(deleted, within=15, what="the policy to disappear without the operator")


@pytest.mark.cluster
async def test_liveness_fails_when_the_timers_stop_ticking(
    kube: Cluster, namespace: Namespace
) -> None:
    """In-process operator whose heartbeat clock the test moves: 200, then 500 when stale."""
    ns = namespace
    ns.create_secret()
    ns.create_policy("probe", schedule={"interval": "1h"}, checkpoints={"keepLast": 1})
    fake = [1000.0]
    heartbeat = Heartbeat(stale_after=30, clock=lambda: fake[0])
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_operator(
            namespaces=[ns.name],
            connection=Connection(kube.as_service_account(ns.name, SERVICE_ACCOUNT)),
            registry=CollectorRegistry(),
            liveness_port=port,
            tick_interval=0.5,
            stop_flag=stop,
            ready_flag=ready,
            heartbeat=heartbeat,
        )
    )
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            url = f"http://127.0.0.1:{port}/healthz"
            deadline = time.monotonic() + 60
            # Wait for the first run to finish, so no run in flight refreshes the heartbeat.
            while (
                not (await asyncio.to_thread(ns.get, "probe")).get("status", {}).get("lastRunTime")
            ):
                assert time.monotonic() < deadline and not task.done(), "no first run"
                await asyncio.sleep(0.2)
            assert heartbeat.check() == {"policies": 1}
            assert (await client.get(url)).status_code == 200
            # The timers "stop ticking" (as if their tasks died) and time moves on.
            heartbeat.ticked = lambda uid: None  # type: ignore[method-assign]
            fake[0] += 600
            # kopf caches probe results for 10 s: poll until the cache expires.
            deadline = time.monotonic() + 30
            while (response := await client.get(url)).status_code == 200:
                assert time.monotonic() < deadline, f"liveness stayed 200: {response.text}"
                await asyncio.sleep(0.5)
            assert response.status_code == 500
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


# -- pure logic --------------------------------------------------------------------------------


def test_heartbeat_fails_when_a_timer_stops_ticking() -> None:
    now = [0.0]
    beat = Heartbeat(stale_after=30, watch_grace=60, clock=lambda: now[0])
    assert beat.check() == {"policies": 0}
    beat.seen("u1", "ns/p")
    now[0] = 29
    beat.check()
    beat.ticked("u1")
    now[0] = 58
    beat.check()
    now[0] = 60
    with pytest.raises(OperatorStalled, match="ns/p has not ticked"):
        beat.check()
    beat.gone("u1")
    assert beat.check() == {"policies": 0}


def test_heartbeat_tolerates_a_long_run_within_its_budget() -> None:
    now = [0.0]
    beat = Heartbeat(stale_after=30, watch_grace=1e9, clock=lambda: now[0])
    beat.seen("u1", "ns/p")
    beat.run_started("u1", budget=360)
    now[0] = 300
    beat.check()
    now[0] = 361
    with pytest.raises(OperatorStalled):
        beat.check()
    beat.run_finished("u1", status_patched=False)
    beat.check()


def test_heartbeat_fails_when_the_watch_does_not_echo_a_patch() -> None:
    now = [0.0]
    beat = Heartbeat(stale_after=1e9, watch_grace=60, clock=lambda: now[0])
    beat.seen("u1", "ns/p")
    now[0] = 10
    beat.run_finished("u1", status_patched=True)
    now[0] = 20
    beat.seen("u1", "ns/p")  # the MODIFIED event of that patch
    now[0] = 200
    beat.check()
    beat.run_finished("u1", status_patched=True)
    now[0] = 261
    with pytest.raises(OperatorStalled, match="watch"):
        beat.check()


def test_decide() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    hour = timedelta(hours=1)
    base = {"observedGeneration": 1, "nextRunTime": "2026-01-01T12:30:00Z"}

    def why(status: dict[str, Any], annotations: dict[str, str] | None = None) -> str | None:
        decision = schedule.decide(
            now=now, generation=1, annotations=annotations or {}, status=status, interval=hour
        )
        return decision.why.value if decision else None

    assert why({}) == "spec-changed"
    assert why(base) is None
    assert why({**base, "nextRunTime": "2026-01-01T12:00:00Z"}) == "scheduled"
    assert why({**base, "observedGeneration": 0}) == "spec-changed"
    assert why({"observedGeneration": 1, "lastRunTime": "2026-01-01T10:59:00Z"}) == "scheduled"
    assert why({"observedGeneration": 1, "lastRunTime": "2026-01-01T11:30:00Z"}) is None
    run_now = {schedule.RUN_NOW_ANNOTATION: "a"}
    assert why(base, run_now) == "run-now"
    assert why({**base, "lastRunNowHandled": "a"}, run_now) is None


def test_conditions_keep_their_transition_time() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = status.merge_conditions(
        None, [status.condition("Ready", True, "PruneSucceeded", "ok", generation=1)], now=t0
    )
    later = status.merge_conditions(
        first,
        [status.condition("Ready", True, "PruneSucceeded", "ok again", generation=2)],
        now=t0 + timedelta(hours=1),
    )
    assert later[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert later[0]["message"] == "ok again"
    flipped = status.merge_conditions(
        later,
        [status.condition("Ready", False, "PruneFailed", "no", generation=2)],
        now=t0 + timedelta(hours=2),
    )
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T02:00:00Z"
    assert json.dumps(flipped)
