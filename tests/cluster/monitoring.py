"""The Prometheus Operator and a Prometheus on a `NodeCluster`, from the monitoring set.

Images: one layer per binary of `build --monitoring` (static Go binaries, at the paths
upstream's images use: `/bin/operator`, `/bin/prometheus`, `/bin/prometheus-config-reloader`),
written as OCI archives next to the set and imported as `threadkeeper.local/<name>:<version>`.
Manifests: the operator's CRDs and its example RBAC and Deployment, read from the operator's
module source at the pinned version (`go mod download`, go.sum verified), with our images and
namespace; then the example ServiceAccount and ClusterRole of Prometheus and a `Prometheus`
that selects ServiceMonitors and PrometheusRules by one label in every namespace.
Prometheus' HTTP API is reached from the host at its pod IP (the bridge is the host's).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.cluster import build
from tests.cluster.build import MonitoringBinaries
from tests.cluster.errors import ClusterError
from tests.cluster.image import ImageRef, binary_archive
from tests.cluster.node import LOCAL_REGISTRY_NAME, NodeCluster
from tests.cluster.pods import WAIT, kubectl

OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_NAME = "pages"
PROMETHEUS_PORT = 9090
# Short, so targets and rules settle in seconds (the chart's ServiceMonitors set their own).
SCRAPE_INTERVAL = "5s"
EVALUATION_INTERVAL = "5s"
_OPERATOR_ARGS_DROPPED = ("--kubelet-service", "--kubelet-endpoints", "--kubelet-endpointslice")
_CLUSTER_KINDS = ("ClusterRole", "ClusterRoleBinding")


def prometheus_release() -> str:
    """Prometheus' own version of the pinned module: v0.3XY.Z is Prometheus v3.XY.Z."""
    found = re.fullmatch(r"v0\.3(\d\d)\.(\d+)", build.PROMETHEUS_VERSION)
    if not found:
        raise ClusterError(f"cannot map {build.PROMETHEUS_VERSION} to a Prometheus 3 release")
    return f"v3.{int(found[1])}.{found[2]}"


def _images() -> dict[str, ImageRef]:
    return {
        "operator": ImageRef(
            f"{LOCAL_REGISTRY_NAME}/prometheus-operator", build.PROMETHEUS_OPERATOR_VERSION
        ),
        "prometheus-config-reloader": ImageRef(
            f"{LOCAL_REGISTRY_NAME}/prometheus-config-reloader", build.PROMETHEUS_OPERATOR_VERSION
        ),
        "prometheus": ImageRef(f"{LOCAL_REGISTRY_NAME}/prometheus", prometheus_release()),
    }


def image_archives(binaries: MonitoringBinaries) -> dict[str, tuple[Path, ImageRef]]:
    """An OCI archive per binary, made once per cached set (beside it, in the cache)."""
    return {
        name: (
            binary_archive(binaries.bin_dir.parent / f"image-{name}.tar", ref, binaries[name]),
            ref,
        )
        for name, ref in _images().items()
    }


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _crd_name(path: Path) -> str:
    """`<group>_<plural>.yaml` (upstream's file names) holds the CRD `<plural>.<group>`."""
    group, plural = path.stem.split("_", 1)
    return f"{plural}.{group}"


def _apply(cluster: NodeCluster, documents: list[Mapping[str, Any]]) -> None:
    stream = "\n---\n".join(yaml.safe_dump(dict(doc)) for doc in documents)
    kubectl_input(cluster, stream, "apply", "-f", "-")


def kubectl_input(cluster: NodeCluster, stdin: str, *args: str) -> str:
    result = subprocess.run(
        [str(cluster.kubectl), *args],
        env=cluster.env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def _operator_manifests(source: Path, namespace: str, images: dict[str, ImageRef]) -> list[Any]:
    """Upstream's example RBAC and Deployment of the operator, in `namespace`, our images."""
    docs: list[dict[str, Any]] = []
    for path in sorted((source / "example/rbac/prometheus-operator").glob("*.yaml")):
        for doc in _documents(path):
            if doc["kind"] in ("ServiceMonitor", "Service"):
                continue  # Nothing here scrapes the operator itself.
            docs.append(doc)
    for doc in docs:
        if doc["kind"] not in _CLUSTER_KINDS:
            doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", ()):
            subject["namespace"] = namespace
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["image"] = str(images["operator"])
            args = [a for a in container["args"] if not a.startswith(_OPERATOR_ARGS_DROPPED)]
            container["args"] = [
                f"--prometheus-config-reloader={images['prometheus-config-reloader']}"
                if a.startswith("--prometheus-config-reloader=")
                else a
                for a in args
            ]
    return docs


def _prometheus_manifests(
    source: Path, namespace: str, images: dict[str, ImageRef], labels: Mapping[str, str]
) -> list[Any]:
    docs: list[dict[str, Any]] = []
    for name in ("service-account", "cluster-role", "cluster-role-binding"):
        docs += _documents(source / f"example/rbac/prometheus/prometheus-{name}.yaml")
    for doc in docs:
        if doc["kind"] not in _CLUSTER_KINDS:
            doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", ()):
            subject["namespace"] = namespace
    docs.append(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": {"name": PROMETHEUS_NAME, "namespace": namespace},
            "spec": {
                "image": str(images["prometheus"]),
                "version": images["prometheus"].tag,
                "replicas": 1,
                "serviceAccountName": "prometheus",
                "scrapeInterval": SCRAPE_INTERVAL,
                "evaluationInterval": EVALUATION_INTERVAL,
                # The documented `monitoring.labels`, as kube-prometheus-stack selects them.
                "serviceMonitorSelector": {"matchLabels": dict(labels)},
                "serviceMonitorNamespaceSelector": {},
                "ruleSelector": {"matchLabels": dict(labels)},
                "ruleNamespaceSelector": {},
            },
        }
    )
    return docs


