"""Helpers for tests that drive a `NodeCluster` with kubectl: apply, run a pod, wait."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from tests.cluster.node import BUSYBOX_IMAGE, NodeCluster

# Generous for a shared 2-core machine; a healthy node needs a few seconds.
WAIT_S = 120
WAIT = f"{WAIT_S}s"


def kubectl(cluster: NodeCluster, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [str(cluster.kubectl), *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def apply(cluster: NodeCluster, manifest: Mapping[str, Any]) -> None:
    subprocess.run(
        [str(cluster.kubectl), "apply", "-f", "-"],
        env=cluster.env(),
        input=json.dumps(manifest),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def pod_manifest(
    name: str,
    command: list[str],
    restart: str = "Never",
    *,
    image: str = str(BUSYBOX_IMAGE),
    namespace: str | None = None,
) -> dict[str, Any]:
    metadata = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "restartPolicy": restart,
            "containers": [{"name": "main", "image": image, "command": command}],
        },
    }


def run_to_completion(cluster: NodeCluster, namespace: str, name: str, script: str) -> str:
    pod = pod_manifest(name, ["/bin/sh", "-c", script])
    pod["metadata"] = {"name": name, "namespace": namespace}
    return run_pod(cluster, pod)


def run_pod(cluster: NodeCluster, pod: dict[str, Any]) -> str:
    """Apply a pod, wait for it to end and return its logs; it must succeed."""
    apply(cluster, pod)
    return wait_for_success(cluster, pod["metadata"]["namespace"], pod["metadata"]["name"])


def wait_for_success(
    cluster: NodeCluster, namespace: str, name: str, wait_s: float = WAIT_S
) -> str:
    """Wait for a pod to end and return its logs; it must have succeeded."""
    # Either end: a failed pod's logs say more than a timeout would.
    deadline = time.monotonic() + wait_s
    while (phase := pod_phase(cluster, namespace, name)) not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline, f"pod {name} still {phase} after {wait_s}s"
        time.sleep(0.5)
    logs = kubectl(cluster, "logs", "-n", namespace, name)
    assert phase == "Succeeded", f"pod {name} failed; its logs:\n{logs}"
    return logs


def create_namespace(cluster: NodeCluster, name: str) -> None:
    """Create a namespace and wait for its `default` ServiceAccount."""
    kubectl(cluster, "create", "namespace", name)
    # The controller-manager makes each namespace's `default` ServiceAccount, which the
    # ServiceAccount admission plugin requires before it admits a pod.
    kubectl(cluster, "wait", "--for=create", "serviceaccount/default", "-n", name,
            f"--timeout={WAIT}")  # fmt: skip


def pod_phase(cluster: NodeCluster, namespace: str, name: str) -> str:
    return kubectl(cluster, "get", "pod", name, "-n", namespace,
                    "-o", "jsonpath={.status.phase}")  # fmt: skip


def deployment_manifest(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    pod_spec: Mapping[str, Any],
    replicas: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": dict(pod_spec)},
        },
    }
