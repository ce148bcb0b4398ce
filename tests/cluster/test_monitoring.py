"""The pure parts of `tests/cluster/monitoring.py` (the node tier runs the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster import build, monitoring
from tests.cluster.errors import ClusterError


def test_the_prometheus_module_version_maps_to_its_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(build, "PROMETHEUS_VERSION", "v0.316.0")
    assert monitoring.prometheus_release() == "v3.16.0"
    monkeypatch.setattr(build, "PROMETHEUS_VERSION", "v0.305.1")
    assert monitoring.prometheus_release() == "v3.5.1"
    monkeypatch.setattr(build, "PROMETHEUS_VERSION", "v2.53.0")
    with pytest.raises(ClusterError, match=r"v2\.53\.0"):
        monitoring.prometheus_release()


def test_crd_names_follow_upstreams_file_names() -> None:
    path = Path("example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml")
    assert monitoring._crd_name(path) == "servicemonitors.monitoring.coreos.com"


def test_series_reads_metric_names_of_a_scrape() -> None:
    scrape = (
        "# HELP threadkeeper_runs_total Runs.\n"
        "# TYPE threadkeeper_runs_total counter\n"
        'threadkeeper_runs_total{outcome="success"} 3.0\n'
        "threadkeeper_runs_in_flight 0.0\n"
        "\n"
    )
    assert monitoring.series(scrape) == {"threadkeeper_runs_total", "threadkeeper_runs_in_flight"}