@dataclass
class Monitoring:
    """A running operator and Prometheus; `api` reads Prometheus' HTTP API from the host."""

    cluster: NodeCluster
    namespace: str
    cluster_objects: list[tuple[str, str]]
    prometheus_url: str = ""

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.prometheus_url}/api/v1/{path}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float, every: float = 1.0
    ) -> tuple[Any, float]:
        """Poll `check` until it returns something truthy; returns it and the seconds taken."""
        start = time.monotonic()
        while True:
            got = check()
            if got:
                return got, time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{what}: not within {timeout:.0f} s")
            time.sleep(every)

    def stop(self) -> None:
        kubectl(self.cluster, "delete", "namespace", self.namespace, "--wait=false", check=False)
        for kind, name in self.cluster_objects:
            kubectl(self.cluster, "delete", kind, name, "--ignore-not-found", check=False)


def _pod_ip(cluster: NodeCluster, namespace: str, selector: str) -> str:
    kubectl(cluster, "wait", "--for=condition=Ready", "pod", "-l", selector, "-n", namespace,
            f"--timeout={WAIT}")  # fmt: skip
    ips = kubectl(cluster, "get", "pods", "-n", namespace, "-l", selector,
                  "-o", "jsonpath={.items[*].status.podIP}")  # fmt: skip
    (ip,) = ips.split()
    return ip


@contextlib.contextmanager
def running(
    cluster: NodeCluster,
    binaries: MonitoringBinaries,
    namespace: str,
    labels: Mapping[str, str],
    before_prometheus: Callable[[], None] = lambda: None,
) -> Iterator[Monitoring]:
    """Import the images, apply CRDs, operator and Prometheus; yield once Prometheus is Ready.

    `before_prometheus` runs once the CRDs and the operator are there: objects it makes (a
    release's ServiceMonitors) are in Prometheus' first configuration. Made later, they reach
    the running pod only with the kubelet's next sync of the config Secret, about a minute.
    The namespace must exist. Everything applied, cluster-scoped objects included, is
    deleted on the way out, also when starting fails.
    """
    images = {}
    for name, (archive, ref) in image_archives(binaries).items():
        cluster.import_image(archive, ref)
        images[name] = ref
    source = build.module_source("prometheus-operator", OPERATOR_MODULE)
    crds = source / "example/prometheus-operator-crd"
    operator = _operator_manifests(source, namespace, images)
    prometheus = _prometheus_manifests(source, namespace, images, labels)
    cluster_objects = [(d["kind"], d["metadata"]["name"]) for d in [*operator, *prometheus]
                       if d["kind"] in _CLUSTER_KINDS]  # fmt: skip
    cluster_objects += [("CustomResourceDefinition", _crd_name(p)) for p in crds.glob("*.yaml")]
    monitoring = Monitoring(cluster, namespace, cluster_objects)
    try:
        # Server-side: the CRDs outgrow the last-applied annotation of a client-side apply.
        kubectl(cluster, "apply", "--server-side", "-f", str(crds))
        kubectl(cluster, "wait", "--for=condition=Established", "crd", "--all",
                f"--timeout={WAIT}")  # fmt: skip
        _apply(cluster, operator)
        before_prometheus()
        _apply(cluster, prometheus)
        monitoring.prometheus_url = _prometheus_url(cluster, namespace)
        yield monitoring
    finally:
        monitoring.stop()


def _prometheus_url(cluster: NodeCluster, namespace: str) -> str:
    selector = f"app.kubernetes.io/name=prometheus,prometheus={PROMETHEUS_NAME}"
    # The operator makes the StatefulSet; wait for its pod to exist before waiting on it.
    deadline = time.monotonic() + 180
    while not kubectl(cluster, "get", "pods", "-n", namespace, "-l", selector, "-o", "name"):
        if time.monotonic() > deadline:
            logs = kubectl(cluster, "logs", "-n", namespace, "deploy/prometheus-operator",
                           "--tail=30", check=False)  # fmt: skip
            raise AssertionError(f"the operator made no Prometheus pod; its log:\n{logs}")
        time.sleep(1)
    try:
        ip = _pod_ip(cluster, namespace, selector)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_pod_report(cluster, namespace, selector)}") from exc
    return f"http://{ip}:{PROMETHEUS_PORT}"


def _pod_report(cluster: NodeCluster, namespace: str, selector: str) -> str:
    """The pods' container states and their containers' last log lines, for a failure."""
    states = kubectl(cluster, "get", "pods", "-n", namespace, "-l", selector, "-o",
                     "jsonpath={.items[*].status.containerStatuses}", check=False)  # fmt: skip
    logs = kubectl(cluster, "logs", "-n", namespace, "-l", selector, "--all-containers",
                   "--prefix", "--tail=20", check=False)  # fmt: skip
    return f"container states: {states}\nlogs:\n{logs}"


def series(stream: str) -> set[str]:
    """Metric names of a Prometheus text exposition (what a scrape returns)."""
    names = set()
    for line in io.StringIO(stream):
        if line.startswith("#") or not line.strip():
            continue
        names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dump(monitoring: Monitoring) -> str:
    """What Prometheus sees, for a failure message."""
    try:
        return json.dumps({"targets": monitoring.targets(), "alerts": monitoring.alerts()})[:4000]
    except (httpx.HTTPError, AssertionError) as exc:
        return f"(Prometheus did not answer: {exc})"
