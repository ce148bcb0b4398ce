"""Each binary set's cache key covers its own wrapper modules and nothing else."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import build

_KEYS: dict[str, Callable[[], str]] = {
    "control-plane": build.cache_key,
    "node": build.node_cache_key,
    "image-tools": build.image_tool_cache_key,
    "monitoring": build.monitoring_cache_key,
    "metrics": build.metrics_cache_key,
}


def _keys() -> dict[str, str]:
    return {name: key() for name, key in _KEYS.items()}


@pytest.fixture
def go_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "go"
    shutil.copytree(build.GO_DIR, copy)
    monkeypatch.setattr(build, "GO_DIR", copy)
    return copy


@pytest.mark.parametrize(
    ("changed", "owner"),
    [
        ("kubernetes/cmd/kubectl/main.go", "control-plane"),
        ("etcd/go.sum", "control-plane"),
        ("kubernetes-node/cmd/kubelet/main.go", "node"),
        ("kubernetes-node/go.sum", "node"),
        ("runc/go.mod", "node"),
        ("buildkit/go.sum", "image-tools"),
        ("prometheus/go.sum", "monitoring"),
        ("prometheus-operator/go.mod", "monitoring"),
        ("metrics-server/go.sum", "metrics"),
    ],
)
def test_a_change_rebuilds_only_the_set_it_belongs_to(
    go_dir: Path, changed: str, owner: str
) -> None:
    before = _keys()
    target = go_dir / changed
    target.write_text(target.read_text() + "\n// changed\n")
    after = _keys()
    assert {name for name in _KEYS if before[name] != after[name]} == {owner}


def test_a_new_node_component_leaves_the_control_plane_cached(go_dir: Path) -> None:
    before = _keys()
    extra = go_dir / "kubernetes-node" / "cmd" / "kubectl-convert" / "main.go"
    extra.parent.mkdir()
    extra.write_text("package main\n")
    after = _keys()
    assert after["control-plane"] == before["control-plane"]
    assert after["node"] != before["node"]
