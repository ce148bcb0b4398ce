"""Build pinned etcd, kube-apiserver, kubectl and helm from the Go module proxy, and cache them.

The Go sources are three wrapper modules under `go/` (committed with go.sum), because the
releases' own go.mod files carry `replace` directives that make `go install mod@version`
fail. The binaries land in `<cache>/<key>/bin`, where the key names the versions and
hashes the wrapper modules, so changing a pin or a go.sum builds a new set next to the old.
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
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from tests.cluster.errors import ClusterError
from tests.cluster.proc import die_with_parent

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.21.4"
# The `go` line of all three releases' go.mod; the wrappers run with GOTOOLCHAIN=local
# so a build never fetches a toolchain behind the developer's back.
GO_MINIMUM = (1, 26, 0)

GO_DIR = Path(__file__).resolve().parent / "go"
CACHE_ENV = "THREADKEEPER_CLUSTER_CACHE"
GO_ENV = "THREADKEEPER_GO"
# Where the official Go tarball installs; not always on PATH in CI shells.
_GO_FALLBACKS = (Path("/usr/local/go/bin/go"),)
# Bump when _go_env() or the go build flags change; the ldflags and packages of
# _steps() are hashed into the cache key already.
_RECIPE = "2"
# Measured on the 2-core reference machine (see README.md); only used in messages.
COLD_BUILD_HINT = "13-16 minutes on 2 cores, 4.5 GB of Go caches"

Progress = Callable[[str], None]


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
class _Step:
    label: str
    module: str
    packages: tuple[str, ...]
    outputs: tuple[str, ...]
    ldflags: tuple[str, ...]


def _minor(version: str) -> tuple[str, str]:
    major, minor = version.lstrip("v").split(".")[:2]
    return major, minor


def _steps() -> list[_Step]:
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
            tuple(k8s_ld),
        ),
        _Step(
            f"helm {HELM_VERSION}",
            "helm",
            ("helm.sh/helm/v3/cmd/helm",),
            ("helm",),
            tuple(helm_ld),
        ),
    ]


def cache_root() -> Path:
    """Directory holding every cached binary set, the build lock and `up`'s state."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    return Path(platformdirs.user_cache_dir("threadkeeper")) / "cluster"


def _source_digest() -> str:
    digest = hashlib.sha256(f"{_RECIPE}\0{_steps()!r}\0".encode())
    for path in sorted(GO_DIR.rglob("*")):
        if path.is_file() and (path.name in ("go.mod", "go.sum") or path.suffix == ".go"):
            digest.update(str(path.relative_to(GO_DIR)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def cache_key() -> str:
    return (
        f"kubernetes-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}"
        f"_{_source_digest()}"
    )


def cached_binaries() -> Binaries | None:
    """The cached set for the current pins, or None; never builds."""
    bins = Binaries(cache_root() / cache_key() / "bin")
    # The set directory only ever appears by rename, complete; the check guards against
    # someone deleting files by hand.
    if all(p.is_file() and os.access(p, os.X_OK) for p in bins.all().values()):
        return bins
    return None


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


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",
        # go.sum is committed: a build must not rewrite it, only verify against it.
        GOFLAGS="-mod=readonly",
        GOWORK="off",
        # Static binaries like upstream's releases, and no C compiler needed.
        CGO_ENABLED="0",
    )
    return env


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


def _require_go() -> Path:
    go = find_go()
    wanted = ".".join(map(str, GO_MINIMUM))
    if go is None:
        raise ClusterError(
            f"Go >= {wanted} is needed to build kube-apiserver and etcd for the tests, "
            f"and none was found on PATH, in /usr/local/go/bin or in ${GO_ENV}. "
            "Install a Go toolchain, or set KUBECONFIG to use an existing cluster."
        )
    have = go_version(go)
    if have < GO_MINIMUM:
        raise ClusterError(
            f"{go} is Go {'.'.join(map(str, have))}, but the pinned releases need Go >= {wanted}."
        )
    return go


@contextlib.contextmanager
def _locked(path: Path, progress: Progress) -> Iterator[None]:
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
    go: Path, args: Sequence[str], cwd: Path, label: str, progress: Progress, log_path: Path
) -> None:
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(go), *args],
            cwd=cwd,
            env=_go_env(),
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
        # An interrupted build (Ctrl-C, a pytest timeout) must not leave compilers behind.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise ClusterError(
            f"building {label} failed (go exit {code}); last lines of {log_path}:\n"
            + "\n".join(tail)
        )


