"""Install on the in-cluster dev Postgres of `deploy/dev/` (issue 28, scenario 1, second case).

What `skaffold dev -p dev` does, step by step on the one-node cluster: the dev Postgres'
image built from `deploy/dev/postgres/Dockerfile` by BuildKit (`devpostgres.py`),
`deploy/dev/postgres.yaml` applied with it, and the chart installed with
`deploy/dev/values.yaml` and the project's image. The node has no volume provisioner, so the
test makes the PersistentVolume a laptop cluster's would (hostPath, bound to the claim).
The tests share one install and run in file order.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_sync_client

from tests.cluster import devpostgres, load
from tests.cluster.image import ImageRef
from tests.cluster.node import NodeCluster
from tests.cluster.pods import WAIT, apply, create_namespace, kubectl, run_pod
from tests.cluster.release import RETENTION_CRD, Release, ready
from tests.cluster.test_app_image import MIGRATED_TABLES

pytestmark = pytest.mark.node
log = logging.getLogger(__name__)

RELEASE = "dev"
POSTGRES_POD = "threadkeeper-dev-postgres-0"
POSTGRES_SELECTOR = "app.kubernetes.io/name=threadkeeper-dev-postgres"
TURNS = 3


@dataclass(frozen=True)
class DevInstall:
    release: Release
    postgres_image: ImageRef
    install_seconds: float


def _psql(cluster: NodeCluster, namespace: str, sql: str) -> str:
    """A query in the dev Postgres pod, as the manifest's user over its socket."""
    return kubectl(cluster, "exec", "-n", namespace, POSTGRES_POD, "--", "psql", "-U",
                   "threadkeeper", "-d", "threadkeeper", "-tAc", sql)  # fmt: skip


def _wait_postgres_ready(cluster: NodeCluster, namespace: str) -> None:
    # The StatefulSet makes the pod a moment after it is applied.
    kubectl(cluster, "wait", "--for=create", f"pod/{POSTGRES_POD}", "-n", namespace,
            f"--timeout={WAIT}")  # fmt: skip
    kubectl(cluster, "wait", "--for=condition=Ready", f"pod/{POSTGRES_POD}", "-n", namespace,
            "--timeout=300s")  # fmt: skip


@pytest.fixture(scope="module")
def dev_install(
    kube_node: NodeCluster, app_image: ImageRef, dev_postgres_image: ImageRef
) -> Iterator[DevInstall]:
    namespace = f"dev-{uuid.uuid4().hex[:8]}"
    create_namespace(kube_node, namespace)
    crd_before = bool(kubectl(kube_node, "get", "crd", RETENTION_CRD, "--ignore-not-found"))
    docs = devpostgres.dev_postgres_manifests(dev_postgres_image, namespace)
    secret = next(doc for doc in docs if doc["kind"] == "Secret")["metadata"]["name"]
    statefulset = next(doc for doc in docs if doc["kind"] == "StatefulSet")
    data_dir = kube_node.state_dir / f"dev-postgres-{namespace}"
    volume = devpostgres.claim_volume(statefulset, namespace, data_dir)
    values = (devpostgres.DEV_DIR / "values.yaml",)
    release = Release(kube_node, namespace, RELEASE, app_image, secret, values)
    try:
        apply(kube_node, volume)
        for doc in docs:
            apply(kube_node, doc)
        started = time.monotonic()
        _wait_postgres_ready(kube_node, namespace)
        release.install(f"crds.create={str(not crd_before).lower()}")
        yield DevInstall(release, dev_postgres_image, time.monotonic() - started)
    finally:
        release.helm("uninstall", RELEASE, "--wait", check=False)
        if not crd_before:
            kubectl(kube_node, "delete", "crd", RETENTION_CRD, "--ignore-not-found", check=False)
        kubectl(kube_node, "delete", "namespace", namespace, "--wait=true", "--timeout=120s",
                check=False)  # fmt: skip
        kubectl(kube_node, "delete", "pv", volume["metadata"]["name"], "--ignore-not-found",
                check=False)  # fmt: skip
        shutil.rmtree(data_dir, ignore_errors=True)


