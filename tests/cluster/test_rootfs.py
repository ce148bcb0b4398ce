"""The Debian-made Python base trusts the build host's own CAs (no debootstrap here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import rootfs

_DEBIAN_CA = "-----BEGIN CERTIFICATE-----\ndebian\n-----END CERTIFICATE-----\n"
_PROXY_CA = "-----BEGIN CERTIFICATE-----\nproxy\n-----END CERTIFICATE-----"


@pytest.fixture
def host_cas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "host-cas"
    directory.mkdir()
    monkeypatch.setattr(rootfs, "HOST_CA_DIR", directory)
    return directory


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc/ssl/certs").mkdir(parents=True)
    (root / "etc/ssl/certs/ca-certificates.crt").write_text(_DEBIAN_CA)
    (root / "usr/local/bin").mkdir(parents=True)
    return root


def test_the_hosts_cas_join_the_images_bundle(tmp_path: Path, host_cas: Path) -> None:
    (host_cas / "egress.crt").write_text(_PROXY_CA)
    root = _rootfs(tmp_path)
    rootfs._finish(root)
    bundle = (root / "etc/ssl/certs/ca-certificates.crt").read_text()
    assert bundle == _DEBIAN_CA + _PROXY_CA + "\n"
    assert (root / "usr/local/share/ca-certificates/egress.crt").read_text() == _PROXY_CA
    assert (root / "usr/local/bin/python3").readlink() == Path("/usr/bin/python3.11")


def test_without_host_cas_the_bundle_is_debians(tmp_path: Path, host_cas: Path) -> None:
    root = _rootfs(tmp_path)
    rootfs._finish(root)
    assert (root / "etc/ssl/certs/ca-certificates.crt").read_text() == _DEBIAN_CA
    assert not (root / "usr/local/share/ca-certificates").exists()


def test_a_changed_host_ca_changes_the_base_key(host_cas: Path) -> None:
    before = rootfs._key()
    (host_cas / "egress.crt").write_text(_PROXY_CA)
    added = rootfs._key()
    (host_cas / "egress.crt").write_text(_PROXY_CA + "\n")
    assert len({before, added, rootfs._key()}) == 3
