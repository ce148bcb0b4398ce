"""The `node` tier: tests that need a one-node cluster that runs pods (tests.cluster.node).

Node tests are deselected unless the `-m` expression names `node` (`pytest -m node
tests/cluster`): they need root, change the host's network while they run, and their
first run builds the node binaries (see README.md for the times).

Fixtures:
- `node_binaries` (session): the built `NodeBinaries`, built once after collection.
- `monitoring_binaries` (session): Prometheus and its operator (`build --monitoring`), built
  after collection when a selected test uses them.
- `metrics_binaries` (session): metrics-server (`build --metrics`), the same way.
- `skaffold_binaries` (session): skaffold (`build --skaffold`), the same way.
- `kube_node` (session): a running `NodeCluster`; `kube_node_host_before` is the host's
  state from just before it started, for the test that checks `stop()` restores it.
- `python_base_image` (session): the Debian-made Python base, imported into the node.
- `app_image` (session): the project's image built from its Dockerfile (rebuilt only when
  its inputs change), pushed to the node's registry; an `ImageRef` pods pull.
- `dev_postgres_image`, `example_image` (session): the dev Postgres of `deploy/dev/` and the
  example user project's image, built from their Dockerfiles the same way, imported.
- `bridge_postgres` (session): a Postgres on the host that pods reach at the bridge address.
- `namespace`: a fresh namespace (with its `default` ServiceAccount) per test.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.cluster import appimage, build, devpostgres, example, rootfs
from tests.cluster.build import (
    Binaries,
    ImageToolBinaries,
    MetricsBinaries,
    MonitoringBinaries,
    NodeBinaries,
    Progress,
    SkaffoldBinaries,
)
from tests.cluster.errors import ClusterError
from tests.cluster.host import HostState, host_state
from tests.cluster.image import ImageRef
from tests.cluster.node import NodeCluster, NodePorts, clear_leftover
from tests.cluster.pgbridge import BridgePostgres
from tests.cluster.pods import create_namespace, kubectl
from tests.cluster.pytest_plugin import started, terminal_progress

_NODE_BUILD_ERROR = pytest.StashKey[str]()
_B = TypeVar("_B")
# The test that stops the session's node cluster runs after every other node test.
# Stopping the session's cluster, then a whole cluster left behind by a killed run.
_LAST = ("test_stop_leaves_nothing_behind", "test_the_next_run_clears_a_killed_runs_cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "node: needs a one-node cluster that runs pods (root; `pytest -m node`)"
    )


def _node_selected(config: pytest.Config) -> bool:
    return "node" in (config.option.markexpr or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    node_items = [item for item in items if item.get_closest_marker("node")]
    if not node_items:
        return
    if not _node_selected(config):
        config.hook.pytest_deselected(items=node_items)
        items[:] = [item for item in items if not item.get_closest_marker("node")]
        return
    items.sort(key=lambda item: _LAST.index(item.name) + 1 if item.name in _LAST else 0)


def pytest_collection_finish(session: pytest.Session) -> None:
    """A cold build outlasts any test timeout: do it here, outside every test."""
    if session.config.option.collectonly:
        return
    if not any(item.get_closest_marker("node") for item in session.items):
        return

    def wanted(fixture: str) -> bool:
        return any(fixture in getattr(item, "fixturenames", ()) for item in session.items)

    monitoring = wanted("monitoring_binaries")
    metrics = wanted("metrics_binaries")
    skaffold = wanted("skaffold_binaries")
    if (
        build.cached_node_binaries() is not None
        and build.cached_image_tools() is not None
        and (not monitoring or build.cached_monitoring() is not None)
        and (not metrics or build.cached_metrics() is not None)
        and (not skaffold or build.cached_skaffold() is not None)
    ):
        return
    progress = terminal_progress(session.config)
    try:
        build.ensure_binaries(progress=progress)
        build.ensure_node_binaries(progress=progress)
        build.ensure_image_tools(progress=progress)
        if monitoring:
            build.ensure_monitoring(progress=progress)
        if metrics:
            build.ensure_metrics(progress=progress)
        if skaffold:
            build.ensure_skaffold(progress=progress)
    except ClusterError as exc:
        session.config.stash[_NODE_BUILD_ERROR] = str(exc)


def _built(config: pytest.Config, what: str, ensure: Callable[[], _B]) -> _B:
    """The set `ensure` returns; a failure (here or after collection) fails the test."""
    earlier = config.stash.get(_NODE_BUILD_ERROR, None)
    if earlier is not None:
        pytest.fail(f"building {what} failed:\n{earlier}", pytrace=False)
    try:
        return ensure()
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def node_binaries(request: pytest.FixtureRequest) -> NodeBinaries:
    return _built(request.config, "the node binaries", build.ensure_node_binaries)


@pytest.fixture(scope="session")
def image_tools(request: pytest.FixtureRequest) -> ImageToolBinaries:
    return _built(request.config, "the image tools", build.ensure_image_tools)


@pytest.fixture(scope="session")
def monitoring_binaries(request: pytest.FixtureRequest) -> MonitoringBinaries:
    return _built(request.config, "Prometheus and its operator", build.ensure_monitoring)


@pytest.fixture(scope="session")
def metrics_binaries(request: pytest.FixtureRequest) -> MetricsBinaries:
    return _built(request.config, "metrics-server", build.ensure_metrics)


@pytest.fixture(scope="session")
def skaffold_binaries(request: pytest.FixtureRequest) -> SkaffoldBinaries:
    return _built(request.config, "skaffold", build.ensure_skaffold)


@pytest.fixture(scope="session")
def kube_node_host_before() -> HostState:
    """The host as the session's cluster finds it, once a killed run's leftovers are gone."""
    try:
        clear_leftover()
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    return host_state()


@pytest.fixture(scope="session")
def kube_node(
    cluster_binaries: Binaries,
    node_binaries: NodeBinaries,
    image_tools: ImageToolBinaries,
    kube_node_host_before: HostState,
) -> Iterator[NodeCluster]:
    """A node cluster with a registry, for the session; needs root."""
    if os.geteuid() != 0:
        pytest.fail("the node tier needs root (bridges, iptables, mounts)", pytrace=False)
    # Any free registry port: a developer's own registry may hold the default.
    with started(
        lambda: NodeCluster.start(
            cluster_binaries, node_binaries, image_tools=image_tools, ports=NodePorts(registry=0)
        ),
        NodeCluster.stop,
        "the node cluster",
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def python_base_image(kube_node: NodeCluster, request: pytest.FixtureRequest) -> ImageRef:
    """`rootfs.PYTHON_BASE_IMAGE`, made (debootstrap, about a minute) and imported."""
    try:
        archive = rootfs.python_base_archive(terminal_progress(request.config))
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    kube_node.import_image(archive, rootfs.PYTHON_BASE_IMAGE)
    return rootfs.PYTHON_BASE_IMAGE


@pytest.fixture(scope="session")
def app_image(
    kube_node: NodeCluster,
    image_tools: ImageToolBinaries,
    node_binaries: NodeBinaries,
    request: pytest.FixtureRequest,
) -> ImageRef:
    """The project's image from its Dockerfile (`appimage`), in the node's registry.

    Built by BuildKit only when the files it is built from changed (about a minute),
    else taken from the cache. Returns `threadkeeper.local/threadkeeper:<key>`, the
    exact build; pods pull it from the loopback registry.
    """
    progress = terminal_progress(request.config)
    try:
        base = rootfs.python_base_archive(progress)
        built = appimage.app_image(image_tools, node_binaries, base, progress)
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    kube_node.import_image(built.archive, *built.refs)
    return built.ref


def _imported(
    request: pytest.FixtureRequest,
    cluster: NodeCluster,
    build_image: Callable[[Progress], tuple[Path, ImageRef]],
) -> ImageRef:
    """An image built (or found cached) by `build_image`, imported into the node."""
    try:
        archive, ref = build_image(terminal_progress(request.config))
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    cluster.import_image(archive, ref)
    return ref


@pytest.fixture(scope="session")
def dev_postgres_image(
    kube_node: NodeCluster,
    image_tools: ImageToolBinaries,
    node_binaries: NodeBinaries,
    request: pytest.FixtureRequest,
) -> ImageRef:
    """The dev Postgres of `deploy/dev/` (`devpostgres`), built from its Dockerfile."""
    return _imported(
        request,
        kube_node,
        lambda progress: devpostgres.dev_postgres_image(
            image_tools, node_binaries, rootfs.python_base_archive(progress), progress
        ),
    )


@pytest.fixture(scope="session")
def example_image(
    kube_node: NodeCluster,
    image_tools: ImageToolBinaries,
    node_binaries: NodeBinaries,
    app_image: ImageRef,
    request: pytest.FixtureRequest,
) -> ImageRef:
    """The example user project's image (`example`), built on the project's image."""

    def build_image(progress: Progress) -> tuple[Path, ImageRef]:
        base = rootfs.python_base_archive(progress)
        # `app_image` built it already: this finds the cached archive.
        app = appimage.app_image(image_tools, node_binaries, base, progress)
        return example.example_image(image_tools, node_binaries, app, progress)

    return _imported(request, kube_node, build_image)


@pytest.fixture(scope="session")
def bridge_postgres(kube_node: NodeCluster) -> Iterator[BridgePostgres]:
    """A Postgres on the host that pods reach at the node's bridge address."""
    try:
        server = BridgePostgres.start(kube_node.network)
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def namespace(kube_node: NodeCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    create_namespace(kube_node, name)
    try:
        yield name
    finally:
        kubectl(kube_node, "delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def port_forward(kube_node: NodeCluster) -> Iterator[Any]:
    """`start(namespace, target)` runs `kubectl port-forward` and returns the local URL.

    The target's port 80 (`start(namespace, target, port)` for another) on a free local port.
    """
    procs: list[subprocess.Popen[str]] = []

    def start(namespace: str, target: str, port: int = 80) -> str:
        command = [str(kube_node.kubectl), "port-forward", "-n", namespace, target, f":{port}",
                   "--address", "127.0.0.1"]  # fmt: skip
        proc = subprocess.Popen(
            command,
            env=kube_node.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
        assert found, f"kubectl port-forward said: {line}{proc.stdout.read() if not line else ''}"
        return f"http://127.0.0.1:{found[1]}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
