"""The project's image: its Dockerfile built as it is by BuildKit, cached by its inputs.

`app_image()` runs buildkitd (the OCI worker on the node set's runc) only for the build
and writes the result as an OCI archive to the cache; `NodeCluster.import_image` then
pushes it to the node's loopback registry, where pods pull it from.

What differs from a production `docker build`, and how:
- **Base images**, replaced by BuildKit's named build contexts (the mechanism behind
  `docker buildx build --build-context NAME=...`): the Dockerfile's default
  `PYTHON_IMAGE` by `oci-layout://` of the Debian-made base (`rootfs.py`), and the `uv`
  stage's image by `local:` a directory holding `uv` and `uvx` of the Dockerfile's uv
  version: this machine's (the uv wheel's binaries) when it is that version, else the
  uv wheel of that version, fetched by uv. Both names are read from the Dockerfile.
- **The `# syntax=docker/dockerfile:1` line** would make BuildKit fetch that frontend
  image from Docker Hub. BuildKit's built-in `dockerfile.v0` frontend skips the directive
  when the `cmdline` frontend option is set (the option a frontend image is invoked with
  after such a redirect, `frontend/dockerfile/builder/build.go`), and builds the file
  itself; everything the Dockerfile uses (`RUN --mount=type=cache|bind`) is built in.
- **Network**: build steps use the host's network (`--oci-worker-net=host`), so `uv sync`
  reaches PyPI as on any build host. Nothing else is fetched.

The cache key hashes the Dockerfile, the `.dockerignore` and every file it admits to
the context (`dockerignore.py`), the base image's manifest digest, the uv binaries and
the BuildKit version: any other change in the tree reuses the cached image.
BuildKit's own state (layer cache, `uv`'s cache mount) lives in `<cache>/buildkit`, so a
rebuild after a code change reuses the dependency layer; each build ends by pruning it to
`KEEP_STORAGE_MB`, least recently used first.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.cluster import dockerignore, host
from tests.cluster.build import (
    BUILDKIT_VERSION,
    ImageToolBinaries,
    NodeBinaries,
    Progress,
    cache_root,
    locked,
)
from tests.cluster.errors import ClusterError
from tests.cluster.image import ImageRef
from tests.cluster.proc import alive, spawn, stop_group

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The documented name of the current image; `:<key>` names one build exactly.
APP_REPOSITORY = "threadkeeper.local/threadkeeper"
APP_IMAGE = ImageRef(APP_REPOSITORY, "dev")
# Bump when how the image is built changes (not what it is built from: that is hashed).
_RECIPE = "1"
_KEEP_ARCHIVES = 3
_READY_SECONDS = 30.0
_BUILD_SECONDS = 1800.0
# What of BuildKit's state is kept after a build, least recently used out first: more than one
# build of the image takes (about 1.2 GB), so the next build still finds its dependency layer.
# buildkitd collects its own garbage only a minute after a build, and here it lives for the
# build alone: without a prune its state grew by every build's new layers (22 GB in a day).
KEEP_STORAGE_MB = 3000
_PRUNE_SECONDS = 120.0
_PYTHON_ARG = re.compile(r"^ARG\s+PYTHON_IMAGE=(\S+)\s*$", re.M)
_ELF = b"\x7fELF"
_UV_FROM = re.compile(r"^FROM\s+(\S*/uv:(\S+))\s+AS\s+uv\s*$", re.M | re.I)


@dataclass(frozen=True)
class AppImage:
    """A built image: its cached OCI archive and the names it carries."""

    archive: Path
    key: str

    @property
    def ref(self) -> ImageRef:
        """The exact build, `threadkeeper.local/threadkeeper:<key>`."""
        return ImageRef(APP_REPOSITORY, self.key)

    @property
    def refs(self) -> tuple[ImageRef, ImageRef]:
        return (APP_IMAGE, self.ref)


@dataclass(frozen=True)
class _BaseNames:
    """The base image names the Dockerfile refers to, as named-context keys."""

    python: str
    uv: str
    uv_version: str


def base_names(dockerfile: Path) -> _BaseNames:
    text = dockerfile.read_text()
    python = _PYTHON_ARG.search(text)
    uv = _UV_FROM.search(text)
    if python is None or uv is None:
        raise ClusterError(
            f"{dockerfile} no longer has `ARG PYTHON_IMAGE=...` and `FROM .../uv:TAG AS uv`; "
            "tests/cluster/appimage.py substitutes those two base images"
        )
    return _BaseNames(python=python[1], uv=uv[1], uv_version=uv[2])


def find_uv() -> Path:
    """This machine's uv binary: `$UV` (set by `uv run`), else `uv` on PATH, through any shim."""
    own = os.environ.get("UV")
    if own is not None and Path(own).is_file():
        return Path(own)
    named = shutil.which("uv")
    if named is None:
        raise ClusterError(
            "the image build's uv stage comes from this machine's uv; none found "
            "(run under `uv run`, or put uv on PATH)"
        )
    return _through_shim(Path(named))


