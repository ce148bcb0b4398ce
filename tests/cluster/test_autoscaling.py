"""The chart's HorizontalPodAutoscaler, fed by metrics-server, scales the service under load.

Issue 28, scenario 3: "also with the HPA enabled, driven by its metric". The chart installed
with `autoscaling.enabled=true` (its HPA targets CPU utilisation of
`service.resources.requests.cpu`, left at the chart's default), metrics-server built here
(`metrics_server.py`), the controller-manager's HPA loop shortened (`node.HPA_SYNC_PERIOD`,
`HPA_DOWNSCALE_WINDOW`). Before the load, an idle replica's utilisation must leave the HPA room
to come back down from its maximum (else the test stops there, saying so). Conversations from
a pod through the Service drive the CPU up; the HPA adds replicas while they run, every
conversation ends whole, and once the load stops it scales back to its minimum. Run with
`pytest -m node tests/cluster -k autoscaling` (root).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster import conversations, hpa, load
from tests.cluster.build import MetricsBinaries
from tests.cluster.image import ImageRef
from tests.cluster.metrics_server import (
    API_SERVICE,
    METRICS_API,
    MetricsServer,
    parse_cpu,
    running,
)
from tests.cluster.node import NodeCluster
from tests.cluster.pgbridge import BridgePostgres
from tests.cluster.pods import WAIT_S, apply, kubectl, run_pod, wait_for_success
from tests.cluster.release import Installed, Release, installed_release, ready

# The users' day's load (32 conversations, the issue's "30+") and its checks.

pytestmark = pytest.mark.node
log = logging.getLogger(__name__)

RELEASE = "hpa"
MIN_REPLICAS = 1
MAX_REPLICAS = 3
TARGET_PERCENT = 50
# An idle replica is not at 0 (its background loops run), and replicas that have just carried
# the load idle a little higher than a fresh one: the margin is for that.
IDLE_MARGIN = 1.5
IDLE_LIMIT_PERCENT = hpa.idle_limit(MIN_REPLICAS, MAX_REPLICAS, TARGET_PERCENT, IDLE_MARGIN)
# A new pod's first readings average its start-up in (metrics-server rates its first sample
# from the container's start); a few 15 s scrapes later they show it idle.
IDLE_SETTLE_S = 90
# No think time: the load is what drives the CPU.
THINK_S = 0.0
# Users who connect once the HPA has scaled: enough connections that kube-proxy's random
# choice leaves a replica without any with a chance of (2/3)^32, about 2 in a million.
LATE_USERS = 32
LATE_TURNS = 2
# Scraped every 15 s, read by the HPA every 5 s, then a pod start; generous for a shared
# 2-core machine.
SCALE_UP_S = 300
# The downscale window, a scrape or two that shows the idle pods, the pods' drain.
SCALE_DOWN_S = 300


@pytest.fixture(scope="module")
def metrics(kube_node: NodeCluster, metrics_binaries: MetricsBinaries) -> Iterator[MetricsServer]:
    with running(kube_node, metrics_binaries) as server:
        yield server


@pytest.fixture(scope="module")
def installed(
    kube_node: NodeCluster,
    app_image: ImageRef,
    bridge_postgres: BridgePostgres,
    metrics: MetricsServer,
) -> Iterator[Installed]:
    sets = (
        "autoscaling.enabled=true",
        f"autoscaling.minReplicas={MIN_REPLICAS}",
        f"autoscaling.maxReplicas={MAX_REPLICAS}",
        f"autoscaling.targetCPUUtilizationPercentage={TARGET_PERCENT}",
    )
    with installed_release(kube_node, app_image, bridge_postgres, RELEASE, *sets) as done:
        yield done


def _selector() -> str:
    return f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=service"


def _hpa(release: Release) -> dict[str, Any]:
    args = ("get", "hpa", release.fullname, "-n", release.namespace, "-o", "json")
    got: dict[str, Any] = json.loads(kubectl(release.cluster, *args))
    return got


def _hpa_status(release: Release) -> dict[str, Any]:
    status: dict[str, Any] = _hpa(release).get("status") or {}
    return status


def _hpa_cpu(status: dict[str, Any]) -> int | None:
    """The utilisation in percent the HPA last read from the metrics API, if it has one."""
    for metric in status.get("currentMetrics") or []:
        if metric.get("type") == "Resource" and metric["resource"]["name"] == "cpu":
            value: int | None = metric["resource"]["current"].get("averageUtilization")
            return value
    return None


def _poll(what: str, check: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
    """`check()` until it returns something truthy; `describe()` says why not, on timeout."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s; {describe()}"
        time.sleep(1)
    return got


def _ready_count(release: Release) -> int:
    return sum(1 for pod in release.service_pods() if ready(pod))


