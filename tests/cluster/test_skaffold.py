"""`skaffold run -p buildkit` on the one-node cluster, as a user without Docker runs it.

The real skaffold (`build --skaffold`, built from its module) runs the profile of the
repository's skaffold.yaml: its `custom` builder runs deploy/skaffold/buildctl-build.sh,
whose buildctl builds the Dockerfile's runtime target on a buildkitd (the image tools'),
pushes it to the node's loopback registry (`--default-repo`), and skaffold's helm deployer
installs the chart with deploy/values/cluster.yaml and a database Secret the user made,
pointing at a Postgres outside the cluster (`bridge_postgres`). helm and kubectl are the
control-plane set's, on PATH. What is not a user's: `BUILDCTL_OPTS` replaces the base
images with the offline ones every image here is built from (appimage.base_substitutions),
and skaffold runs with a HOME of its own whose global config turns off its update check,
survey and metrics upload, which would leave the machine. Run with `pytest -m node
tests/cluster` (root).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster import appimage, load, rootfs
from tests.cluster.appimage import PROJECT_ROOT
from tests.cluster.build import (
    ImageToolBinaries,
    NodeBinaries,
    SkaffoldBinaries,
    locked,
)
from tests.cluster.node import NodeCluster
from tests.cluster.pgbridge import BridgePostgres, fresh_database_name
from tests.cluster.pods import create_namespace, kubectl, run_pod
from tests.cluster.release import RETENTION_CRD, database_secret, helm, ready

pytestmark = pytest.mark.node

PROFILE = "buildkit"
SKAFFOLD_CONFIG = yaml.safe_load((PROJECT_ROOT / "skaffold.yaml").read_text())
(_HELM_RELEASE,) = SKAFFOLD_CONFIG["deploy"]["helm"]["releases"]
# The release's name, and the Service the chart names after it.
RELEASE = _HELM_RELEASE["name"]
ARTIFACT = SKAFFOLD_CONFIG["build"]["artifacts"][0]["image"]
# The Secret deploy/values/cluster.yaml tells the user to create.
SECRET = yaml.safe_load((PROJECT_ROOT / _HELM_RELEASE["valuesFiles"][0]).read_text())["database"][
    "existingSecret"
]
# A cold BuildKit build of the image and a helm install with its hook, on 2 shared cores.
SKAFFOLD_RUN_S = 1200
# A run that stops in the build, or `skaffold delete`.
SKAFFOLD_QUICK_S = 300
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True)
class Skaffold:
    """The skaffold binary with the environment a user's shell would give it."""

    binary: Path
    cluster: NodeCluster
    namespace: str
    repo: str
    home: Path
    # skaffold's and buildctl's; the cluster's env() puts kubectl's and helm's first.
    path: str
    extra_env: dict[str, str]

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = self.cluster.env({"HOME": str(self.home), "PATH": self.path, **self.extra_env})
        command = [str(self.binary), *args, f"--profile={PROFILE}",
                   f"--namespace={self.namespace}", f"--default-repo={self.repo}",
                   "--update-check=false", "--interactive=false"]  # fmt: skip
        ran = subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        # Whole, beside the test's other files: the assertions show only the ends.
        log = self.home.parent / f"skaffold-{args[0]}.log"
        log.write_text(f"$ {' '.join(command)}\n{ran.stdout}\n--- stderr\n{ran.stderr}")
        return ran


def _skaffold_home(path: Path) -> Path:
    """A HOME whose skaffold global config keeps skaffold off the network."""
    config = {
        "global": {
            "update-check": False,
            "collect-metrics": False,
            "survey": {"disable-prompt": True},
        }
    }
    (path / ".skaffold").mkdir(parents=True)
    (path / ".skaffold" / "config").write_text(yaml.safe_dump(config))
    return path


