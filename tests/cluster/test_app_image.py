"""The project's image, built from its Dockerfile, runs on the one-node cluster.

Pods pull it from the node's loopback registry and talk to a Postgres on the host over
the node's bridge (`bridge_postgres`). The migration Job is the chart's own, rendered by
`helm template`; the service pods run under the security context the chart renders.
Run with `pytest -m node tests/cluster` (root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from langgraph_sdk import get_sync_client

from tests.cluster import appimage, rootfs
from tests.cluster.appimage import PROJECT_ROOT
from tests.cluster.build import ImageToolBinaries, NodeBinaries, locked
from tests.cluster.dockerignore import IGNORE_FILE, admitted_files
from tests.cluster.image import ImageRef
from tests.cluster.node import NodeCluster
from tests.cluster.pgbridge import BridgePostgres, fresh_database_name
from tests.cluster.pods import WAIT, WAIT_S, apply, deployment_manifest, kubectl, run_pod

pytestmark = pytest.mark.node

CHART = PROJECT_ROOT / "charts" / "threadkeeper"
MIGRATE_JOB = "templates/service/migrate-job.yaml"
RELEASE = "tk"
SERVICE_PORT = 8000
# Tables the migration creates: the service's and LangGraph's checkpointer's.
MIGRATED_TABLES = {"threads", "runs", "run_events", "checkpoints", "checkpoint_writes"}


def _render_migration(
    cluster: NodeCluster, namespace: str, image: ImageRef, database_url: str, *sets: str
) -> list[dict[str, Any]]:
    """The chart's migration hook (its Secret and Job) for this image and database."""
    values = [
        f"image.repository={image.name}",
        f"image.tag={image.tag}",
        # The kubelet must fetch it from the registry, as a cluster would.
        "image.pullPolicy=Always",
        *sets,
    ]
    command = [str(cluster.binaries.helm), "template", RELEASE, str(CHART), "-n", namespace,
               "--show-only", MIGRATE_JOB, "--set", ",".join(values),
               "--set-string", f"database.url={database_url}"]  # fmt: skip
    rendered = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def _job(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == "Job")


def _run_job(cluster: NodeCluster, namespace: str, manifests: list[dict[str, Any]]) -> str:
    """Apply the manifests and wait for the Job to end; return its condition and pod."""
    for manifest in manifests:
        apply(cluster, manifest)
    name = _job(manifests)["metadata"]["name"]
    deadline = time.monotonic() + 2 * WAIT_S
    while True:
        job = json.loads(kubectl(cluster, "get", "job", name, "-n", namespace, "-o", "json"))
        ended: list[str] = [
            c["type"]
            for c in job.get("status", {}).get("conditions", [])
            if c["type"] in ("Complete", "Failed") and c["status"] == "True"
        ]
        if ended:
            return ended[0]
        assert time.monotonic() < deadline, f"job {name} still running: {job.get('status')}"
        time.sleep(1)