def _desired(release: Release) -> int:
    desired: int = _hpa_status(release).get("desiredReplicas", 0)
    return desired


def _describe(release: Release) -> Callable[[], str]:
    return lambda: f"HPA status: {json.dumps(_hpa_status(release))}"


def _wait_until_fed(release: Release, metrics: MetricsServer) -> dict[str, Any]:
    """The metrics API answers for every service pod and the HPA reads its metric from it."""
    namespace = release.namespace

    def every_pod_measured() -> bool:
        return len(metrics.pod_metrics(namespace, _selector())) == len(release.service_pods())

    _poll("metrics for every service pod", every_pod_measured, WAIT_S,
          lambda: f"metrics: {metrics.pod_metrics(namespace, _selector())}")  # fmt: skip
    _poll("the HPA reading CPU", lambda: _hpa_cpu(_hpa_status(release)) is not None, WAIT_S,
          _describe(release))  # fmt: skip
    return _hpa_status(release)


def _requested_millicores(pod: dict[str, Any]) -> int:
    """The pod's CPU request, the HPA's 100%."""
    containers = pod["spec"]["containers"]
    return sum(
        parse_cpu(c.get("resources", {}).get("requests", {}).get("cpu", "0")) for c in containers
    )


def _idle_cpu(release: Release, metrics: MetricsServer) -> int:
    """The HPA's reading of the idle service, once it is low enough for the HPA to come back
    from MAX_REPLICAS replicas to MIN_REPLICAS; a clear failure if it does not settle there
    (a request too small for what an idle replica uses), before any load."""
    deadline = time.monotonic() + IDLE_SETTLE_S
    while (cpu := _hpa_cpu(_hpa_status(release))) is None or cpu > IDLE_LIMIT_PERCENT:
        if time.monotonic() >= deadline:
            requests = {
                p["metadata"]["name"]: _requested_millicores(p) for p in release.service_pods()
            }
            usage = metrics.pod_metrics(release.namespace, _selector())
            pytest.fail(
                f"idle, the service uses {cpu}% of its CPU request (millicores used {usage}, "
                f"requested {requests}) after {IDLE_SETTLE_S} s; above {IDLE_LIMIT_PERCENT:.1f}%, "
                f"the most that leaves the HPA (target {TARGET_PERCENT}%) room to bring "
                f"{MAX_REPLICAS} idle replicas back to {MIN_REPLICAS}: raise "
                "service.resources.requests.cpu"
            )
        time.sleep(1)
    return cpu


def _scaled_up(release: Release) -> bool:
    desired = _desired(release)
    return desired > MIN_REPLICAS and _ready_count(release) == desired


def _served(release: Release) -> dict[str, int]:
    """API requests each service pod has answered so far (its `request` log events)."""
    counts = {}
    for pod in release.service_pods():
        name = pod["metadata"]["name"]
        logs = kubectl(release.cluster, "logs", "-n", release.namespace, name, check=False)
        counts[name] = sum(1 for line in logs.splitlines() if _is_request(line))
    return counts


def _is_request(line: str) -> bool:
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("event") == "request"


def _scaled_down(release: Release, readings: list[int]) -> bool:
    """Back at MIN_REPLICAS; `readings` gains each new CPU reading while more replicas are left."""
    status = _hpa_status(release)
    cpu = _hpa_cpu(status)
    more = status.get("currentReplicas", 0) > MIN_REPLICAS
    if cpu is not None and more and readings[-1:] != [cpu]:
        readings.append(cpu)
    at_min = status.get("desiredReplicas") == MIN_REPLICAS
    return at_min and len(release.service_pods()) == MIN_REPLICAS


def test_metrics_server_is_removed_also_when_its_user_fails(
    kube_node: NodeCluster, metrics_binaries: MetricsBinaries
) -> None:
    """Everything `running` applied is gone after a failure inside it: a stale APIService
    would break discovery (`helm`, `kubectl`) for every later test."""
    with (
        pytest.raises(RuntimeError, match="a failing test"),
        running(kube_node, metrics_binaries) as server,
    ):
        assert server.raw(f"{METRICS_API}/nodes")["items"]
        raise RuntimeError("a failing test")
    assert ("APIService", API_SERVICE, None) in server.objects
    for kind, name, namespace in server.objects:
        where = ("-n", namespace) if namespace else ()
        assert not kubectl(kube_node, "get", kind, name, *where, "--ignore-not-found"), name
    assert "metrics.k8s.io" not in kubectl(kube_node, "api-versions")


