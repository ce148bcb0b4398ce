"""metrics-server on a `NodeCluster`: the resource metrics API a HorizontalPodAutoscaler reads.

The image is one layer holding the binary of `build --metrics` (`/bin/metrics-server`, its
entrypoint), written beside the cached set and imported as
`threadkeeper.local/metrics-server:<version>`. The manifests are upstream's
(`manifests/base`: RBAC, Service, Deployment, the `v1beta1.metrics.k8s.io` APIService) read
from the module source at the pinned version, with kustomize's `commonLabels` applied by
hand, our image, and the flags this node needs: the kubelet is reached at its InternalIP
(the bridge address) and its serving certificate, issued by the cluster CA, is not checked
(`--kubelet-insecure-tls`, as upstream's README says for test clusters); metrics are scraped
every `METRIC_RESOLUTION`. The kubelet authenticates metrics-server's ServiceAccount token
and authorizes `nodes/metrics` by webhook, as it does every client; the API server reaches
metrics-server through the aggregation layer (`controlplane._aggregation_args`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import build
from tests.cluster.build import MetricsBinaries
from tests.cluster.image import ImageRef, binary_archive
from tests.cluster.node import LOCAL_REGISTRY_NAME, NodeCluster
from tests.cluster.pods import WAIT, WAIT_S, apply, kubectl

MODULE = "sigs.k8s.io/metrics-server"
NAMESPACE = "kube-system"
NAME = "metrics-server"
API_SERVICE = "v1beta1.metrics.k8s.io"
METRICS_API = "/apis/metrics.k8s.io/v1beta1"
# metrics-server's scrape interval; upstream's manifest says 15 s, its lowest sane value.
METRIC_RESOLUTION = "15s"
# kustomization.yaml's commonLabels, which kustomize writes into names and selectors.
_LABELS = {"k8s-app": NAME}
_ARGS_REPLACED = ("--kubelet-preferred-address-types=", "--metric-resolution=")


def image_ref() -> ImageRef:
    return ImageRef(f"{LOCAL_REGISTRY_NAME}/{NAME}", build.METRICS_SERVER_VERSION)


def image_archive(binaries: MetricsBinaries) -> Path:
    """The image's OCI archive, made once per cached set (beside it, in the cache)."""
    return binary_archive(
        binaries.bin_dir.parent / f"image-{NAME}.tar", image_ref(), binaries[NAME]
    )


def _labelled(doc: dict[str, Any]) -> dict[str, Any]:
    """What kustomize's commonLabels does to one object: labels, selectors, pod template."""
    doc["metadata"].setdefault("labels", {}).update(_LABELS)
    if doc["kind"] == "Deployment":
        doc["spec"]["selector"] = {"matchLabels": dict(_LABELS)}
        doc["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(_LABELS)
    if doc["kind"] == "Service":
        doc["spec"]["selector"] = dict(_LABELS)
    return doc


def _container(doc: dict[str, Any], image: ImageRef) -> None:
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["image"] = str(image)
    kept = [a for a in container["args"] if not a.startswith(_ARGS_REPLACED)]
    container["args"] = [
        *kept,
        "--kubelet-preferred-address-types=InternalIP",
        "--kubelet-insecure-tls",
        f"--metric-resolution={METRIC_RESOLUTION}",
    ]


def manifests(source: Path, image: ImageRef) -> list[dict[str, Any]]:
    """Upstream's `manifests/base` objects with our image and flags."""
    docs: list[dict[str, Any]] = []
    for name in ("rbac", "service", "deployment", "apiservice"):
        path = source / "manifests" / "base" / f"{name}.yaml"
        docs += [_labelled(doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in docs:
        if doc["kind"] == "Deployment":
            _container(doc, image)
    return docs


@dataclass(frozen=True)
class MetricsServer:
    cluster: NodeCluster
    objects: tuple[tuple[str, str, str | None], ...]

    def raw(self, path: str) -> dict[str, Any]:
        got: dict[str, Any] = json.loads(kubectl(self.cluster, "get", "--raw", path))
        return got

    def pod_metrics(self, namespace: str, selector: str) -> dict[str, int]:
        """Each selected pod's CPU use in millicores, as the HPA reads it; {} until scraped."""
        query = f"{METRICS_API}/namespaces/{namespace}/pods?labelSelector={selector}"
        return {item["metadata"]["name"]: _millicores(item) for item in self.raw(query)["items"]}

    def delete(self) -> None:
        for kind, name, namespace in reversed(self.objects):
            where = ("-n", namespace) if namespace else ()
            kubectl(self.cluster, "delete", kind, name, *where, "--ignore-not-found",
                    f"--timeout={WAIT}", check=False)  # fmt: skip


def _millicores(item: dict[str, Any]) -> int:
    return sum(parse_cpu(c["usage"]["cpu"]) for c in item["containers"])


def parse_cpu(quantity: str) -> int:
    """A CPU quantity of the metrics API (`123456n`, `12u`, `5m`, `1`) in whole millicores."""
    scale = {"n": 1e-6, "u": 1e-3, "m": 1.0}
    if quantity[-1] in scale:
        return round(float(quantity[:-1]) * scale[quantity[-1]])
    return round(float(quantity) * 1000)


def _wait_available(server: MetricsServer) -> None:
    """The APIService is Available and the node's own metrics are served."""
    kubectl(server.cluster, "wait", "--for=condition=Available", f"apiservice/{API_SERVICE}",
            f"--timeout={WAIT}")  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while not kubectl(server.cluster, "get", "--raw", f"{METRICS_API}/nodes", check=False):
        if time.monotonic() > deadline:
            logs = kubectl(server.cluster, "logs", "-n", NAMESPACE, f"deploy/{NAME}",
                           "--tail=30", check=False)  # fmt: skip
            raise AssertionError(f"metrics-server served no node metrics; its log:\n{logs}")
        time.sleep(1)


@contextlib.contextmanager
def running(cluster: NodeCluster, binaries: MetricsBinaries) -> Iterator[MetricsServer]:
    """Import the image, apply upstream's manifests; yield once the metrics API answers.

    Everything applied, the cluster-scoped RBAC and APIService included, is deleted on the
    way out, also when starting fails.
    """
    image = image_ref()
    cluster.import_image(image_archive(binaries), image)
    docs = manifests(build.module_source(NAME, MODULE), image)
    objects = tuple(
        (doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")) for doc in docs
    )
    server = MetricsServer(cluster, objects)
    try:
        apply(cluster, {"apiVersion": "v1", "kind": "List", "items": docs})
        _wait_available(server)
        yield server
    finally:
        server.delete()
