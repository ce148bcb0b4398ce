"""A real Kubernetes control plane for the tests, built from source.

`build.ensure_binaries()` builds pinned etcd, kube-apiserver, kubectl and helm with the Go
toolchain from the Go module proxy and caches them; `controlplane.ControlPlane.start()`
runs etcd and kube-apiserver on loopback with RBAC; `pytest_plugin` provides the `kube`
fixture; `python -m tests.cluster build|up|down|env` is the command line. See README.md.
"""

from tests.cluster.build import Binaries, cached_binaries, ensure_binaries
from tests.cluster.controlplane import Cluster, ControlPlane, ExternalCluster
from tests.cluster.errors import ClusterError

__all__ = [
    "Binaries",
    "Cluster",
    "ClusterError",
    "ControlPlane",
    "ExternalCluster",
    "cached_binaries",
    "ensure_binaries",
]
