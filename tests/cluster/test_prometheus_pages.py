"""Prometheus pages (issue 28, scenario 5) and the dashboard's queries, on the one-node cluster.

A real Prometheus Operator and Prometheus (`tests/cluster/monitoring.py`: built from the Go
module proxy, upstream's CRDs and RBAC) in a namespace of their own select the chart's
ServiceMonitors and PrometheusRule by the documented `monitoring.labels`. The chart is
installed with monitoring on, short scrape intervals (`monitoring.serviceMonitor.interval`),
a low `alerts.tableBytesWarning` and short `alerts.for.*`, the chart's ways to make alerts
fire in seconds without changing what they mean. The tests share the release and run in
file order; each records its figures as properties (`--junitxml`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from langgraph_sdk import get_sync_client
from psycopg import conninfo

from tests.chart import promql
from tests.cluster import monitoring
from tests.cluster.build import MonitoringBinaries
from tests.cluster.image import ImageRef
from tests.cluster.monitoring import Monitoring
from tests.cluster.node import NodeCluster
from tests.cluster.pgbridge import BridgePostgres, fresh_database_name
from tests.cluster.pods import WAIT, create_namespace, kubectl
from tests.cluster.release import CHART, RETENTION_CRD, Release, database_secret

pytestmark = pytest.mark.node
log = logging.getLogger(__name__)

RELEASE = "pages"
SECRET = "pages-database"
SERVICE_PORT = 8000
# The reaper's `--metrics-port` with the chart's defaults.
REAPER_METRICS_PORT = yaml.safe_load((CHART / "values.yaml").read_text())["reaper"]["metricsPort"]
# kube-prometheus-stack selects `release: <its release>`; the chart's README names this label.
LABELS = {"release": "kube-prometheus-stack"}
# Above the empty tables (measured and checked below), far below what the test writes.
TABLE_BYTES_WARNING = 2 * 1024 * 1024
# The tables' size is measured after each prune run and at most once a minute between runs.
STATS_EVERY_S = 60
FOR = "10s"
SCRAPE = "5s"
CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
# Incompressible text (hex of random bytes), under the service's 1 MiB body limit.
MESSAGE_BYTES = 256 * 1024
TURNS = 6
# What Grafana's `$__rate_interval` is at a 5 s scrape interval, rounded up.
RATE_INTERVAL = "1m"


@dataclass(frozen=True)
class Paged:
    release: Release
    prometheus: Monitoring
    database: str


@pytest.fixture(scope="module")
def paged(
    kube_node: NodeCluster,
    app_image: ImageRef,
    bridge_postgres: BridgePostgres,
    monitoring_binaries: MonitoringBinaries,
) -> Iterator[Paged]:
    suffix = uuid.uuid4().hex[:8]
    watcher, namespace = f"monitoring-{suffix}", f"pages-{suffix}"
    for name in (watcher, namespace):
        create_namespace(kube_node, name)
    database = bridge_postgres.create_database(fresh_database_name())
    database_secret(kube_node, namespace, SECRET, bridge_postgres.pod_url(database))
    release = Release(kube_node, namespace, RELEASE, app_image, SECRET)
    label_sets = [f"monitoring.labels.{key}={value}" for key, value in LABELS.items()]
    # The chart keeps its CRD on uninstall, owned by the release that made it; Helm refuses to
    # take it over under another release name. A second release uses `crds.create=false`, as
    # the chart README says for a CRD managed elsewhere, and this one leaves none behind.
    crd_before = bool(kubectl(kube_node, "get", "crd", RETENTION_CRD, "--ignore-not-found"))

    def install() -> None:
        release.install(
            "monitoring.serviceMonitor.enabled=true",
            f"monitoring.serviceMonitor.interval={SCRAPE}",
            "monitoring.serviceMonitor.scrapeTimeout=4s",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.dashboard.enabled=true",
            *label_sets,
            f"alerts.tableBytesWarning={TABLE_BYTES_WARNING}",
            f"alerts.for.tablesLarge={FOR}",
            f"alerts.for.reaperDown={FOR}",
            f"crds.create={str(not crd_before).lower()}",
        )

    try:
        with monitoring.running(
            kube_node, monitoring_binaries, watcher, LABELS, before_prometheus=install
        ) as prometheus:
            try:
                yield Paged(release, prometheus, database)
            finally:
                # While the operator's CRDs still exist: helm deletes the ServiceMonitors too.
                release.helm("uninstall", RELEASE, "--wait", check=False)
    finally:
        # An install that failed half-way leaves a release behind as well.
        release.helm("uninstall", RELEASE, "--wait", check=False)
        if not crd_before:
            kubectl(kube_node, "delete", "crd", RETENTION_CRD, "--ignore-not-found", check=False)
        kubectl(kube_node, "delete", "namespace", namespace, "--wait=false", check=False)


def _jobs(release: Release) -> tuple[str, str]:
    """The `job` label of the service's and the reaper's targets (their Services' names)."""
    return release.fullname, f"{release.reaper}-metrics"


def _alert(paged: Paged, name: str, state: str) -> list[dict[str, Any]]:
    return [
        alert
        for alert in paged.prometheus.alerts()
        if alert["labels"]["alertname"] == name
        and alert["labels"].get("namespace") == paged.release.namespace
        and alert["state"] == state
    ]


def _table_bytes(bridge_postgres: BridgePostgres, database: str) -> int:
    url = conninfo.make_conninfo(bridge_postgres.host_url, dbname=database)
    query = "SELECT sum(pg_total_relation_size(t::regclass))::bigint FROM unnest(%s::text[]) t"
    with psycopg.connect(url) as conn:
        row = conn.execute(query, (list(CHECKPOINT_TABLES),)).fetchone()
    assert row is not None
    size: int = row[0]
    return size


def _vacuum(bridge_postgres: BridgePostgres, database: str) -> None:
    """What autovacuum does after a mass delete: frees the emptied pages at the tables' ends."""
    url = conninfo.make_conninfo(bridge_postgres.host_url, dbname=database)
    with psycopg.connect(url, autocommit=True) as conn:
        for table in CHECKPOINT_TABLES:
            conn.execute(f"VACUUM {table}")


def _policy_status(release: Release) -> dict[str, Any]:
    got = kubectl(release.cluster, "get", "retentionpolicy", release.fullname,
                  "-n", release.namespace, "-o", "json")  # fmt: skip
    status: dict[str, Any] = json.loads(got).get("status") or {}
    return status


def test_prometheus_scrapes_the_service_and_reaper_pods(
    paged: Paged, record_property: Callable[[str, object], None]
) -> None:
    """The chart's ServiceMonitors, found by `monitoring.labels`: every pod a target, up."""
    service_job, reaper_job = _jobs(paged.release)
    pods = {p["metadata"]["name"] for p in paged.release.service_pods()}

    def up() -> dict[str, set[str]] | None:
        seen: dict[str, set[str]] = {service_job: set(), reaper_job: set()}
        for target in paged.prometheus.targets():
            labels = target["labels"]
            if labels.get("job") in seen and target["health"] == "up":
                seen[labels["job"]].add(labels["pod"])
        return seen if seen[service_job] == pods and len(seen[reaper_job]) == 1 else None

    seen, took = paged.prometheus.wait_for("service and reaper targets up", up, timeout=180)
    record_property("targets_up_s", round(took, 1))
    names = kubectl(paged.release.cluster, "get", "pods", "-n", paged.release.namespace,
                    "-o", "jsonpath={.items[*].metadata.name}")  # fmt: skip
    assert seen[reaper_job] <= {p for p in names.split() if p.startswith(paged.release.reaper)}
    rules = paged.prometheus.api("rules")["groups"]
    assert {g["name"] for g in rules} >= {"threadkeeper-reaper", "threadkeeper-service"}


def _grow(paged: Paged, url: str) -> None:
    sdk = get_sync_client(url=url)
    thread = sdk.threads.create()
    for _ in range(TURNS):
        message: Any = {"role": "user", "content": os.urandom(MESSAGE_BYTES // 2).hex()}
        sdk.runs.wait(thread["thread_id"], "agent", input={"messages": [message]})


def _talk(url: str) -> None:
    sdk = get_sync_client(url=url)
    thread = sdk.threads.create()
    for turn in range(3):
        message: Any = {"role": "user", "content": f"turn {turn}"}
        sdk.runs.wait(thread["thread_id"], "agent", input={"messages": [message]})


def test_large_tables_page_and_a_prune_resolves_it(
    paged: Paged,
    bridge_postgres: BridgePostgres,
    port_forward: Callable[..., str],
    record_property: Callable[[str, object], None],
) -> None:
    """`ThreadkeeperCheckpointTablesLarge` fires once the tables pass the warning size, and
    resolves after a prune deleted the threads and (auto)vacuum gave the emptied pages back."""
    release = paged.release
    before = _table_bytes(bridge_postgres, paged.database)
    assert before < TABLE_BYTES_WARNING, f"the empty tables take {before} B already"
    _grow(paged, port_forward(release.namespace, f"service/{release.fullname}", SERVICE_PORT))
    grown = _table_bytes(bridge_postgres, paged.database)
    assert grown > TABLE_BYTES_WARNING, f"the tables only grew to {grown} B"
    name = "ThreadkeeperCheckpointTablesLarge"
    _, to_pending = paged.prometheus.wait_for(
        f"{name} pending", lambda: _alert(paged, name, "pending"), timeout=STATS_EVERY_S + 60
    )
    firing, to_fire = paged.prometheus.wait_for(
        f"{name} firing", lambda: _alert(paged, name, "firing"), timeout=90
    )
    (alert,) = firing
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["policy"] == release.fullname
    assert float(alert["value"]) >= TABLE_BYTES_WARNING
    record_property("tables_large_pending_s", round(to_pending, 1))
    record_property("tables_large_fire_s", round(to_pending + to_fire, 1))

    # A prune: every thread idle for more than a second goes (a spec edit runs the policy).
    runs_before = _policy_status(release).get("lastRunTime")
    patch = {"spec": {"threads": {"maxIdle": "1s"}}}
    kubectl(release.cluster, "patch", "retentionpolicy", release.fullname, "-n",
            release.namespace, "--type=merge", "-p", json.dumps(patch))  # fmt: skip
    started = time.monotonic()

    def pruned() -> dict[str, Any] | None:
        status = _policy_status(release)
        last: dict[str, Any] = status.get("lastRun", {})
        done = status.get("lastRunTime") != runs_before and last.get("outcome") == "Succeeded"
        return last if done else None

    last, _ = paged.prometheus.wait_for("the prune", pruned, timeout=120)
    assert last["threadsDeleted"]["idle"] >= 1, last
    _vacuum(bridge_postgres, paged.database)
    after = _table_bytes(bridge_postgres, paged.database)
    assert after < TABLE_BYTES_WARNING, f"the tables still take {after} B"
    paged.prometheus.wait_for(
        f"{name} resolved",
        lambda: not _alert(paged, name, "firing") and not _alert(paged, name, "pending"),
        timeout=STATS_EVERY_S + 60,
    )
    record_property("tables_large_resolve_s", round(time.monotonic() - started, 1))


def _dashboard(release: Release) -> dict[str, Any]:
    got = kubectl(release.cluster, "get", "configmap", f"{release.fullname}-dashboard",
                  "-n", release.namespace, "-o", "json")  # fmt: skip
    (text,) = json.loads(got)["data"].values()
    dashboard: dict[str, Any] = json.loads(text)
    return dashboard


def _panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) with the dashboard's default variables, as Grafana sends it."""
    defaults = promql.variable_defaults(dashboard)
    for panel in (p for p in dashboard["panels"] if p["type"] != "row"):
        for target in panel["targets"]:
            yield panel["title"], promql.as_grafana_sends(target["expr"], defaults, RATE_INTERVAL)


def _scraped_names(release: Release) -> set[str]:
    """Metric names of one real scrape of every service pod and of the reaper pod."""
    names: set[str] = set()
    selector = f"app.kubernetes.io/instance={release.name}"
    listed = kubectl(release.cluster, "get", "pods", "-n", release.namespace, "-l", selector,
                     "-o", "json")  # fmt: skip
    pods = json.loads(listed)
    for pod in pods["items"]:
        component = pod["metadata"]["labels"].get("app.kubernetes.io/component")
        port = {"service": SERVICE_PORT, "reaper": REAPER_METRICS_PORT}.get(component)
        if port is not None and pod["status"].get("podIP"):
            url = f"http://{pod['status']['podIP']}:{port}/metrics"
            names |= monitoring.series(httpx.get(url, timeout=10).text)
    return names


def test_every_dashboard_panel_has_a_result_in_prometheus(
    paged: Paged,
    port_forward: Callable[..., str],
    record_property: Callable[[str, object], None],
) -> None:
    """The dashboard the chart ships, as installed: each metric its queries name is in a real
    scrape of the pods, and each panel query, with the dashboard's default variables, returns
    a value (not NaN) from this Prometheus within a minute of some turns."""
    dashboard = _dashboard(paged.release)
    queries = list(_panel_queries(dashboard))
    scraped = _scraped_names(paged.release)
    named = {name for _, expr in queries for name in promql.metric_names(expr)}
    assert named, "the dashboard names no metric"
    assert named <= scraped, f"named by the dashboard, not scraped: {sorted(named - scraped)}"
    # Turns and requests inside the panels' rate window; the prune ran in the test before.
    _talk(port_forward(paged.release.namespace, f"service/{paged.release.fullname}", SERVICE_PORT))

    def unanswered() -> list[tuple[str, str]]:
        return [
            (title, expr)
            for title, expr in queries
            if not any(v["value"][1] != "NaN" for v in paged.prometheus.query(expr))
        ]

    deadline = time.monotonic() + 60
    while (empty := unanswered()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not empty, f"panels without a value: {empty}"
    record_property("dashboard_queries", len(queries))


def test_a_reaper_that_stays_down_pages(
    paged: Paged, record_property: Callable[[str, object], None]
) -> None:
    """`ThreadkeeperReaperDown` fires when the reaper is scaled to 0 (its target goes)."""
    release = paged.release
    name = "ThreadkeeperReaperDown"
    assert not _alert(paged, name, "firing")
    kubectl(release.cluster, "scale", f"deployment/{release.reaper}", "--replicas=0",
            "-n", release.namespace)  # fmt: skip
    try:
        kubectl(release.cluster, "wait", "--for=delete", "pod", "-l",
                "app.kubernetes.io/component=reaper", "-n", release.namespace,
                f"--timeout={WAIT}")  # fmt: skip
        firing, took = paged.prometheus.wait_for(
            f"{name} firing", lambda: _alert(paged, name, "firing"), timeout=180
        )
        record_property("reaper_down_fire_s", round(took, 1))
        assert firing[0]["labels"]["severity"] == "warning"
    finally:
        kubectl(release.cluster, "scale", f"deployment/{release.reaper}", "--replicas=1",
                "-n", release.namespace)  # fmt: skip