def _build_into(go: Path, bin_dir: Path, progress: Progress) -> dict[str, float]:
    timings: dict[str, float] = {}
    for step in _steps():
        progress(f"building {step.label} ...")
        started = time.monotonic()
        # -buildvcs=false: the wrappers live in this repo, and stamping its commit would
        # make otherwise identical binaries differ from one checkout to the next.
        args = ["build", "-trimpath", "-buildvcs=false"]
        args += ["-ldflags", " ".join(("-s", "-w", *step.ldflags))]
        args += ["-o", f"{bin_dir}/", *step.packages]
        _run_go(
            go,
            args,
            GO_DIR / step.module,
            step.label,
            progress,
            bin_dir.parent / f"build-{step.module}.log",
        )
        for name in step.outputs:
            if not (bin_dir / name).is_file():
                raise ClusterError(f"go build of {step.label} produced no {bin_dir / name}")
        timings[step.label] = round(time.monotonic() - started, 1)
        progress(f"built {step.label} in {timings[step.label]:.0f}s")
    return timings


def _stderr_progress(message: str) -> None:
    log.info("%s", message)


def ensure_binaries(progress: Progress | None = None) -> Binaries:
    """Return the cached binaries, building them first if this key has none yet.

    Builds run in a temporary sibling directory that is renamed into place only when every
    binary exists, under an exclusive file lock, so an interrupted build leaves nothing
    that looks usable and concurrent builders wait for each other instead of racing.
    """
    report = progress or _stderr_progress
    found = cached_binaries()
    if found:
        return found
    root = cache_root()
    key = cache_key()
    go = _require_go()
    with _locked(root / ".build.lock", report):
        found = cached_binaries()
        if found:
            return found
        # Holding the lock means any leftover temp dir belongs to a build that died.
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        final = root / key
        if final.exists():
            shutil.rmtree(final)
        report(f"building test cluster binaries into {final} (cold: {COLD_BUILD_HINT})")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            bin_dir = tmp / "bin"
            bin_dir.mkdir()
            started = time.monotonic()
            timings = _build_into(go, bin_dir, report)
            manifest = {
                "kubernetes": KUBERNETES_VERSION,
                "etcd": ETCD_VERSION,
                "helm": HELM_VERSION,
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
    result = cached_binaries()
    if result is None:
        raise ClusterError(f"{final} is incomplete right after building it")
    return result


# --- regenerating the wrapper modules after a version bump -------------------------------

_HEADER = "// Generated by `python -m tests.cluster pin`; edit the versions in build.py instead.\n"


def _kubernetes_gomod(go: Path) -> str:
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
        + "module threadkeeper.test/cluster/kubernetes\n\n"
        + "go 1.26.0\n\ngodebug default=go1.26\n\n"
        + f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\n"
        + f"replace (\n{replaces})\n"
    )


def pin(progress: Progress | None = None) -> None:
    """Rewrite go/*/go.mod for the versions above and refresh go.sum with `go mod tidy`."""
    report = progress or _stderr_progress
    go = _require_go()
    modules = {
        "kubernetes": _kubernetes_gomod(go),
        "etcd": _HEADER
        + "module threadkeeper.test/cluster/etcd\n\ngo 1.26.0\n\n"
        + f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n",
        "helm": _HEADER
        + "// helm's main package cannot be imported, so it is built as a tool of this module.\n"
        + "module threadkeeper.test/cluster/helm\n\ngo 1.26.0\n\n"
        + "tool helm.sh/helm/v3/cmd/helm\n\n"
        + f"require helm.sh/helm/v3 {HELM_VERSION}\n",
    }
    env = _go_env()
    env["GOFLAGS"] = "-mod=mod"
    for name, text in modules.items():
        directory = GO_DIR / name
        (directory / "go.mod").write_text(text)
        (directory / "go.sum").unlink(missing_ok=True)
        report(f"go mod tidy in {directory}")
        subprocess.run([str(go), "mod", "tidy"], cwd=directory, env=env, check=True)