def test_install_on_the_dev_postgres_migrates_and_passes_helm_test(
    dev_install: DevInstall, kube_node: NodeCluster, record_property: Callable[..., None]
) -> None:
    release = dev_install.release
    record_property("install_seconds", round(dev_install.install_seconds, 1))
    postgres = json.loads(kubectl(kube_node, "get", "pod", POSTGRES_POD, "-n",
                                  release.namespace, "-o", "json"))  # fmt: skip
    status = postgres["status"]["containerStatuses"][0]
    # The image built here (imported into the node, as skaffold loads it into a laptop's).
    assert status["image"] == str(dev_install.postgres_image)
    assert status["user"]["linux"]["uid"] == devpostgres.POSTGRES_UID
    assert "initialised /var/lib/postgresql/data/pgdata" in kubectl(
        kube_node, "logs", "-n", release.namespace, POSTGRES_POD
    )
    # The migration hook Job ran against it (Helm deletes the Job; its events stay).
    reasons = release.events_of("Job", f"{release.fullname}-migrate")
    assert "SuccessfulCreate" in reasons and "Completed" in reasons
    listed = _psql(kube_node, release.namespace, "SELECT tablename FROM pg_tables")
    tables = set(listed.split())
    assert tables >= MIGRATED_TABLES
    pods = release.service_pods()
    assert len(pods) == 2 and all(ready(pod) for pod in pods)  # deploy/dev/values.yaml: 2
    tested = release.helm("test", RELEASE, "--logs")
    assert "Phase:          Succeeded" in tested.stdout, tested.stdout


def _restart_postgres(cluster: NodeCluster, namespace: str) -> None:
    """Delete the Postgres pod; its StatefulSet makes a new one on the same volume."""
    old = kubectl(cluster, "get", "pod", POSTGRES_POD, "-n", namespace,
                  "-o", "jsonpath={.metadata.uid}")  # fmt: skip
    kubectl(cluster, "delete", "pod", POSTGRES_POD, "-n", namespace, "--wait=true")
    _wait_postgres_ready(cluster, namespace)
    new = kubectl(cluster, "get", "pod", POSTGRES_POD, "-n", namespace,
                  "-o", "jsonpath={.metadata.uid}")  # fmt: skip
    assert new != old


def test_a_conversation_through_the_service_outlives_a_postgres_restart(
    dev_install: DevInstall, kube_node: NodeCluster, port_forward: Callable[..., str]
) -> None:
    release = dev_install.release
    pod = load.client_pod(
        release, "dev-traffic", uuid.uuid4().hex[:8], count=2, turns=TURNS, think=0
    )
    summary = load.summary_of(run_pod(kube_node, pod))
    load.assert_clean(summary)
    assert summary["turns"] == 2 * TURNS
    stored = int(_psql(kube_node, release.namespace, "SELECT count(*) FROM runs"))
    assert stored == 2 * TURNS

    _restart_postgres(kube_node, release.namespace)

    sdk = get_sync_client(url=port_forward(release.namespace, f"service/{release.fullname}",
                                           8000))  # fmt: skip
    for thread_id in summary["thread_ids"]:
        messages: list[dict[str, Any]] = sdk.threads.get_state(thread_id)["values"]["messages"]
        assert [m["type"] for m in messages].count("human") == TURNS
        # The replicas' pools reconnect: the conversation goes on where it was.
        state: Any = sdk.runs.wait(
            thread_id, "agent", input={"messages": [{"role": "user", "content": "and now?"}]}
        )
        assert state["messages"][-1]["content"].startswith(f"Turn {TURNS + 1}.")
    # The volume outlived the pod: no second initdb.
    logs = kubectl(kube_node, "logs", "-n", release.namespace, POSTGRES_POD)
    assert "initialised" not in logs


def test_the_dev_postgres_volume_is_on_the_claimed_host_directory(dev_install: DevInstall) -> None:
    """The data lives where the PersistentVolume says, owned by the image's user."""
    release = dev_install.release
    claimed = f"{{.items[?(@.spec.claimRef.namespace=='{release.namespace}')].spec.hostPath.path}}"
    path = Path(kubectl(release.cluster, "get", "pv", "-o", f"jsonpath={claimed}"))
    version = path / "pgdata" / "PG_VERSION"
    assert version.read_text().strip() == "15"
    assert version.stat().st_uid == devpostgres.POSTGRES_UID