def _offline_base_opts(work: Path) -> str:
    """BUILDCTL_OPTS that build the Dockerfile from the offline base images."""
    names = appimage.base_names(PROJECT_ROOT / "Dockerfile")
    layout = appimage.base_layout(rootfs.python_base_archive(lambda _: None), work)
    uv_dir = appimage.uv_stage(work, appimage.uv_binary(names.uv_version))
    return " ".join(appimage.base_substitutions(names, layout, uv_dir))


@pytest.fixture
def skaffold_namespace(kube_node: NodeCluster, bridge_postgres: BridgePostgres) -> Iterator[str]:
    """A namespace holding the database Secret skaffold's values file names.

    Afterwards the release (if a test left it) and the namespace go, and the RetentionPolicy
    CRD when the release made it.
    """
    # The chart leaves a CRD another release owns alone; one this release makes is kept on
    # uninstall, and goes at the end.
    crd_before = bool(kubectl(kube_node, "get", "crd", RETENTION_CRD, "--ignore-not-found"))
    namespace = f"skaffold-{uuid.uuid4().hex[:8]}"
    create_namespace(kube_node, namespace)
    database = bridge_postgres.create_database(fresh_database_name())
    database_secret(kube_node, namespace, SECRET, bridge_postgres.pod_url(database))
    try:
        yield namespace
    finally:
        helm(kube_node, namespace, "uninstall", RELEASE, "--wait", check=False)
        if not crd_before:
            kubectl(kube_node, "delete", "crd", RETENTION_CRD, "--ignore-not-found", check=False)
        kubectl(kube_node, "delete", "namespace", namespace, "--wait=false", check=False)


def _skaffold(
    binaries: SkaffoldBinaries,
    tools: ImageToolBinaries,
    cluster: NodeCluster,
    namespace: str,
    tmp: Path,
    **env: str,
) -> Skaffold:
    # A repository of its own: only this run's push can put an image there.
    repo = f"{cluster.registry}/{namespace}"
    dirs = [binaries.skaffold.parent, tools["buildctl"].parent]
    path = os.pathsep.join([*map(str, dirs), "/usr/bin", "/bin"])
    home = _skaffold_home(tmp / "home")
    return Skaffold(binaries.skaffold, cluster, namespace, repo, home, path, env)


def _registry_digest(cluster: NodeCluster, repository: str, tag: str) -> str:
    url = f"http://{cluster.registry}/v2/{repository}/manifests/{tag}"
    found = httpx.head(url, headers={"Accept": ", ".join(MANIFEST_TYPES)}, timeout=30)
    assert found.status_code == 200, f"{url}: {found.status_code}"
    return found.headers["Docker-Content-Digest"]


def _pods(cluster: NodeCluster, namespace: str) -> list[dict[str, Any]]:
    listed = kubectl(cluster, "get", "pods", "-n", namespace, "-o", "json")
    pods: list[dict[str, Any]] = json.loads(listed)["items"]
    return pods


def _conversation_pod(namespace: str, image: str) -> dict[str, Any]:
    """One conversation of two turns through the release's Service (`conversations.py`)."""
    url = f"http://{RELEASE}.{namespace}.svc:{load.SERVICE_PORT}"
    label = f"skaffold-{uuid.uuid4().hex[:6]}"
    return load.conversation_pod(url, namespace, image, "client", label, 1, 2, 0)


def _pushed(cluster: NodeCluster, name: str) -> dict[str, str]:
    """Tag -> manifest digest of every image in the registry's repository `name`."""
    repository = name.removeprefix(f"{cluster.registry}/")
    base = f"http://{cluster.registry}/v2/{repository}"
    listed = httpx.get(f"{base}/tags/list", timeout=30)
    assert listed.status_code == 200, f"{base}: {listed.status_code} {listed.text}"
    return {tag: _registry_digest(cluster, repository, tag) for tag in listed.json()["tags"]}


