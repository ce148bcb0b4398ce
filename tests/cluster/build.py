"""Build pinned Kubernetes binaries from the Go module proxy, and cache them.

Two sets, each cached under its own key so one never invalidates the other:
- the control plane (etcd, kube-apiserver, kubectl, helm), what the `cluster` tests need;
- the node (kubelet, kube-controller-manager, kube-scheduler, kube-proxy, containerd with
  its runc shim and ctr, runc, the CNI plugins, CoreDNS), what `up --node` adds;
- and further sets (the image tools, monitoring, skaffold) that single node tests use.

The Go sources are wrapper modules under `go/` (committed with go.sum), because the
releases' own go.mod files carry `replace` directives that make `go install mod@version`
fail, and because a main package cannot be imported. skaffold is the exception: its
replaced modules change APIs it compiles against, so it is built as its own main module,
in its source that `go/skaffold` pins by go.sum. The binaries land in
`<cache>/<key>/bin`, where the key names the versions and hashes the set's wrapper
modules, so changing a pin or a go.sum builds a new set next to the old.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import platformdirs

from tests.cluster.errors import ClusterError
from tests.cluster.proc import die_with_parent, kill_group

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.21.4"
CONTAINERD_VERSION = "v2.4.2"
RUNC_VERSION = "v1.5.3"
CNI_PLUGINS_VERSION = "v1.10.0"
COREDNS_VERSION = "v1.15.0"
BUILDKIT_VERSION = "v0.34.2"
REGISTRY_VERSION = "v3.1.2"
PROMETHEUS_VERSION = "v0.316.0"
# The newest release whose pkg/client module the Go module proxy serves (403 from v0.94.0).
PROMETHEUS_OPERATOR_VERSION = "v0.93.1"
METRICS_SERVER_VERSION = "v0.8.0"
SKAFFOLD_MODULE = "github.com/GoogleContainerTools/skaffold/v2"
# The newest release the proxy serves; the first whose schema is skaffold.yaml's v4beta14.
SKAFFOLD_VERSION = "v2.24.0"
# The `go` line of all three releases' go.mod; the wrappers run with GOTOOLCHAIN=local
# so a build never fetches a toolchain behind the developer's back.
GO_MINIMUM = (1, 26, 0)
# The node set's highest `go` line: CNI plugins v1.10.0.
NODE_GO_MINIMUM = (1, 26, 8)
# skaffold v2.24.0's own go.mod `go` line.
SKAFFOLD_GO_MINIMUM = (1, 26, 4)

GO_DIR = Path(__file__).resolve().parent / "go"
CACHE_ENV = "THREADKEEPER_CLUSTER_CACHE"
GO_ENV = "THREADKEEPER_GO"
# Where the official Go tarball installs; not always on PATH in CI shells.
_GO_FALLBACKS = (Path("/usr/local/go/bin/go"),)
# Bump when _go_env() or the go build flags change; the ldflags and packages of
# _steps() are hashed into the cache key already.
_RECIPE = "2"
_NODE_RECIPE = "1"
_CONTROL_PLANE_MODULES = ("etcd", "helm", "kubernetes")
_NODE_MODULES = ("cni", "containerd", "coredns", "kubernetes-node", "runc")
_IMAGE_TOOL_RECIPE = "1"
_IMAGE_TOOL_MODULES = ("buildkit", "registry")
_MONITORING_RECIPE = "1"
_MONITORING_MODULES = ("prometheus", "prometheus-operator")
_METRICS_RECIPE = "1"
_METRICS_MODULES = ("metrics-server",)
_SKAFFOLD_RECIPE = "1"
_SKAFFOLD_MODULES = ("skaffold",)
# Measured on the 2-core reference machine (see README.md); only used in messages.
COLD_BUILD_HINT = "5-16 minutes on 2 cores, 4.5 GB of Go caches"
NODE_COLD_BUILD_HINT = "5-25 minutes on 2 cores, up to 7 GB of Go caches"
IMAGE_TOOL_COLD_BUILD_HINT = "2-10 minutes on 2 cores"
MONITORING_COLD_BUILD_HINT = "5-12 minutes on 2 cores"
METRICS_COLD_BUILD_HINT = "3-8 minutes on 2 cores"
SKAFFOLD_COLD_BUILD_HINT = "5-10 minutes on 2 cores, 1.8 GB of memory"

Progress = Callable[[str], None]
_B = TypeVar("_B")


@dataclass(frozen=True)
class Binaries:
    """Paths of one cached, complete set of binaries."""

    bin_dir: Path

    @property
    def etcd(self) -> Path:
        return self.bin_dir / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.bin_dir / "kube-apiserver"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    def all(self) -> dict[str, Path]:
        return {
            "etcd": self.etcd,
            "kube-apiserver": self.kube_apiserver,
            "kubectl": self.kubectl,
            "helm": self.helm,
        }


@dataclass(frozen=True)
class _StepBinaries:
    """Paths of one cached, complete set built by a list of steps."""

    bin_dir: Path

    @staticmethod
    def _steps() -> list[_Step]:
        raise NotImplementedError

    def __getitem__(self, name: str) -> Path:
        return self.all()[name]

    def all(self) -> dict[str, Path]:
        return {
            name: self.bin_dir / step.subdir / name
            for step in self._steps()
            for name in step.outputs
        }


@dataclass(frozen=True)
class NodeBinaries(_StepBinaries):
    """The kubelet and the rest of a node (`tests.cluster.node`)."""

    @staticmethod
    def _steps() -> list[_Step]:
        return _node_steps()

    @property
    def cni_dir(self) -> Path:
        """The CNI plugins, apart so the directory holds nothing else for containerd."""
        return self.bin_dir / "cni"


@dataclass(frozen=True)
class ImageToolBinaries(_StepBinaries):
    """buildkitd, buildctl and a registry: what building and serving images takes."""

    @staticmethod
    def _steps() -> list[_Step]:
        return _image_tool_steps()


@dataclass(frozen=True)
class MonitoringBinaries(_StepBinaries):
    """Prometheus, the Prometheus Operator and its config reloader (`build --monitoring`)."""

    @staticmethod
    def _steps() -> list[_Step]:
        return _monitoring_steps()


@dataclass(frozen=True)
class MetricsBinaries(_StepBinaries):
    """metrics-server, what the HorizontalPodAutoscaler reads CPU from (`build --metrics`)."""

    @staticmethod
    def _steps() -> list[_Step]:
        return _metrics_steps()


class SkaffoldBinaries(_StepBinaries):
    """skaffold, which drives the BuildKit build and helm (`build --skaffold`)."""

    @staticmethod
    def _steps() -> list[_Step]:
        return _skaffold_steps()

    @property
    def skaffold(self) -> Path:
        return self["skaffold"]


@dataclass(frozen=True)
class _Step:
    label: str
    module: str
    packages: tuple[str, ...]
    outputs: tuple[str, ...]
    ldflags: tuple[str, ...]
    # Outside repr: the control-plane key hashes repr(_steps()), and a new field there
    # would rebuild a cached set whose recipe did not change. The node key hashes these.
    cgo: bool = field(default=False, repr=False)
    tags: tuple[str, ...] = field(default=(), repr=False)
    subdir: str = field(default="", repr=False)
    # A module@version built as the main module in its own source (which go.sum of
    # `go/<module>` verifies), instead of the wrapper module `go/<module>`.
    upstream: str = field(default="", repr=False)

    def fingerprint(self) -> str:
        return f"{self!r} cgo={self.cgo} tags={self.tags} subdir={self.subdir!r}" + (
            f" upstream={self.upstream}" if self.upstream else ""
        )


CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


def _minor(version: str) -> tuple[str, str]:
    major, minor = version.lstrip("v").split(".")[:2]
    return major, minor


def _kubernetes_ldflags() -> tuple[str, ...]:
    major, minor = _minor(KUBERNETES_VERSION)
    # What upstream's hack/lib/version.sh stamps in, so `/version`, `kubectl version`
    # and helm's `.Capabilities.KubeVersion` report the real release instead of v0.0.0.
    # buildDate stays at its epoch default so the binaries are reproducible.
    k8s_ld: list[str] = []
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        k8s_ld += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return tuple(k8s_ld)


def _steps() -> list[_Step]:
    major, minor = _minor(KUBERNETES_VERSION)
    helm_ld = [
        f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={major}",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={minor}",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major}",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}",
    ]
    return [
        _Step(f"etcd {ETCD_VERSION}", "etcd", (".",), ("etcd",), ()),
        _Step(
            f"kube-apiserver and kubectl {KUBERNETES_VERSION}",
            "kubernetes",
            ("./cmd/kube-apiserver", "./cmd/kubectl"),
            ("kube-apiserver", "kubectl"),
            _kubernetes_ldflags(),
        ),
        _Step(
            f"helm {HELM_VERSION}",
            "helm",
            ("helm.sh/helm/v3/cmd/helm",),
            ("helm",),
            tuple(helm_ld),
        ),
    ]


def _node_steps() -> list[_Step]:
    node_components = ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy")
    cni = "github.com/containernetworking/plugins/plugins"
    containerd = "github.com/containerd/containerd/v2"
    return [
        _Step(
            f"kubelet, kube-controller-manager, kube-scheduler, kube-proxy {KUBERNETES_VERSION}",
            "kubernetes-node",
            tuple(f"./cmd/{name}" for name in node_components),
            node_components,
            _kubernetes_ldflags(),
        ),
        _Step(
            f"containerd, containerd-shim-runc-v2, ctr {CONTAINERD_VERSION}",
            "containerd",
            tuple(
                f"{containerd}/cmd/{name}"
                for name in ("containerd", "containerd-shim-runc-v2", "ctr")
            ),
            ("containerd", "containerd-shim-runc-v2", "ctr"),
            (f"-X {containerd}/version.Version={CONTAINERD_VERSION.lstrip('v')}",),
        ),
        # containerd gives every sandbox the RuntimeDefault seccomp profile, which a runc
        # built without libseccomp refuses; hence cgo and the seccomp tag, as upstream's.
        _Step(
            f"runc {RUNC_VERSION}",
            "runc",
            ("github.com/opencontainers/runc",),
            ("runc",),
            (),
            cgo=True,
            tags=("seccomp",),
        ),
        _Step(
            f"CNI plugins {CNI_PLUGINS_VERSION}",
            "cni",
            (
                f"{cni}/main/bridge",
                f"{cni}/ipam/host-local",
                f"{cni}/main/loopback",
                f"{cni}/meta/portmap",
            ),
            CNI_PLUGINS,
            (),
            subdir="cni",
        ),
        _Step(
            f"coredns {COREDNS_VERSION}",
            "coredns",
            # go/coredns/main.go: upstream's main with the Corefile's plugins only.
            (".",),
            ("coredns",),
            (),
        ),
    ]


def _image_tool_steps() -> list[_Step]:
    buildkit = "github.com/moby/buildkit"
    registry = "github.com/distribution/distribution/v3"
    return [
        _Step(
            f"buildkitd, buildctl {BUILDKIT_VERSION}",
            "buildkit",
            (f"{buildkit}/cmd/buildkitd", f"{buildkit}/cmd/buildctl"),
            ("buildkitd", "buildctl"),
            (f"-X {buildkit}/version.Version={BUILDKIT_VERSION}",),
        ),
        _Step(
            f"registry {REGISTRY_VERSION}",
            "registry",
            # go/registry/main.go: upstream's main with the filesystem storage driver only.
            (".",),
            ("registry",),
            (f"-X {registry}/version.version={REGISTRY_VERSION}",),
        ),
    ]


def _monitoring_steps() -> list[_Step]:
    prometheus = "github.com/prometheus/prometheus"
    operator = "github.com/prometheus-operator/prometheus-operator"
    common = "github.com/prometheus/common/version"
    return [
        _Step(
            f"prometheus {PROMETHEUS_VERSION}",
            "prometheus",
            (f"{prometheus}/cmd/prometheus",),
            ("prometheus",),
            (f"-X {common}.Version={PROMETHEUS_VERSION}",),
            # Upstream's build tags for a Prometheus with only the service discoveries it
            # needs (plugins/*.go): Kubernetes is all the operator's configuration uses, and
            # the cloud SDKs of the others were most of the build's time.
            tags=("remove_all_sd", "enable_kubernetes_sd"),
        ),
        _Step(
            f"prometheus-operator, prometheus-config-reloader {PROMETHEUS_OPERATOR_VERSION}",
            "prometheus-operator",
            (f"{operator}/cmd/operator", f"{operator}/cmd/prometheus-config-reloader"),
            ("operator", "prometheus-config-reloader"),
            (f"-X {common}.Version={PROMETHEUS_OPERATOR_VERSION}",),
        ),
    ]


def _metrics_steps() -> list[_Step]:
    metrics_server = "sigs.k8s.io/metrics-server"
    return [
        _Step(
            f"metrics-server {METRICS_SERVER_VERSION}",
            "metrics-server",
            (f"{metrics_server}/cmd/metrics-server",),
            ("metrics-server",),
            # What upstream's Makefile stamps in (its PKG is client-go's), less the commit
            # and date, so the binary is reproducible.
            (f"-X k8s.io/client-go/pkg/version.gitVersion={METRICS_SERVER_VERSION}",),
        ),
    ]


def _skaffold_steps() -> list[_Step]:
    version = "github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/version"
    return [
        _Step(
            f"skaffold {SKAFFOLD_VERSION}",
            "skaffold",
            ("./cmd/skaffold",),
            ("skaffold",),
            (f"-X {version}.version={SKAFFOLD_VERSION}",),
            # Upstream's Linux release tags (its Makefile), without cgo: a static binary.
            tags=("timetzdata", "osusergo", "netgo", "release"),
            upstream=f"{SKAFFOLD_MODULE}@{SKAFFOLD_VERSION}",
        ),
    ]


def cache_root() -> Path:
    """Directory holding every cached binary set, the build lock and `up`'s state."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    return Path(platformdirs.user_cache_dir("threadkeeper")) / "cluster"