@pytest.mark.timeout(1200)
def test_the_hpa_scales_the_service_up_under_load_and_back_down(
    installed: Installed, metrics: MetricsServer, record_property: Callable[[str, object], None]
) -> None:
    release = installed.release
    cluster, namespace = release.cluster, release.namespace
    hpa = _hpa(release)
    assert hpa["spec"]["scaleTargetRef"]["name"] == release.fullname
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == TARGET_PERCENT
    idle = _wait_until_fed(release, metrics)
    assert idle["desiredReplicas"] == MIN_REPLICAS, idle
    idle_cpu = _idle_cpu(release, metrics)
    idle_millicores = metrics.pod_metrics(namespace, _selector())
    (request_millicores,) = {_requested_millicores(pod) for pod in release.service_pods()}
    top_idle = kubectl(cluster, "top", "pods", "-n", namespace, "-l", _selector())

    label = uuid.uuid4().hex[:8]
    apply(
        cluster,
        load.client_pod(release, "load", label, load.CONVERSATIONS, load.MAX_TURNS, THINK_S),
    )
    load.wait_for_line(cluster, namespace, "load", conversations.STARTED)
    started = time.monotonic()
    try:
        # The HPA asks for more replicas, and they come up Ready while the load runs.
        _poll("the HPA scaling up", lambda: _desired(release) > MIN_REPLICAS, SCALE_UP_S,
              _describe(release))  # fmt: skip
        asked_s = time.monotonic() - started
        peak = _hpa_status(release)
        # Until every replica it asks for is Ready.
        _poll("the asked replicas ready", lambda: _scaled_up(release), SCALE_UP_S,
              lambda: f"ready: {_ready_count(release)}; {_describe(release)()}")  # fmt: skip
        ready_s = time.monotonic() - started
        scaled = _hpa_status(release)
        # The running conversations keep their connections (a client each, keep-alive) on
        # the pod they opened them to: kube-proxy balances connections, not requests. Users
        # who connect after the rise are spread over every replica, the new ones included.
        before = _served(release)
        late = load.client_pod(
            release, "late", uuid.uuid4().hex[:8], LATE_USERS, LATE_TURNS, THINK_S
        )
        late_summary = load.summary_of(run_pod(cluster, late))
        served_late = {pod: n - before.get(pod, 0) for pod, n in _served(release).items()}
        top_loaded = kubectl(cluster, "top", "pods", "-n", namespace, "-l", _selector())
    finally:
        kubectl(cluster, "exec", "-n", namespace, "load", "--",
                "python", "-c", f"open({load.STOP_FILE!r}, 'w').close()", check=False)  # fmt: skip
    summary = load.summary_of(wait_for_success(cluster, namespace, "load", wait_s=3 * WAIT_S))
    stopped = time.monotonic()

    # Back to the minimum once the load is gone: the downscale window, then the drain.
    # The HPA's readings of the replicas the load left, idle (the idle margin is for them).
    after: list[int] = []
    _poll("the HPA scaling down", lambda: _scaled_down(release, after), SCALE_DOWN_S,
          _describe(release))  # fmt: skip
    down_s = time.monotonic() - stopped

    figures = {
        "cpu_request_millicores": request_millicores,
        "idle_cpu_percent": idle_cpu,
        "idle_cpu_millicores": sorted(idle_millicores.values()),
        "idle_cpu_percent_limit": round(IDLE_LIMIT_PERCENT, 1),
        "cpu_percent_of_replicas_after_load": after,
        "peak_cpu_percent": _hpa_cpu(peak),
        "desired_at_first_rise": peak["desiredReplicas"],
        "replicas_reached": max(scaled["currentReplicas"], scaled["desiredReplicas"]),
        "seconds_to_scale_up_asked": round(asked_s, 1),
        "seconds_to_asked_replicas_ready": round(ready_s, 1),
        "requests_per_replica_while_late_users_ran": sorted(served_late.values(), reverse=True),
        "seconds_to_scale_down": round(down_s, 1),
        "load": {k: v for k, v in summary.items() if k != "thread_ids"},
        "late_users": {k: v for k, v in late_summary.items() if k != "thread_ids"},
    }
    record_property("hpa", figures)
    log.info("hpa figures: %s\nidle:\n%s\nloaded:\n%s", figures, top_idle, top_loaded)
    assert summary["stopped_by_file"], "a conversation hit the turn limit before the stop"
    load.assert_clean(summary)
    assert summary["conversations"] == load.CONVERSATIONS
    load.assert_clean(late_summary)
    assert len(served_late) == figures["replicas_reached"], served_late
    assert all(served_late.values()), (
        f"a replica answered nothing while the late users ran: {served_late}"
    )
    assert MIN_REPLICAS < figures["replicas_reached"] <= MAX_REPLICAS
    peak_cpu = figures["peak_cpu_percent"]
    assert isinstance(peak_cpu, int) and peak_cpu > TARGET_PERCENT, peak
