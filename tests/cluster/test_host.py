"""The node's teardown reads pod cgroups that the kubelet and runc remove meanwhile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import host


@pytest.fixture
def cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cgroup v1 hierarchy with one controller, `cpu`, in a temp dir."""
    monkeypatch.setattr(host, "CGROUP_ROOT", tmp_path)
    pods = tmp_path / "cpu" / host.POD_CGROUP
    for directory, pids in (("pod-a/container-1", "11\n12\n"), ("pod-b", "21\n")):
        (pods / directory).mkdir(parents=True)
        (pods / directory / "cgroup.procs").write_text(pids)
    return pods


def _vanishing(monkeypatch: pytest.MonkeyPatch, gone: Path) -> None:
    """`gone` is removed after its parent listed it, before it is itself listed."""
    real = os.scandir

    def scandir(path: str | os.PathLike[str] = ".") -> Iterator[os.DirEntry[str]]:
        if Path(path) == gone:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_pids_are_read_from_every_pod_cgroup(cgroups: Path) -> None:
    assert host.cgroup_pids() == [11, 12, 21]


def test_a_cgroup_removed_while_pids_are_read_is_passed_over(
    cgroups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _vanishing(monkeypatch, cgroups / "pod-a" / "container-1")
    assert host.cgroup_pids() == [21]


def test_a_cgroup_removed_while_the_tree_is_removed_is_passed_over(
    cgroups: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _vanishing(monkeypatch, cgroups / "pod-a" / "container-1")
    # A plain directory tree stands in for cgroupfs: its files make rmdir fail, as
    # cgroups still holding processes do; the emptied ones go.
    (cgroups / "pod-b" / "cgroup.procs").unlink()
    host.remove_cgroup_tree(cgroups)
    assert not (cgroups / "pod-b").exists()
    assert (cgroups / "pod-a" / "container-1" / "cgroup.procs").exists()