def _source_digest(recipe: str, modules: Sequence[str]) -> str:
    digest = hashlib.sha256(recipe.encode())
    for path in sorted(GO_DIR.rglob("*")):
        if path.relative_to(GO_DIR).parts[0] not in modules:
            continue
        if path.is_file() and (path.name in ("go.mod", "go.sum") or path.suffix == ".go"):
            digest.update(str(path.relative_to(GO_DIR)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _steps_digest(recipe: str, steps: Sequence[_Step], modules: Sequence[str]) -> str:
    """The digest of a set made by `steps` (their fingerprints) from the wrapper `modules`."""
    fingerprints = "\0".join(step.fingerprint() for step in steps)
    return _source_digest(f"{recipe}\0{fingerprints}\0", modules)


def cache_key() -> str:
    """The control-plane set's directory name under `cache_root()`."""
    digest = _source_digest(f"{_RECIPE}\0{_steps()!r}\0", _CONTROL_PLANE_MODULES)
    return f"kubernetes-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}_{digest}"


def node_cache_key() -> str:
    """The node set's directory name under `cache_root()`."""
    digest = _steps_digest(f"node{_NODE_RECIPE}", _node_steps(), _NODE_MODULES)
    return (
        f"node_kubernetes-{KUBERNETES_VERSION}_containerd-{CONTAINERD_VERSION}"
        f"_runc-{RUNC_VERSION}_cni-{CNI_PLUGINS_VERSION}_coredns-{COREDNS_VERSION}_{digest}"
    )


def image_tool_cache_key() -> str:
    """The image tools' directory name under `cache_root()`."""
    digest = _steps_digest(f"image{_IMAGE_TOOL_RECIPE}", _image_tool_steps(), _IMAGE_TOOL_MODULES)
    return f"image-tools_buildkit-{BUILDKIT_VERSION}_registry-{REGISTRY_VERSION}_{digest}"


def monitoring_cache_key() -> str:
    """The monitoring set's directory name under `cache_root()`."""
    digest = _steps_digest(
        f"monitoring{_MONITORING_RECIPE}", _monitoring_steps(), _MONITORING_MODULES
    )
    return (
        f"monitoring_prometheus-{PROMETHEUS_VERSION}"
        f"_operator-{PROMETHEUS_OPERATOR_VERSION}_{digest}"
    )


def metrics_cache_key() -> str:
    """The metrics-server set's directory name under `cache_root()`."""
    digest = _steps_digest(f"metrics{_METRICS_RECIPE}", _metrics_steps(), _METRICS_MODULES)
    return f"metrics_metrics-server-{METRICS_SERVER_VERSION}_{digest}"


def skaffold_cache_key() -> str:
    """The skaffold set's directory name under `cache_root()`."""
    digest = _steps_digest(f"skaffold{_SKAFFOLD_RECIPE}", _skaffold_steps(), _SKAFFOLD_MODULES)
    return f"skaffold-{SKAFFOLD_VERSION}_{digest}"


def _complete(paths: dict[str, Path]) -> bool:
    # A set directory only ever appears by rename, complete; the check guards against
    # someone deleting files by hand.
    return all(p.is_file() and os.access(p, os.X_OK) for p in paths.values())


def cached_binaries() -> Binaries | None:
    """The cached control-plane set for the current pins, or None; never builds."""
    bins = Binaries(cache_root() / cache_key() / "bin")
    return bins if _complete(bins.all()) else None


def cached_node_binaries() -> NodeBinaries | None:
    """The cached node set for the current pins, or None; never builds."""
    bins = NodeBinaries(cache_root() / node_cache_key() / "bin")
    return bins if _complete(bins.all()) else None


def cached_image_tools() -> ImageToolBinaries | None:
    """The cached buildkit and registry for the current pins, or None; never builds."""
    bins = ImageToolBinaries(cache_root() / image_tool_cache_key() / "bin")
    return bins if _complete(bins.all()) else None


def cached_monitoring() -> MonitoringBinaries | None:
    """The cached Prometheus and Prometheus Operator for the current pins, or None."""
    bins = MonitoringBinaries(cache_root() / monitoring_cache_key() / "bin")
    return bins if _complete(bins.all()) else None


def cached_metrics() -> MetricsBinaries | None:
    """The cached metrics-server for the current pin, or None; never builds."""
    bins = MetricsBinaries(cache_root() / metrics_cache_key() / "bin")
    return bins if _complete(bins.all()) else None


def cached_skaffold() -> SkaffoldBinaries | None:
    """The cached skaffold for the current pin, or None; never builds."""
    bins = SkaffoldBinaries(cache_root() / skaffold_cache_key() / "bin")
    return bins if _complete(bins.all()) else None


def find_go() -> Path | None:
    """The `go` command to build with: $THREADKEEPER_GO, then PATH, then /usr/local/go."""
    explicit = os.environ.get(GO_ENV)
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    found = shutil.which("go")
    if found:
        return Path(found)
    for candidate in _GO_FALLBACKS:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _go_env(*, cgo: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",
        # go.sum is committed: a build must not rewrite it, only verify against it.
        GOFLAGS="-mod=readonly",
        GOWORK="off",
        # Static binaries like upstream's releases, and no C compiler needed, except
        # where a step links a C library (runc and libseccomp).
        CGO_ENABLED="1" if cgo else "0",
    )
    return env


def module_source(go_module: str, module: str) -> Path:
    """The source directory of `module` at the version `go/<go_module>` pins (go.sum verified).

    `go mod download` takes it from the module cache, else from the Go module proxy.
    """
    go = find_go()
    if go is None:
        raise ClusterError(f"reading {module}'s files needs Go; set ${GO_ENV} or put go on PATH")
    try:
        out = subprocess.run(
            [str(go), "mod", "download", "-json", module],
            cwd=GO_DIR / go_module,
            env=_go_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise ClusterError(f"go mod download {module} failed: {exc.stdout}{exc.stderr}") from exc
    return Path(json.loads(out)["Dir"])


def go_version(go: Path) -> tuple[int, int, int]:
    try:
        out = subprocess.run(
            [str(go), "env", "GOVERSION"],
            env=_go_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ClusterError(f"{go} does not run: {exc}") from exc
    match = re.match(r"go(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        raise ClusterError(f"cannot parse the Go version {out!r} reported by {go}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _require_go(
    minimum: tuple[int, int, int] = GO_MINIMUM, what: str = "kube-apiserver and etcd"
) -> Path:
    go = find_go()
    wanted = ".".join(map(str, minimum))
    if go is None:
        raise ClusterError(
            f"Go >= {wanted} is needed to build {what} for the tests, "
            f"and none was found on PATH, in /usr/local/go/bin or in ${GO_ENV}. "
            "Install a Go toolchain, or set KUBECONFIG to use an existing cluster."
        )
    have = go_version(go)
    if have < minimum:
        raise ClusterError(
            f"{go} is Go {'.'.join(map(str, have))}, but the pinned releases need Go >= {wanted}."
        )
    return go


def _require_cgo_seccomp() -> None:
    """runc links libseccomp through cgo: a C compiler and the library's headers."""
    missing = [tool for tool in ("gcc", "pkg-config") if shutil.which(tool) is None]
    if missing:
        raise ClusterError(
            f"building runc needs {' and '.join(missing)} (cgo); "
            "install them, e.g. `apt-get install gcc pkg-config libseccomp-dev`"
        )
    found = subprocess.run(["pkg-config", "--exists", "libseccomp"], check=False)
    if found.returncode != 0:
        raise ClusterError(
            "building runc with seccomp needs libseccomp's headers; "
            "install them, e.g. `apt-get install libseccomp-dev`"
        )


@contextlib.contextmanager
def locked(path: Path, progress: Progress) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another build to finish (lock {path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_go(
    go: Path,
    args: Sequence[str],
    cwd: Path,
    step: _Step,
    progress: Progress,
    log_path: Path,
) -> None:
    label = step.label
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(go), *args],
            cwd=cwd,
            env=_go_env(cgo=step.cgo),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    started = time.monotonic()
    try:
        while True:
            try:
                code = proc.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:
                progress(f"  still building {label} ({time.monotonic() - started:.0f}s)")
    finally:
        kill_group(proc)
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise ClusterError(
            f"building {label} failed (go exit {code}); last lines of {log_path}:\n"
            + "\n".join(tail)
        )


def _step_source(step: _Step) -> Path:
    """The main module a step builds in: its wrapper, or the upstream source it pins."""
    if step.upstream:
        return module_source(step.module, step.upstream)
    return GO_DIR / step.module


def _build_into(
    go: Path, bin_dir: Path, steps: Sequence[_Step], progress: Progress
) -> dict[str, float]:
    timings: dict[str, float] = {}
    for step in steps:
        progress(f"building {step.label} ...")
        started = time.monotonic()
        out_dir = bin_dir / step.subdir
        out_dir.mkdir(exist_ok=True)
        # -buildvcs=false: the wrappers live in this repo, and stamping its commit would
        # make otherwise identical binaries differ from one checkout to the next.
        args = ["build", "-trimpath", "-buildvcs=false"]
        if step.tags:
            args += ["-tags", ",".join(step.tags)]
        args += ["-ldflags", " ".join(("-s", "-w", *step.ldflags))]
        args += ["-o", f"{out_dir}/", *step.packages]
        _run_go(
            go,
            args,
            _step_source(step),
            step,
            progress,
            bin_dir.parent / f"build-{step.module}.log",
        )
        for name in step.outputs:
            if not (out_dir / name).is_file():
                raise ClusterError(f"go build of {step.label} produced no {out_dir / name}")
        timings[step.label] = round(time.monotonic() - started, 1)
        progress(f"built {step.label} in {timings[step.label]:.0f}s")
    return timings


def _stderr_progress(message: str) -> None:
    log.info("%s", message)


@dataclass(frozen=True)
class _SetSpec:
    """What distinguishes one cached set from another."""

    key: str
    steps: tuple[_Step, ...]
    versions: dict[str, str]
    go_minimum: tuple[int, int, int]
    what: str
    cold_hint: str


def _control_plane_spec() -> _SetSpec:
    return _SetSpec(
        key=cache_key(),
        steps=tuple(_steps()),
        versions={"kubernetes": KUBERNETES_VERSION, "etcd": ETCD_VERSION, "helm": HELM_VERSION},
        go_minimum=GO_MINIMUM,
        what="kube-apiserver and etcd",
        cold_hint=COLD_BUILD_HINT,
    )


def _node_spec() -> _SetSpec:
    return _SetSpec(
        key=node_cache_key(),
        steps=tuple(_node_steps()),
        versions={
            "kubernetes": KUBERNETES_VERSION,
            "containerd": CONTAINERD_VERSION,
            "runc": RUNC_VERSION,
            "cni-plugins": CNI_PLUGINS_VERSION,
            "coredns": COREDNS_VERSION,
        },
        go_minimum=NODE_GO_MINIMUM,
        what="the kubelet, containerd, runc and CoreDNS",
        cold_hint=NODE_COLD_BUILD_HINT,
    )


def _image_tool_spec() -> _SetSpec:
    return _SetSpec(
        key=image_tool_cache_key(),
        steps=tuple(_image_tool_steps()),
        versions={"buildkit": BUILDKIT_VERSION, "registry": REGISTRY_VERSION},
        go_minimum=NODE_GO_MINIMUM,
        what="buildkit and the registry",
        cold_hint=IMAGE_TOOL_COLD_BUILD_HINT,
    )


def _monitoring_spec() -> _SetSpec:
    return _SetSpec(
        key=monitoring_cache_key(),
        steps=tuple(_monitoring_steps()),
        versions={
            "prometheus": PROMETHEUS_VERSION,
            "prometheus-operator": PROMETHEUS_OPERATOR_VERSION,
        },
        go_minimum=NODE_GO_MINIMUM,
        what="Prometheus and the Prometheus Operator",
        cold_hint=MONITORING_COLD_BUILD_HINT,
    )


def _metrics_spec() -> _SetSpec:
    return _SetSpec(
        key=metrics_cache_key(),
        steps=tuple(_metrics_steps()),
        versions={"metrics-server": METRICS_SERVER_VERSION},
        go_minimum=GO_MINIMUM,
        what="metrics-server",
        cold_hint=METRICS_COLD_BUILD_HINT,
    )


def _skaffold_spec() -> _SetSpec:
    return _SetSpec(
        key=skaffold_cache_key(),
        steps=tuple(_skaffold_steps()),
        versions={"skaffold": SKAFFOLD_VERSION},
        go_minimum=SKAFFOLD_GO_MINIMUM,
        what="skaffold",
        cold_hint=SKAFFOLD_COLD_BUILD_HINT,
    )


def _build_set(spec: _SetSpec, cached: Callable[[], object | None], report: Progress) -> None:
    """Build `spec` into `<cache>/<key>` unless `cached()` finds it there meanwhile.

    Builds run in a temporary sibling directory that is renamed into place only when every
    binary exists, under an exclusive file lock, so an interrupted build leaves nothing
    that looks usable and concurrent builders wait for each other instead of racing.
    """
    root = cache_root()
    go = _require_go(spec.go_minimum, spec.what)
    if any(step.cgo for step in spec.steps):
        _require_cgo_seccomp()
    with locked(root / ".build.lock", report):
        if cached() is not None:
            return
        # Holding the lock means any leftover temp dir belongs to a build that died.
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        final = root / spec.key
        if final.exists():
            shutil.rmtree(final)
        report(f"building test cluster binaries into {final} (cold: {spec.cold_hint})")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.key}-", dir=root))
        try:
            bin_dir = tmp / "bin"
            bin_dir.mkdir()
            started = time.monotonic()
            timings = _build_into(go, bin_dir, spec.steps, report)
            manifest = {
                **spec.versions,
                "go": ".".join(map(str, go_version(go))),
                "seconds": timings,
                "total_seconds": round(time.monotonic() - started, 1),
                "python": sys.version.split()[0],
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            # mkdtemp made it private; the binaries are meant to be shared.
            tmp.chmod(0o755)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report(f"built all binaries in {manifest['total_seconds']:.0f}s")


def _ensure(
    spec: Callable[[], _SetSpec], cached: Callable[[], _B | None], progress: Progress | None
) -> _B:
    found = cached()
    if found is not None:
        return found
    wanted = spec()
    _build_set(wanted, cached, progress or _stderr_progress)
    result = cached()
    if result is None:
        raise ClusterError(f"{cache_root() / wanted.key} is incomplete right after building it")
    return result


def ensure_binaries(progress: Progress | None = None) -> Binaries:
    """Return the cached control-plane binaries, building them first if needed."""
    return _ensure(_control_plane_spec, cached_binaries, progress)


def ensure_node_binaries(progress: Progress | None = None) -> NodeBinaries:
    """Return the cached node binaries, building them first if needed."""
    return _ensure(_node_spec, cached_node_binaries, progress)


def ensure_image_tools(progress: Progress | None = None) -> ImageToolBinaries:
    """Return the cached buildkitd, buildctl and registry, building them first if needed."""
    return _ensure(_image_tool_spec, cached_image_tools, progress)


def ensure_monitoring(progress: Progress | None = None) -> MonitoringBinaries:
    """Return the cached Prometheus and Prometheus Operator, building them first if needed."""
    return _ensure(_monitoring_spec, cached_monitoring, progress)


def ensure_metrics(progress: Progress | None = None) -> MetricsBinaries:
    """Return the cached metrics-server, building it first if needed."""
    return _ensure(_metrics_spec, cached_metrics, progress)


def ensure_skaffold(progress: Progress | None = None) -> SkaffoldBinaries:
    """Return the cached skaffold, building it first if needed."""
    return _ensure(_skaffold_spec, cached_skaffold, progress)


# --- regenerating the wrapper modules after a version bump -------------------------------

_HEADER = "// Generated by `python -m tests.cluster pin`; edit the versions in build.py instead.\n"


def _kubernetes_gomod(go: Path, module: str) -> str:
    info = subprocess.run(
        [str(go), "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        cwd=tempfile.gettempdir(),
        env=_go_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    upstream = Path(json.loads(info)["GoMod"]).read_text()
    staging = re.findall(r"^\s*(k8s\.io/\S+)\s+=>\s+\./staging/src/k8s\.io/", upstream, re.M)
    if not staging:
        raise ClusterError(f"no staging replaces found in k8s.io/kubernetes@{KUBERNETES_VERSION}")
    staging_version = "v0." + KUBERNETES_VERSION.lstrip("v").split(".", 1)[1]
    replaces = "".join(f"\t{mod} => {mod} {staging_version}\n" for mod in sorted(staging))
    return (
        _HEADER
        + "// k8s.io/kubernetes replaces its staging modules with ./staging paths, and only the\n"
        + "// main module's replaces apply, so they are repeated here with published versions.\n"
        + f"module threadkeeper.test/cluster/{module}\n\n"
        + "go 1.26.0\n\ngodebug default=go1.26\n\n"
        + f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\n"
        + f"replace (\n{replaces})\n"
    )


def _tool_gomod(module: str, go_line: str, tools: Sequence[str], require: str) -> str:
    return (
        _HEADER
        + "// A main package cannot be imported: the binaries are built as this module's tools.\n"
        + f"module threadkeeper.test/cluster/{module}\n\ngo {go_line}\n\n"
        + "".join(f"tool {tool}\n" for tool in tools)
        + f"\nrequire {require}\n"
    )


def _wrapper_gomod(module: str, why: str, require: str) -> str:
    """go.mod of a module whose own main.go trims an upstream main (`why` says how)."""
    return (
        _HEADER
        + f"// {why}\n"
        + f"module threadkeeper.test/cluster/{module}\n\ngo 1.26.0\n\n"
        + f"require {require}\n"
    )


def _node_gomods(go: Path) -> dict[str, str]:
    steps = {step.module: step for step in _node_steps()}

    def tool(module: str, go_line: str, require: str) -> str:
        return _tool_gomod(module, go_line, steps[module].packages, require)

    # Each release's own `go` line, which `go mod tidy` insists on.
    return {
        "kubernetes-node": _kubernetes_gomod(go, "kubernetes-node"),
        "containerd": tool(
            "containerd", "1.26.6", f"github.com/containerd/containerd/v2 {CONTAINERD_VERSION}"
        ),
        "runc": tool("runc", "1.26.0", f"github.com/opencontainers/runc {RUNC_VERSION}"),
        "cni": tool(
            "cni", "1.26.8", f"github.com/containernetworking/plugins {CNI_PLUGINS_VERSION}"
        ),
        "coredns": _wrapper_gomod(
            "coredns",
            "main.go is upstream's coredns main with only the plugins the node's Corefile uses.",
            f"github.com/coredns/coredns {COREDNS_VERSION}",
        ),
    }


def _tool_gomods(steps: Sequence[_Step], pins: dict[str, tuple[str, str]]) -> dict[str, str]:
    """go.mod of each tool module of a set; `pins`: module -> (its `go` line, its require)."""
    packages = {step.module: step.packages for step in steps}
    return {
        module: _tool_gomod(module, go_line, packages[module], require)
        for module, (go_line, require) in pins.items()
    }


def _image_tool_gomods() -> dict[str, str]:
    tools = _tool_gomods(
        _image_tool_steps()[:1],
        {"buildkit": ("1.26.8", f"github.com/moby/buildkit {BUILDKIT_VERSION}")},
    )
    registry = _wrapper_gomod(
        "registry",
        "main.go is upstream's registry main with only the storage driver the node uses.",
        f"github.com/distribution/distribution/v3 {REGISTRY_VERSION}",
    )
    return {**tools, "registry": registry}


def _monitoring_gomods() -> dict[str, str]:
    # The operator's go.mod replaces its own pkg/apis and pkg/client with ./ paths; they
    # are published modules of the same version, which the main module's require picks.
    operator = "github.com/prometheus-operator/prometheus-operator"
    return _tool_gomods(
        _monitoring_steps(),
        {
            "prometheus": ("1.26.7", f"github.com/prometheus/prometheus {PROMETHEUS_VERSION}"),
            "prometheus-operator": ("1.26.0", f"{operator} {PROMETHEUS_OPERATOR_VERSION}"),
        },
    )


def _metrics_gomods() -> dict[str, str]:
    return _tool_gomods(
        _metrics_steps(),
        {"metrics-server": ("1.26.0", f"sigs.k8s.io/metrics-server {METRICS_SERVER_VERSION}")},
    )


def _pin_skaffold(go: Path, report: Progress) -> None:
    """go/skaffold: a go.mod naming the release and a go.sum holding its checksums only.

    Nothing is built in it (`_skaffold_steps` builds in the release's own source), so
    `go mod tidy` would drop the require; `go mod download` records the sums instead.
    """
    directory = GO_DIR / "skaffold"
    directory.mkdir(exist_ok=True)
    (directory / "go.mod").write_text(
        _HEADER
        + "// Pins skaffold's source by go.sum: it is built as its own main module, because its\n"
        + "// go.mod's replaces, which its code compiles against, apply only there.\n"
        + "module threadkeeper.test/cluster/skaffold\n\n"
        + "go 1.26.4\n\n"
        + f"require {SKAFFOLD_MODULE} {SKAFFOLD_VERSION}\n"
    )
    (directory / "go.sum").unlink(missing_ok=True)
    env = _go_env()
    env["GOFLAGS"] = "-mod=mod"
    report(f"go mod download {SKAFFOLD_MODULE}@{SKAFFOLD_VERSION} in {directory}")
    subprocess.run(
        [str(go), "mod", "download", f"{SKAFFOLD_MODULE}@{SKAFFOLD_VERSION}"],
        cwd=directory,
        env=env,
        check=True,
    )


def pin(
    progress: Progress | None = None,
    *,
    node: bool = False,
    images: bool = False,
    monitoring: bool = False,
    metrics: bool = False,
    skaffold: bool = False,
) -> None:
    """Rewrite go/*/go.mod for the versions above and refresh go.sum with `go mod tidy`.

    `node` regenerates the node set's modules instead of the control plane's, `images`
    the image tools' (buildkit, registry), `monitoring` Prometheus' and its operator's,
    `metrics` metrics-server's, `skaffold` the pin of skaffold's source.
    """
    report = progress or _stderr_progress
    if skaffold:
        _pin_skaffold(_require_go(SKAFFOLD_GO_MINIMUM, "skaffold"), report)
    if node or images or monitoring or metrics:
        go = _require_go(NODE_GO_MINIMUM)
        if node:
            _tidy(go, _node_gomods(go), report)
        if images:
            _tidy(go, _image_tool_gomods(), report)
        if monitoring:
            _tidy(go, _monitoring_gomods(), report)
        if metrics:
            _tidy(go, _metrics_gomods(), report)
        return
    if skaffold:
        return
    go = _require_go()
    modules = {
        "kubernetes": _kubernetes_gomod(go, "kubernetes"),
        "etcd": _HEADER
        + "module threadkeeper.test/cluster/etcd\n\ngo 1.26.0\n\n"
        + f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n",
        "helm": _HEADER
        + "// helm's main package cannot be imported, so it is built as a tool of this module.\n"
        + "module threadkeeper.test/cluster/helm\n\ngo 1.26.0\n\n"
        + "tool helm.sh/helm/v3/cmd/helm\n\n"
        + f"require helm.sh/helm/v3 {HELM_VERSION}\n",
    }
    _tidy(go, modules, report)


def _tidy(go: Path, modules: dict[str, str], report: Progress) -> None:
    env = _go_env()
    env["GOFLAGS"] = "-mod=mod"
    for name, text in modules.items():
        directory = GO_DIR / name
        directory.mkdir(exist_ok=True)
        (directory / "go.mod").write_text(text)
        (directory / "go.sum").unlink(missing_ok=True)
        report(f"go mod tidy in {directory}")
        subprocess.run([str(go), "mod", "tidy"], cwd=directory, env=env, check=True)
