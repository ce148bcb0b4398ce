"""A `python:3.11-slim-bookworm`-compatible base image made from Debian's packages.

No container registry is reachable, but Debian's package mirror is (the one the host's
apt uses). `python_base_archive()` runs `debootstrap --variant=minbase` of bookworm with
Python 3.11, trims the package caches, adds the `/usr/local/bin/python*` names the
official image has, and packs it as a one-layer OCI archive, cached by recipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from tests.cluster.build import Progress, cache_root
from tests.cluster.errors import ClusterError
from tests.cluster.image import ImageRef, oci_archive

SUITE = "bookworm"
PACKAGES = ("python3", "python3-minimal", "ca-certificates")
PYTHON_BASE_IMAGE = ImageRef("threadkeeper.local/python", "3.11-slim-bookworm")
# Bump when the recipe below changes; the suite and packages are in the key already.
_RECIPE = "1"
_APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
# What the image must not carry: download caches, package lists, device nodes (the
# runtime mounts /dev).
_TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "dev")
_PYTHON_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def debian_mirror() -> str:
    """The Debian mirror the host's apt is configured with (deb822 or one-line format)."""
    for path in _APT_SOURCES:
        with contextlib.suppress(OSError):
            text = path.read_text()
            found = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text, re.M
            )
            if found:
                return found[1]
    raise ClusterError(
        "no Debian mirror found in the host's apt sources; the Python base image is made "
        "with debootstrap from the mirror apt uses"
    )


def _key() -> str:
    recipe = f"{_RECIPE}\0{SUITE}\0{','.join(PACKAGES)}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def cached_python_base() -> Path | None:
    path = cache_root() / f"python-base_{SUITE}_{_key()}.tar"
    return path if path.is_file() else None


def _debootstrap(target: Path, mirror: str) -> None:
    if shutil.which("debootstrap") is None:
        raise ClusterError("making the Python base image needs `apt-get install debootstrap`")
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(target),
            mirror,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise ClusterError(f"debootstrap of {SUITE} failed:\n{tail}")


def _finish(root: Path) -> None:
    for relative in _TRIM:
        directory = root / relative
        if directory.is_dir():
            shutil.rmtree(directory)
            directory.mkdir()
    # The official image's interpreter lives in /usr/local/bin; these names keep
    # anything that calls it there (or `python`) working.
    local_bin = root / "usr/local/bin"
    for name in ("python", "python3", "python3.11"):
        (local_bin / name).symlink_to("/usr/bin/python3.11")


def _pack(root: Path, layer: Path) -> None:
    with tarfile.open(layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name)


def python_base_archive(progress: Progress) -> Path:
    """The cached OCI archive of `PYTHON_BASE_IMAGE`, made now if missing (about a minute)."""
    found = cached_python_base()
    if found is not None:
        return found
    final = cache_root() / f"python-base_{SUITE}_{_key()}.tar"
    final.parent.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    started = time.monotonic()
    progress(f"making {PYTHON_BASE_IMAGE} with debootstrap of {SUITE} ...")
    with tempfile.TemporaryDirectory(prefix=".python-base-", dir=final.parent) as work:
        root = Path(work) / "rootfs"
        _debootstrap(root, mirror)
        _finish(root)
        layer = Path(work) / "layer.tar"
        _pack(root, layer)
        partial = Path(work) / "image.tar"
        oci_archive(
            partial,
            PYTHON_BASE_IMAGE,
            layer,
            {"Env": [f"{k}={v}" for k, v in _PYTHON_ENV.items()], "Cmd": ["python3"]},
        )
        partial.rename(final)
    progress(f"made {PYTHON_BASE_IMAGE} in {time.monotonic() - started:.0f}s")
    return final
