"""A `python:3.11-slim-bookworm`-compatible base image made from Debian's packages.

No container registry is reachable, but Debian's package mirror is (the one the host's
apt uses). `python_base_archive()` runs `debootstrap --variant=minbase` of bookworm with
Python 3.11, trims the package caches, adds the `/usr/local/bin/python*` names the
official image has, and packs it as a one-layer OCI archive, cached by recipe.

It also trusts the build host's own certificate authorities (`HOST_CA_DIR`): the image
builds run `uv sync` in containers made from it, and a host that reaches PyPI through a
TLS-intercepting proxy only gets there if the containers trust that proxy's CA, as the
host does. `SSL_CERT_FILE` points uv (which otherwise uses its bundled roots) at the
system bundle.
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
_RECIPE = "2"
_APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
# What the image must not carry: download caches, package lists, device nodes (the
# runtime mounts /dev).
_TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "dev")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
# Where the image keeps them, as Debian's update-ca-certificates expects local CAs.
_IMAGE_CA_DIR = "usr/local/share/ca-certificates"
_CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
_PYTHON_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SSL_CERT_FILE": f"/{_CA_BUNDLE}",
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


def _host_cas() -> list[Path]:
    return sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []


def _key() -> str:
    digest = hashlib.sha256(f"{_RECIPE}\0{SUITE}\0{','.join(PACKAGES)}".encode())
    for ca in _host_cas():
        digest.update(ca.name.encode() + b"\0" + ca.read_bytes())
    return digest.hexdigest()[:12]


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


def _trust_host_cas(root: Path) -> None:
    """Add the host's CAs as `update-ca-certificates` would: a copy and the bundle."""
    cas = _host_cas()
    if not cas:
        return
    target = root / _IMAGE_CA_DIR
    target.mkdir(parents=True, exist_ok=True)
    with (root / _CA_BUNDLE).open("ab") as bundle:
        for ca in cas:
            data = ca.read_bytes()
            (target / ca.name).write_bytes(data)
            bundle.write(data if data.endswith(b"\n") else data + b"\n")


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
    _trust_host_cas(root)


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