@functools.cache
def _through_shim(uv: Path) -> Path:
    """The executable behind `uv`: a version manager's shim (pyenv, asdf) is a shell script
    that would not run in the image; `uv run` names its own executable in `$UV` (asked once
    per process and path)."""
    with uv.open("rb") as head:
        if head.read(4) == _ELF:
            return uv
    asked = subprocess.run(
        [str(uv), "run", "--no-project", "--quiet", "python", "-c",
         "import os; print(os.environ['UV'])"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    real = Path(asked.stdout.strip())
    if asked.returncode != 0 or not real.is_file():
        raise ClusterError(f"{uv} is a script and did not name its uv: {asked.stderr.strip()}")
    return real


def _uv_version(uv: Path) -> str:
    found = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=False)
    words = found.stdout.split()
    return words[1] if found.returncode == 0 and len(words) > 1 else "unknown"


def uv_binary(version: str) -> Path:
    """uv `version`, with uvx beside it, as the uv image's /uv and /uvx.

    This machine's uv if it is that version; else the `uv` wheel of that version, which
    the machine's uv fetches from the package index and keeps in its cache.
    """
    uv = find_uv()
    if _uv_version(uv) == version and uv.with_name("uvx").is_file():
        return uv
    # The wheel's own `bin/uv` (uv.find_uv_bin() may name the interpreter's instead).
    script = (
        "import importlib.metadata as m, pathlib; d = m.distribution('uv'); "
        "print(next(pathlib.Path(d.locate_file(f)).resolve() for f in d.files or () "
        "if f.name == 'uv' and f.parent.name == 'bin'))"
    )
    command = [str(uv), "run", "--no-project", "--quiet", "--with", f"uv=={version}"]
    fetched = subprocess.run(
        [*command, "python", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = fetched.stdout.strip().splitlines()
    wheel_uv = Path(lines[-1]) if fetched.returncode == 0 and lines else None
    if wheel_uv is None or _uv_version(wheel_uv) != version:
        raise ClusterError(
            f"the Dockerfile's uv stage is uv {version}, but {uv} is uv {_uv_version(uv)} and "
            f"fetching the uv {version} wheel failed: {fetched.stderr.strip()[-500:]}"
        )
    return wheel_uv


def uv_stage(work: Path, uv: Path) -> Path:
    """A directory with `uv` and `uvx`, as the uv image has them at its root."""
    uvx = uv.with_name("uvx")
    if not uvx.is_file():
        raise ClusterError(f"no uvx beside {uv}; the uv stage provides both")
    directory = work / "uv-stage"
    directory.mkdir()
    for binary in (uv, uvx):
        shutil.copy2(binary, directory / binary.name)
    return directory


def base_layout(archive: Path, work: Path) -> tuple[Path, str]:
    """The base archive unpacked as an OCI layout, and its manifest digest."""
    layout = work / "python-base"
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    return layout, str(index["manifests"][0]["digest"])


def base_digest(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ClusterError(f"{archive} has no index.json")
        return str(json.loads(member.read())["manifests"][0]["digest"])


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_key(root: Path, base_archive: Path, uv: Path) -> str:
    """The hash of everything the image is built from (see the module docstring)."""
    digest = hashlib.sha256(f"{_RECIPE}\0{BUILDKIT_VERSION}\0".encode())
    digest.update(base_digest(base_archive).encode() + b"\0")
    for binary in (uv, uv.with_name("uvx")):
        digest.update(file_digest(binary).encode() + b"\0")
    files = [root / "Dockerfile", root / dockerignore.IGNORE_FILE]
    for path in files + dockerignore.admitted_files(root):
        executable = os.access(path, os.X_OK)
        digest.update(f"{path.relative_to(root).as_posix()}\0{executable}\0".encode())
        digest.update(file_digest(path).encode() + b"\0")
    return digest.hexdigest()[:12]


def _archive_path(key: str) -> Path:
    return cache_root() / f"app-image_{key}.tar"


# --- buildkitd, for the length of a build ---------------------------------------------------


def _buildkit_root() -> Path:
    return cache_root() / "buildkit"


def buildkit_lock() -> Path:
    """Held around every build: one buildkitd at a time uses `_buildkit_root()`."""
    return cache_root() / ".buildkit.lock"


def _buildctl(tools: ImageToolBinaries, socket: Path, *args: str) -> list[str]:
    return [str(tools["buildctl"]), "--addr", f"unix://{socket}", *args]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Made on the host by buildkitd or the runc it calls, wherever their roots are set.
_RUNTIME_DIRS = (Path("/run/buildkit"), Path("/run/runc"))
# buildkitd's default cgroup parent for build steps.
_BUILD_CGROUP = "buildkit"


@contextlib.contextmanager
def _host_left_as_found() -> Iterator[None]:
    """Remove the runtime directories and cgroups a build created and did not remove."""
    absent_dirs = [d for d in _RUNTIME_DIRS if not d.exists()]
    absent_cgroups = host.absent_cgroups(_BUILD_CGROUP)
    try:
        yield
    finally:
        for directory in absent_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        for cgroup in absent_cgroups:
            host.remove_cgroup_tree(cgroup)


@contextlib.contextmanager
def _buildkitd(
    tools: ImageToolBinaries,
    runc: Path,
    work: Path,
    progress: Progress,
    root: Path,
    keep_storage_mb: int,
) -> Iterator[Path]:
    """A running buildkitd whose state is `root`, pruned to `keep_storage_mb` before it stops;
    yields its socket."""
    socket = work / "buildkitd.sock"
    config = work / "buildkitd.toml"
    # An empty configuration: never the host's /etc/buildkit/buildkitd.toml.
    config.write_text("")
    log = work / "buildkitd.log"
    args = [
        str(tools["buildkitd"]),
        f"--config={config}",
        f"--root={root}",
        f"--addr=unix://{socket}",
        "--containerd-worker=false",
        "--oci-worker=true",
        f"--oci-worker-binary={runc}",
        "--oci-worker-snapshotter=overlayfs",
        "--oci-worker-net=host",
        f"--otel-socket-path={work / 'otel-grpc.sock'}",
    ]
    proc = spawn(args, log)
    ready = False
    try:
        deadline = time.monotonic() + _READY_SECONDS
        while not _buildkitd_ready(tools, socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"buildkitd did not start; last lines of its log:\n{_tail(log)}")
            time.sleep(0.2)
        progress("buildkitd is up")
        ready = True
        yield socket
    finally:
        if ready and alive(proc.pid):
            _prune(tools, socket, keep_storage_mb, progress)
        if alive(proc.pid):
            stop_group(proc.pid)
        with contextlib.suppress(ChildProcessError):
            proc.wait(timeout=1)
        # A buildkitd killed mid-build leaves its overlay mounts behind.
        host.unmount_under([root])


def _prune(
    tools: ImageToolBinaries, socket: Path, keep_storage_mb: int, progress: Progress
) -> None:
    """Cut BuildKit's state down to `keep_storage_mb`; a failure is reported, not raised (the
    build's own outcome is what counts)."""
    prune = _buildctl(tools, socket, "prune", f"--keep-storage={keep_storage_mb}")
    try:
        result = subprocess.run(prune, capture_output=True, timeout=_PRUNE_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        progress(f"buildctl prune did not finish in {_PRUNE_SECONDS:.0f} s")
        return
    if result.returncode != 0:
        progress(f"buildctl prune failed: {result.stderr.decode(errors='replace').strip()[-300:]}")


def _buildkitd_ready(tools: ImageToolBinaries, socket: Path) -> bool:
    if not socket.exists():
        return False
    check = _buildctl(tools, socket, "debug", "workers")
    return subprocess.run(check, capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def running_buildkitd(
    tools: ImageToolBinaries,
    node: NodeBinaries,
    work: Path,
    progress: Progress,
    *,
    root: Path | None = None,
    keep_storage_mb: int = KEEP_STORAGE_MB,
) -> Iterator[Path]:
    """buildkitd for the length of the block, its state the cache's (or `root`); yields its
    socket. Its state is pruned to `keep_storage_mb` when the block ends.

    The caller holds `buildkit_lock()`. The host is left as found, also on failure.
    """
    state = _buildkit_root() if root is None else root
    with (
        _host_left_as_found(),
        _buildkitd(tools, node["runc"], work, progress, state, keep_storage_mb) as socket,
    ):
        yield socket


def buildkit_build(
    tools: ImageToolBinaries,
    node: NodeBinaries,
    work: Path,
    args: list[str],
    log: Path,
    progress: Progress,
) -> None:
    """`buildctl <args>` against a buildkitd started for it; the host is left as found."""
    with (
        running_buildkitd(tools, node, work, progress) as socket,
        log.open("w") as out,
    ):
        result = subprocess.run(
            _buildctl(tools, socket, *args),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=_BUILD_SECONDS,
            check=False,
        )
    if result.returncode != 0:
        raise ClusterError(f"the image build failed; last lines of {log}:\n{_tail(log)}")


def base_substitutions(names: _BaseNames, layout: tuple[Path, str], uv_dir: Path) -> list[str]:
    """`buildctl build` options that build the Dockerfile offline (the module docstring)."""
    layout_dir, manifest = layout
    return [
        "--opt=cmdline=dockerfile.v0",
        f"--oci-layout=python-base={layout_dir}",
        f"--opt=context:{names.python}=oci-layout://python-base@{manifest}",
        f"--local=uv-stage={uv_dir}",
        f"--opt=context:{names.uv}=local:uv-stage",
    ]


def _build_args(
    root: Path, names: _BaseNames, layout: tuple[Path, str], uv_dir: Path, dest: Path, key: str
) -> list[str]:
    names_opt = f"name={APP_IMAGE},{ImageRef(APP_REPOSITORY, key)}"
    return [
        "build",
        "--progress=plain",
        "--frontend=dockerfile.v0",
        f"--local=context={root}",
        f"--local=dockerfile={root}",
        *base_substitutions(names, layout, uv_dir),
        # The names hold a comma: quoted, as buildctl's CSV syntax wants.
        f'--output=type=oci,dest={dest},"{names_opt}"',
    ]


def prune_old(keep: Path) -> None:
    """Keep the newest few archives named like `keep` (`<name>_<key>.tar`): each is a whole
    image, and trees move on."""
    prefix = keep.name.rsplit("_", 1)[0]
    archives = sorted(
        cache_root().glob(f"{prefix}_*.tar"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in [a for a in archives if a != keep][_KEEP_ARCHIVES - 1 :]:
        old.unlink(missing_ok=True)


def app_image(
    tools: ImageToolBinaries,
    node: NodeBinaries,
    base_archive: Path,
    progress: Progress,
    root: Path = PROJECT_ROOT,
) -> AppImage:
    """The image of the tree at `root`, built now if its inputs changed (needs root)."""
    names = base_names(root / "Dockerfile")
    uv = uv_binary(names.uv_version)
    key = image_key(root, base_archive, uv)
    final = _archive_path(key)
    with locked(buildkit_lock(), progress):
        if final.is_file():
            return AppImage(final, key)
        progress(f"building {APP_IMAGE} ({key}) from {root / 'Dockerfile'} with BuildKit ...")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".app-image-", dir=cache_root()) as tmp:
            work = Path(tmp)
            layout = base_layout(base_archive, work)
            uv_dir = uv_stage(work, uv)
            partial = work / "image.tar"
            args = _build_args(root, names, layout, uv_dir, partial, key)
            buildkit_build(tools, node, work, args, cache_root() / "app-image.log", progress)
            partial.rename(final)
        prune_old(final)
    progress(f"built {APP_IMAGE} in {time.monotonic() - started:.0f}s")
    return AppImage(final, key)