def _job_pod(cluster: NodeCluster, namespace: str, job: str) -> dict[str, Any]:
    pods = json.loads(
        kubectl(cluster, "get", "pods", "-n", namespace, "-l", f"job-name={job}", "-o", "json")
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod: dict[str, Any] = pods[0]
    return pod


def test_the_charts_migration_job_migrates_from_the_image_as_uid_10001(
    kube_node: NodeCluster, app_image: ImageRef, bridge_postgres: BridgePostgres, namespace: str
) -> None:
    db = bridge_postgres.create_database(fresh_database_name())
    manifests = _render_migration(kube_node, namespace, app_image, bridge_postgres.pod_url(db))
    container = _job(manifests)["spec"]["template"]["spec"]["containers"][0]
    # What the chart asks for, and so what the image must run under.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsUser"] == 10001
    assert container["args"] == ["migrate"]

    outcome = _run_job(kube_node, namespace, manifests)

    pod = _job_pod(kube_node, namespace, _job(manifests)["metadata"]["name"])
    logs = kubectl(kube_node, "logs", "-n", namespace, pod["metadata"]["name"])
    assert outcome == "Complete", logs
    assert bridge_postgres.tables(db) >= MIGRATED_TABLES
    status = pod["status"]["containerStatuses"][0]
    # The image came from the loopback registry, and ran as the chart's numeric user.
    assert status["imageID"].startswith(f"{app_image.name}@sha256:")
    assert status["user"]["linux"]["uid"] == 10001
    assert status["user"]["linux"]["gid"] == 10001


def test_a_migration_job_the_database_refuses_fails_and_says_why(
    kube_node: NodeCluster, app_image: ImageRef, bridge_postgres: BridgePostgres, namespace: str
) -> None:
    db = bridge_postgres.create_database(fresh_database_name())
    url = bridge_postgres.pod_url(db, password="not-the-password")
    manifests = _render_migration(kube_node, namespace, app_image, url, "migrations.backoffLimit=0")

    outcome = _run_job(kube_node, namespace, manifests)

    pod = _job_pod(kube_node, namespace, _job(manifests)["metadata"]["name"])
    logs = kubectl(kube_node, "logs", "-n", namespace, pod["metadata"]["name"])
    assert outcome == "Failed"
    # One structured event names the cause, and the password is not in it.
    failure = json.loads(logs.strip().splitlines()[-1])
    assert failure["event"] == "migrate_failed"
    assert "password authentication failed" in failure["error"]
    assert "not-the-password" not in logs
    assert bridge_postgres.tables(db) == set()


# --- two service replicas behind a Service ---------------------------------------------------


def _security_contexts(
    cluster: NodeCluster, namespace: str, image: ImageRef
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's pod and container security contexts (from its rendered Job)."""
    job = _job(_render_migration(cluster, namespace, image, "postgresql://unused"))
    spec = job["spec"]["template"]["spec"]
    return spec["securityContext"], spec["containers"][0]["securityContext"]


def _service_manifests(
    cluster: NodeCluster, namespace: str, image: ImageRef, database_url: str
) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "threadkeeper", "app.kubernetes.io/instance": RELEASE}
    pod_security, container_security = _security_contexts(cluster, namespace, image)
    container = {
        "name": "service",
        "image": str(image),
        "imagePullPolicy": "Always",
        # The image's own entrypoint and command: `threadkeeper-service serve` on :8000,
        # migrating at start-up under an advisory lock (both replicas start at once).
        "env": [
            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
            {"name": "THREADKEEPER_MODEL", "value": "offline"},
        ],
        "ports": [{"name": "http", "containerPort": SERVICE_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
        "securityContext": container_security,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": namespace},
            "stringData": {"url": database_url},
        },
        deployment_manifest(
            RELEASE,
            namespace,
            labels,
            {
                "securityContext": pod_security,
                "automountServiceAccountToken": False,
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
            },
            replicas=2,
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": RELEASE, "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    ]


# Runs in a pod from the app image: the official SDK, through the Service's ClusterIP.
# kube-proxy may program the Service a moment after the rollout, hence the retries.
_IN_POD_TURN = """
import json, sys, time, httpx
from langgraph_sdk import get_sync_client
client = get_sync_client(url=sys.argv[1])
for attempt in range(60):
    try:
        thread = client.threads.create()
        break
    except httpx.TransportError:
        time.sleep(1)
else:
    raise SystemExit("the Service never answered")
state = client.runs.wait(thread["thread_id"], "agent",
                         input={"messages": [{"role": "user", "content": sys.argv[2]}]})
print(json.dumps({"thread_id": thread["thread_id"], "reply": state["messages"][-1]["content"]}))
"""


def test_two_replicas_behind_a_service_hold_one_conversation(
    kube_node: NodeCluster,
    app_image: ImageRef,
    bridge_postgres: BridgePostgres,
    namespace: str,
    port_forward: Any,
) -> None:
    db = bridge_postgres.create_database(fresh_database_name())
    for manifest in _service_manifests(
        kube_node, namespace, app_image, bridge_postgres.pod_url(db)
    ):
        apply(kube_node, manifest)
    kubectl(kube_node, "rollout", "status", "-n", namespace, f"deployment/{RELEASE}",
            f"--timeout={WAIT}")  # fmt: skip
    slices = kubectl(kube_node, "get", "endpointslices", "-n", namespace,
                     "-l", f"kubernetes.io/service-name={RELEASE}", "-o", "json")  # fmt: skip
    endpoints = json.loads(slices)["items"]
    ready = [e for s in endpoints for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
    assert len(ready) == 2
    cluster_ip = kubectl(kube_node, "get", "service", RELEASE, "-n", namespace,
                         "-o", "jsonpath={.spec.clusterIP}")  # fmt: skip

    first = f"my name is Ada and my token is {uuid.uuid4().hex}"
    client_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "client",
                    "image": str(app_image),
                    "command": ["python", "-c", _IN_POD_TURN, f"http://{cluster_ip}", first],
                }
            ],
        },
    }
    in_pod = json.loads(run_pod(kube_node, client_pod).strip().splitlines()[-1])
    assert "Turn 1." in in_pod["reply"]
    assert first in in_pod["reply"]

    # The same conversation from the host through `kubectl port-forward` to the Service:
    # whichever replica answers, the thread's history is there.
    client = get_sync_client(url=port_forward(namespace, f"service/{RELEASE}"))
    message: Any = {"role": "user", "content": "and again"}
    state: Any = client.runs.wait(in_pod["thread_id"], "agent", input={"messages": [message]})
    reply = state["messages"][-1]["content"]
    assert "Turn 2." in reply
    assert first in reply