def _deployed_image(cluster: NodeCluster, namespace: str) -> dict[str, Any]:
    """The `image` values skaffold's helm deployer set on the release."""
    got = helm(cluster, namespace, "get", "values", RELEASE, "-o", "json")
    image: dict[str, Any] = json.loads(got.stdout)["image"]
    return image


def _helm_releases(cluster: NodeCluster, namespace: str) -> list[str]:
    return helm(cluster, namespace, "list", "-a", "-q").stdout.split()


def test_skaffold_run_builds_with_buildkit_deploys_and_the_release_serves(
    kube_node: NodeCluster,
    skaffold_binaries: SkaffoldBinaries,
    image_tools: ImageToolBinaries,
    node_binaries: NodeBinaries,
    skaffold_namespace: str,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # buildkitd runs for the build only; its state is the image builds' cache.
    with (
        locked(appimage.buildkit_lock(), lambda _: None),
        appimage.running_buildkitd(image_tools, node_binaries, work, lambda _: None) as socket,
    ):
        skaffold = _skaffold(
            skaffold_binaries,
            image_tools,
            kube_node,
            skaffold_namespace,
            tmp_path,
            BUILDKIT_HOST=f"unix://{socket}",
            BUILDCTL_OPTS=_offline_base_opts(work),
        )
        ran = skaffold.run("run", "--cache-artifacts=false", timeout=SKAFFOLD_RUN_S)
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-6000:]

    # Built by the script's buildctl and pushed to a repository only this run wrote to;
    # the release names that image.
    name = f"{skaffold.repo}/{ARTIFACT}"
    ((tag, digest),) = _pushed(kube_node, name).items()
    deployed = _deployed_image(kube_node, skaffold_namespace)
    assert deployed["repository"] == name
    assert (deployed["tag"], deployed["digest"]) == (tag, digest)
    # Every pod but a finished hook's, the service's and the reaper's, is Ready and runs
    # exactly that image.
    pods = [p for p in _pods(kube_node, skaffold_namespace) if p["status"]["phase"] != "Succeeded"]
    components = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods}
    assert {"service", "reaper"} <= components
    assert [p["metadata"]["name"] for p in pods if not ready(p)] == []
    image_ids = {s["imageID"] for p in pods for s in p["status"]["containerStatuses"]}
    assert image_ids == {f"{name}@{digest}"}

    logs = run_pod(kube_node, _conversation_pod(skaffold_namespace, f"{name}@{digest}"))
    summary = load.summary_of(logs)
    assert summary["failures"] == []
    assert summary["wrong"] == []
    assert summary["turns"] == summary["sent"] == summary["runs"] == 2
    assert summary["lost"] == summary["duplicated"] == summary["runs_not_success"] == 0

    deleted = skaffold.run("delete", timeout=SKAFFOLD_QUICK_S)
    assert deleted.returncode == 0, deleted.stdout[-3000:] + deleted.stderr[-3000:]
    assert _helm_releases(kube_node, skaffold_namespace) == []


def test_skaffold_run_without_a_buildkit_host_says_so_and_deploys_nothing(
    kube_node: NodeCluster,
    skaffold_binaries: SkaffoldBinaries,
    image_tools: ImageToolBinaries,
    skaffold_namespace: str,
    tmp_path: Path,
) -> None:
    skaffold = _skaffold(skaffold_binaries, image_tools, kube_node, skaffold_namespace, tmp_path)

    ran = skaffold.run("run", "--cache-artifacts=false", timeout=SKAFFOLD_QUICK_S)

    assert ran.returncode != 0
    assert "buildctl-build.sh: BUILDKIT_HOST is not set" in ran.stdout + ran.stderr
    assert _helm_releases(kube_node, skaffold_namespace) == []
    catalog = httpx.get(f"http://{kube_node.registry}/v2/_catalog", timeout=30).json()
    assert not [r for r in catalog["repositories"] if r.startswith(f"{skaffold_namespace}/")]
