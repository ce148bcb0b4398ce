"""Each binary set's cache key covers its own wrapper modules and nothing else."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import build
from tests.cluster.errors import ClusterError

_KEYS: dict[str, Callable[[], str]] = {
    "control-plane": build.cache_key,
    "node": build.node_cache_key,
    "image-tools": build.image_tool_cache_key,
    "monitoring": build.monitoring_cache_key,
    "metrics": build.metrics_cache_key,
    "skaffold": build.skaffold_cache_key,
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
        ("skaffold/go.sum", "skaffold"),
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


def test_skaffold_builds_in_the_source_its_go_sum_pins() -> None:
    (step,) = build._skaffold_steps()
    source = build._step_source(step)
    # skaffold's own go.mod is the main module there, with the replaces it compiles against.
    gomod = (source / "go.mod").read_text()
    assert gomod.startswith(f"module {build.SKAFFOLD_MODULE}\n")
    assert "\nreplace " in gomod
    assert (source / "cmd" / "skaffold").is_dir()


def test_a_skaffold_source_that_does_not_match_go_sum_is_refused(go_dir: Path) -> None:
    sums = go_dir / "skaffold" / "go.sum"
    first, *rest = sums.read_text().splitlines()
    module, version, digest = first.split()
    tampered = digest[:3] + ("A" if digest[3] != "A" else "B") + digest[4:]
    sums.write_text("\n".join([f"{module} {version} {tampered}", *rest]) + "\n")
    (step,) = build._skaffold_steps()
    with pytest.raises(ClusterError, match="checksum mismatch"):
        build._step_source(step)
