"""A Helm release of the chart on a `NodeCluster`: install, upgrade, test, uninstall.

The chart as published (`charts/threadkeeper`), run by the cached helm of the control-plane
set, with the project's image from the node's registry and a database Secret the user made
(`database.existingSecret`), the managed-database case.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.appimage import PROJECT_ROOT
from tests.cluster.image import ImageRef
from tests.cluster.node import NodeCluster
from tests.cluster.pgbridge import BridgePostgres, fresh_database_name
from tests.cluster.pods import apply, create_namespace, kubectl

CHART = PROJECT_ROOT / "charts" / "threadkeeper"
# Long enough for a pre-install hook, two pulls and start-ups on a shared 2-core machine.
HELM_TIMEOUT = "5m"
_HELM_PROCESS_S = 400
RETENTION_CRD = "retentionpolicies.threadkeeper.dev"


@dataclass(frozen=True)
class Release:
    cluster: NodeCluster
    namespace: str
    name: str
    image: ImageRef
    database_secret: str
    # `--values` files under the `--set`s (deploy/dev/values.yaml, say).
    values_files: tuple[Path, ...] = ()

    @property
    def fullname(self) -> str:
        """The chart's `threadkeeper.fullname` for a release name without `threadkeeper`."""
        return f"{self.name}-threadkeeper"

    @property
    def reaper(self) -> str:
        return f"{self.fullname}-reaper"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return helm(self.cluster, self.namespace, *args, check=check)

    def _values(self, sets: tuple[str, ...]) -> list[str]:
        values = [
            f"image.repository={self.image.name}",
            f"image.tag={self.image.tag}",
            # Every pod fetches the image from the registry, as in a real cluster.
            "image.pullPolicy=Always",
            f"database.existingSecret={self.database_secret}",
            *sets,
        ]
        files = [f"--values={path}" for path in self.values_files]
        return [*files, "--set", ",".join(values)]

    def install(self, *sets: str) -> str:
        """`helm install --wait`; returns its output, which ends with the NOTES."""
        args = ["install", self.name, str(CHART), *self._values(sets)]
        return self.helm(*args, "--wait", "--timeout", HELM_TIMEOUT).stdout

    def upgrade(self, *sets: str, strings: tuple[str, ...] = ()) -> str:
        """`helm upgrade --reuse-values --wait` with `sets` (and `strings`, kept strings) on top."""
        args = ["upgrade", self.name, str(CHART), "--reuse-values", "--set", ",".join(sets)]
        if strings:
            args += ["--set-string", ",".join(strings)]
        return self.helm(*args, "--wait", "--timeout", HELM_TIMEOUT).stdout

    def uninstall(self) -> str:
        return self.helm("uninstall", self.name, "--wait", "--timeout", HELM_TIMEOUT).stdout

    def service_pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=service"
        listed = kubectl(self.cluster, "get", "pods", "-n", self.namespace, "-l", selector,
                         "-o", "json")  # fmt: skip
        pods: list[dict[str, Any]] = json.loads(listed)["items"]
        return pods

    def events_of(self, kind: str, name: str) -> list[str]:
        """Reasons of the events about one object (they outlive it)."""
        listed = kubectl(self.cluster, "get", "events", "-n", self.namespace, "--field-selector",
                         f"involvedObject.kind={kind},involvedObject.name={name}",
                         "-o", "json")  # fmt: skip
        return [event["reason"] for event in json.loads(listed)["items"]]


def helm(
    cluster: NodeCluster, namespace: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The cached helm on `cluster` in `namespace`; a failure raises unless `check` is off."""
    result = subprocess.run(
        [str(cluster.binaries.helm), *args, "-n", namespace],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=_HELM_PROCESS_S,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def database_secret(cluster: NodeCluster, namespace: str, name: str, url: str) -> None:
    """The Secret a user creates for a managed database before installing."""
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"url": url},
        },
    )


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@dataclass(frozen=True)
class Installed:
    release: Release
    notes: str
    database: str


@contextmanager
def installed_release(
    cluster: NodeCluster, image: ImageRef, postgres: BridgePostgres, name: str, *sets: str
) -> Iterator[Installed]:
    """`helm install` in a namespace of its own, with a fresh database behind a Secret of the
    user's (`<name>-database`); uninstalled with its namespace afterwards, also on failure.

    The chart keeps its CRD on uninstall, owned by the release that made it, and Helm refuses
    to take it over under another release name: when the CRD exists the release sets
    `crds.create=false` (a CRD managed elsewhere, as the chart README says), and a CRD this
    release made is deleted at the end.
    """
    namespace = f"{name}-{uuid.uuid4().hex[:8]}"
    create_namespace(cluster, namespace)
    crd_before = bool(kubectl(cluster, "get", "crd", RETENTION_CRD, "--ignore-not-found"))
    database = postgres.create_database(fresh_database_name())
    secret = f"{name}-database"
    database_secret(cluster, namespace, secret, postgres.pod_url(database))
    release = Release(cluster, namespace, name, image, secret)
    try:
        notes = release.install(*sets, f"crds.create={str(not crd_before).lower()}")
        yield Installed(release, notes, database)
    finally:
        release.helm("uninstall", name, "--wait", check=False)
        if not crd_before:
            kubectl(cluster, "delete", "crd", RETENTION_CRD, "--ignore-not-found", check=False)
        kubectl(cluster, "delete", "namespace", namespace, "--wait=false", check=False)
