"""pytest fixtures for a real Kubernetes API server.

Fixtures:
- `kube` (session): a `Cluster` with `.kubeconfig`, `.server`, `.api_client()`,
  `.as_service_account(namespace, name)`, `.kubectl`, `.helm` and `.env()`. With
  $KUBECONFIG set it is that cluster (`ExternalCluster`) and nothing is built; otherwise a
  `ControlPlane` started once for the session from the cached binaries.
- `cluster_binaries` (session): the built `Binaries`, for tests that start their own
  `ControlPlane`.

A cold build takes many minutes, longer than any per-test timeout, so when selected
tests need the binaries they are built once after collection, outside every test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from tests.cluster import build
from tests.cluster.build import Binaries
from tests.cluster.controlplane import Cluster, ControlPlane, ExternalCluster
from tests.cluster.errors import ClusterError

_PREBUILD_ERROR = pytest.StashKey[str]()
_C = TypeVar("_C")

_HOW_TO_FIX = (
    "The cluster tests need a Kubernetes API server. Either install Go >= "
    + ".".join(map(str, build.GO_MINIMUM))
    + " (on PATH, in /usr/local/go/bin, or named by $THREADKEEPER_GO) so tests/cluster can "
    "build kube-apiserver and etcd (`python -m tests.cluster build`), or set KUBECONFIG to "
    "a running cluster."
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: needs a Kubernetes control plane (built by tests/cluster or from KUBECONFIG)",
    )


def terminal_progress(config: pytest.Config) -> build.Progress:
    """Build progress as lines in pytest's terminal output."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def progress(message: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[tests.cluster] {message}")

    return progress


@contextmanager
def started(
    start: Callable[[], _C], stop: Callable[[_C], None], what: str | None = None
) -> Iterator[_C]:
    """What ``start`` starts, stopped when the block ends; a ClusterError from ``start`` fails
    the test (with "``what`` did not start" when named) rather than erroring it."""
    try:
        cluster = start()
    except ClusterError as exc:
        pytest.fail(f"{what} did not start: {exc}" if what else str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        stop(cluster)


def _needs_binaries(items: list[pytest.Item]) -> bool:
    external = bool(os.environ.get("KUBECONFIG"))
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "cluster_binaries" in names or ("kube" in names and not external):
            return True
    return False


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not _needs_binaries(session.items):
        return
    if build.cached_binaries() is not None or build.find_go() is None:
        return
    try:
        build.ensure_binaries(progress=terminal_progress(session.config))
    except ClusterError as exc:
        # Reported by the fixtures, on the tests that need them, instead of aborting
        # the whole session.
        session.config.stash[_PREBUILD_ERROR] = str(exc)


@pytest.fixture(scope="session")
def cluster_binaries(request: pytest.FixtureRequest) -> Binaries:
    """The cached etcd/kube-apiserver/kubectl/helm, built now if needed and possible."""
    cached = build.cached_binaries()
    if cached is not None:
        return cached
    earlier = request.config.stash.get(_PREBUILD_ERROR, None)
    if earlier is not None:
        pytest.fail(f"building the cluster binaries failed:\n{earlier}", pytrace=False)
    if build.find_go() is None:
        if os.environ.get("KUBECONFIG"):
            pytest.skip("starting a local control plane needs Go or cached binaries")
        pytest.fail(_HOW_TO_FIX, pytrace=False)
    try:
        return build.ensure_binaries()
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A Kubernetes API server for the whole session (see the module docstring)."""
    external = os.environ.get("KUBECONFIG")
    if external:
        with started(lambda: ExternalCluster.from_kubeconfig(external), ExternalCluster.close) as c:
            yield c
        return
    if build.cached_binaries() is None and build.find_go() is None:
        pytest.fail(_HOW_TO_FIX, pytrace=False)
    binaries: Binaries = request.getfixturevalue("cluster_binaries")
    with started(
        lambda: ControlPlane.start(binaries), ControlPlane.stop, "the local control plane"
    ) as plane:
        yield plane
