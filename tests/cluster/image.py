"""Container images made on this machine: no registry is reachable from the tests.

`busybox_archive` writes an OCI image archive (what `ctr images import` reads) whose one
layer is Debian's statically linked busybox and a link per applet. It serves as the
sandbox ("pause") image and as the image test pods run.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.errors import ClusterError

_BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
_LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
_CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"
_MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"
_PT_INTERP = 3


@dataclass(frozen=True)
class ImageRef:
    """A full image reference, as kubelet and containerd spell it."""

    name: str
    tag: str

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def find_static_busybox() -> Path:
    """Debian's busybox-static binary; a dynamically linked one would not run alone."""
    for candidate in _BUSYBOX_CANDIDATES:
        if candidate.is_file() and _is_static(candidate):
            return candidate
    raise ClusterError(
        "the node's images are made from a statically linked busybox, and none was found "
        "at /bin/busybox; install it with `apt-get install busybox-static`"
    )


def _is_static(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP program header."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = (struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum))
    return _PT_INTERP not in types


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip()} - {"busybox"})


def _layer(busybox: Path) -> bytes:
    buffer = io.BytesIO()
    # Fixed mtimes and owners: the same busybox always gives the same layer digest.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "tmp", "etc", "www"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in _applets(busybox):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            tar.addfile(link)
        # Non-root test pods need a passwd entry for their uid to have a name.
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return buffer.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def oci_archive(path: Path, ref: ImageRef, layer: Path, config: Mapping[str, object]) -> Path:
    """Write an OCI archive of `ref` with one uncompressed `layer` and this runtime config.

    `config` is the image config's `config` object (Env, Cmd, WorkingDir, ...).
    """
    layer_digest = _file_digest(layer)
    layer_size = layer.stat().st_size
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
    }
    with tarfile.open(path, mode="w") as tar:
        tar.add(layer, arcname=f"blobs/sha256/{layer_digest}")
        config_bytes = _json(image_config)
        config_digest = _blob(tar, config_bytes)
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": _MANIFEST_MEDIA,
                "config": {
                    "mediaType": _CONFIG_MEDIA,
                    "digest": config_digest,
                    "size": len(config_bytes),
                },
                "layers": [
                    {
                        "mediaType": _LAYER_MEDIA,
                        "digest": f"sha256:{layer_digest}",
                        "size": layer_size,
                    }
                ],
            }
        )
        manifest_digest = _blob(tar, manifest)
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": _MANIFEST_MEDIA,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": str(ref),
                        "org.opencontainers.image.ref.name": ref.tag,
                    },
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
        for name, data in (
            ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
            ("index.json", _json(index)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def busybox_archive(path: Path, ref: ImageRef, entrypoint: tuple[str, ...] = ()) -> Path:
    """Write an OCI archive of `ref`: busybox and its applets, `entrypoint` as the command."""
    layer = path.with_name(path.name + ".layer")
    layer.write_bytes(_layer(find_static_busybox()))
    try:
        config = {"Env": ["PATH=/bin"], "Cmd": list(entrypoint or ("/bin/sh",)), "WorkingDir": "/"}
        return oci_archive(path, ref, layer, config)
    finally:
        layer.unlink(missing_ok=True)


def _binary_layer(path: Path, binary: Path) -> None:
    """A layer holding only `/bin/<binary>`; fixed metadata, so the digest follows the binary."""
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo(f"bin/{binary.name}")
        info.size = binary.stat().st_size
        info.mode = 0o755
        with binary.open("rb") as handle:
            tar.addfile(info, handle)


def binary_archive(archive: Path, ref: ImageRef, binary: Path) -> Path:
    """An OCI archive of `ref` whose one layer is a static `binary`, its entrypoint, as
    `/bin/<name>`; written once (by rename, so a half-written one never counts)."""
    if archive.exists():
        return archive
    layer = archive.with_name(archive.name + ".layer")
    partial = archive.with_name(archive.name + ".partial")
    _binary_layer(layer, binary)
    try:
        config = {"Entrypoint": [f"/bin/{binary.name}"], "WorkingDir": "/", "User": "65534"}
        oci_archive(partial, ref, layer, config)
    finally:
        layer.unlink(missing_ok=True)
    partial.rename(archive)
    return archive
