"""`image.binary_archive`: one static binary as an OCI image (metrics-server, Prometheus)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from tests.cluster.image import ImageRef, binary_archive

REF = ImageRef("threadkeeper.local/tool", "v1.2.3")


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
    assert member is not None
    return member.read()


def _read(archive: Path) -> tuple[dict[str, Any], dict[str, Any], tarfile.TarFile]:
    """The index entry, the image config and the layer of a one-manifest archive."""
    with tarfile.open(archive) as tar:
        index = json.loads(_blob_named(tar, "index.json"))
        (entry,) = index["manifests"]
        manifest = json.loads(_blob(tar, entry["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
        (layer,) = manifest["layers"]
        data = _blob(tar, layer["digest"])
    return entry, config, tarfile.open(fileobj=io.BytesIO(data))


def _blob_named(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None
    return member.read()


def test_the_binary_is_the_entrypoint_under_bin(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF a static binary")
    archive = binary_archive(tmp_path / "image-tool.tar", REF, binary)

    entry, config, layer = _read(archive)
    assert entry["annotations"]["io.containerd.image.name"] == str(REF)
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    assert config["config"]["User"] == "65534"
    member = layer.getmember("bin/tool")
    assert member.mode == 0o755
    extracted = layer.extractfile(member)
    assert extracted is not None and extracted.read() == binary.read_bytes()
    assert layer.getmember("tmp").mode == 0o1777
    # Only the archive is left: no layer or partial file beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image-tool.tar", "tool"]


def _digest(archive: Path) -> str:
    digest: str = _read(archive)[0]["digest"]
    return digest


def test_an_existing_archive_is_kept_and_the_same_binary_gives_the_same_image(
    tmp_path: Path,
) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"first")
    first = binary_archive(tmp_path / "a.tar", REF, binary)
    assert _digest(binary_archive(tmp_path / "b.tar", REF, binary)) == _digest(first)

    binary.write_bytes(b"second")
    assert _digest(binary_archive(first, REF, binary)) == _digest(tmp_path / "b.tar")
    assert _digest(binary_archive(tmp_path / "c.tar", REF, binary)) != _digest(first)