def _host_traces() -> set[str]:
    """What a build could leave on the host: runtime directories and cgroups."""
    runtime = {str(p) for p in Path("/run").iterdir()}
    cgroups = {str(p) for p in Path("/sys/fs/cgroup").glob("*/*") if p.is_dir()}
    return runtime | cgroups


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    member = tar.extractfile(name)
    assert member is not None, name
    return member


def _image_file(archive: Path, suffix: str) -> bytes:
    """A file of the image in an OCI archive (its first manifest), as the top layer has it."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> IO[bytes]:
            return _member(tar, "blobs/sha256/" + digest.removeprefix("sha256:"))

        index = json.loads(_member(tar, "index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]).read())
        found: bytes | None = None
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=blob(layer["digest"]), mode="r:*") as files:
                for member in files.getmembers():
                    if member.isfile() and member.name.endswith(suffix):
                        found = _member(files, member.name).read()
    assert found is not None, f"no {suffix} in {archive}"
    return found


def test_a_changed_tree_is_rebuilt_and_the_build_leaves_the_host_as_found(
    image_tools: ImageToolBinaries, node_binaries: NodeBinaries, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    for path in [PROJECT_ROOT / "Dockerfile", *admitted_files(PROJECT_ROOT)]:
        copy = tree / path.relative_to(PROJECT_ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    shutil.copy2(PROJECT_ROOT / IGNORE_FILE, tree / IGNORE_FILE)
    # New on every run: a wheel of the project cached by an earlier build cannot have it.
    marker = f"# a change the image must pick up: {uuid.uuid4().hex}\n"
    with (tree / "service" / "__init__.py").open("a") as changed:
        changed.write(marker)
    base = rootfs.python_base_archive(lambda _: None)
    before = _host_traces()

    built = appimage.app_image(image_tools, node_binaries, base, lambda _: None, root=tree)

    try:
        uv = appimage.uv_binary(appimage.base_names(tree / "Dockerfile").uv_version)
        assert built.key != appimage.image_key(PROJECT_ROOT, base, uv)
        with tarfile.open(built.archive) as tar:
            member = tar.extractfile("index.json")
            assert member is not None
            names = {
                m["annotations"]["io.containerd.image.name"]
                for m in json.loads(member.read())["manifests"]
            }
        assert names == {str(ref) for ref in built.refs}
        installed = _image_file(built.archive, "site-packages/threadkeeper/service/__init__.py")
        assert installed.decode().endswith(marker)
        assert _host_traces() == before
    finally:
        built.archive.unlink(missing_ok=True)


# A layer well above the test's bound, random so that no earlier build's layer can be it.
BLOB_BYTES = 48 << 20
TEST_KEEP_MB = 8


def _tree_bytes(root: Path) -> int:
    """What the files under `root` take, each inode once (overlay snapshots hard-link)."""
    seen: set[int] = set()
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            stat = os.lstat(os.path.join(directory, name))
            if stat.st_ino not in seen:
                seen.add(stat.st_ino)
                total += stat.st_blocks * 512
    return total


def test_buildkits_state_is_pruned_to_its_bound_when_a_build_ends(
    image_tools: ImageToolBinaries, node_binaries: NodeBinaries, tmp_path: Path
) -> None:
    """buildkitd collects its garbage a minute after a build, and here it lives for the build
    alone: `running_buildkitd` prunes its state before stopping it, so the layers of earlier
    builds do not pile up on a runner that keeps the cache. A state of its own, so the
    cache's layers stay."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "blob").write_bytes(os.urandom(BLOB_BYTES))
    (context / "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
    state = tmp_path / "state"
    work = tmp_path / "work"
    work.mkdir()
    build = [
        "build", "--frontend=dockerfile.v0",
        "--local", f"context={context}", "--local", f"dockerfile={context}",
    ]  # fmt: skip
    with (
        locked(appimage.buildkit_lock(), lambda _: None),
        appimage.running_buildkitd(
            image_tools, node_binaries, work, lambda _: None,
            root=state, keep_storage_mb=TEST_KEEP_MB,
        ) as socket,
    ):  # fmt: skip
        command = appimage._buildctl(image_tools, socket, *build)
        subprocess.run(command, capture_output=True, check=True, timeout=300)
        held = _tree_bytes(state)
    pruned = _tree_bytes(state)

    assert held >= BLOB_BYTES
    assert pruned <= TEST_KEEP_MB << 20, f"{pruned} bytes left of {held}"
