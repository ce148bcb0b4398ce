"""Fixtures of the chart, image and deployment tests.

Tools come from where the project installs them, never from a guess on PATH:
- `helm` from tests/cluster's cache (`python -m tests.cluster build`),
- `promtool` from deploy/tools/ensure-tools.sh (Debian's prometheus package),
- skaffold's JSON schema and prometheus-operator's CRDs from their Go modules, downloaded with
  `go mod download` from the Go module proxy and cached under the user cache directory.
A missing tool fails the tests that need it with the command that installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart import support
from tests.cluster import build
from tests.cluster.controlplane import Cluster
from tests.cluster.errors import ClusterError

# The schema of the skaffold release tests/cluster builds (`build --skaffold`).
SKAFFOLD_SCHEMA = "docs-v2/content/en/schemas/v4beta14.json"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
MONITORING_CRDS = (
    "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
)


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """helm from tests/cluster's cache, built there if Go is available; fails otherwise."""
    cached = build.cached_binaries()
    if cached is not None:
        return cached.helm
    if build.find_go() is None:
        pytest.fail(
            "helm is built by tests/cluster and none is cached: install Go >= "
            + ".".join(map(str, build.GO_MINIMUM))
            + " and run `uv run python -m tests.cluster build`.",
            pytrace=False,
        )
    try:
        return build.ensure_binaries().helm
    except ClusterError as exc:
        pytest.fail(f"building helm with tests/cluster failed: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def helm(helm_bin: Path) -> support.Helm:
    return support.Helm(helm_bin)


@pytest.fixture(scope="session")
def promtool() -> Path:
    candidates = [shutil.which("promtool"), "/usr/local/bin/promtool"]
    candidates.append(str(Path.home() / ".local/bin/promtool"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    pytest.fail(
        "promtool is missing: run `deploy/tools/ensure-tools.sh` (installs it from Debian's "
        "prometheus package), or put Prometheus' promtool on PATH.",
        pytrace=False,
    )


def _tool_cache() -> Path:
    return build.cache_root().parent / "chart-tools"


def _go_module_file(module: str, version: str, relative: str) -> Path:
    """A file of a Go module, fetched once with `go mod download` and copied to our cache."""
    target = _tool_cache() / f"{module.replace('/', '_')}@{version}" / relative
    if target.is_file():
        return target
    go = build.find_go()
    if go is None:
        pytest.fail(
            f"Go is needed to fetch {relative} from the Go module {module}@{version} "
            "(install Go, on PATH or in /usr/local/go/bin).",
            pytrace=False,
        )
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOWORK="off")
    proc = subprocess.run(
        [str(go), "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        env=env,
        # Outside any module: `go mod download mod@version` then needs no go.mod.
        cwd=tempfile.gettempdir(),
        timeout=600,
        check=False,
    )
    info = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0 or "Error" in info or "Dir" not in info:
        pytest.fail(
            f"`go mod download {module}@{version}` failed: "
            f"{info.get('Error') or proc.stderr.strip()}",
            pytrace=False,
        )
    source = Path(info["Dir"]) / relative
    if not source.is_file():
        pytest.fail(f"{module}@{version} has no {relative}", pytrace=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


@pytest.fixture(scope="session")
def skaffold_schema() -> Path:
    return _go_module_file(build.SKAFFOLD_MODULE, build.SKAFFOLD_VERSION, SKAFFOLD_SCHEMA)


@pytest.fixture(scope="session")
def monitoring_crd_files() -> list[Path]:
    return [
        _go_module_file(PROMETHEUS_OPERATOR_MODULE, PROMETHEUS_OPERATOR_VERSION, path)
        for path in MONITORING_CRDS
    ]


@pytest.fixture
def cluster_crds(kube: Cluster, monitoring_crd_files: list[Path]) -> Cluster:
    """The control plane with the ServiceMonitor, PrometheusRule and RetentionPolicy CRDs.

    Applied per test (idempotent, fast): an install test deletes the RetentionPolicy CRD so
    that its release creates it.
    """
    kubectl = support.Kubectl(kube)
    files = [
        *monitoring_crd_files,
        support.REPO / "deploy/crds/retentionpolicies.threadkeeper.dev.yaml",
    ]
    kubectl.run("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in files))
    names = [
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
        "retentionpolicies.threadkeeper.dev",
    ]
    kubectl.run(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names)
    )
    return kube


@pytest.fixture
def namespace(kube: Cluster) -> Iterator[str]:
    """A fresh namespace of this test (no controller-manager: deleting it only marks it)."""
    name = f"chart-{uuid.uuid4().hex[:8]}"
    kubectl = support.Kubectl(kube)
    kubectl.run("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl.run("delete", "namespace", name, "--wait=false", check=False)
