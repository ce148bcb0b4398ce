"""promtool on the very rules the chart ships: render the PrometheusRule, test its groups."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import promql, support
from tests.chart.support import Helm

PROMTOOL_DIR = Path(__file__).parent / "promtool"
_PROMTOOL_VALUES = f"--values={PROMTOOL_DIR / 'values.yaml'}"


def _rendered_groups(helm: Helm, *extra: str) -> dict[str, Any]:
    docs = helm.render(None, *extra, "--show-only=templates/monitoring/prometheusrule.yaml")
    (rule,) = docs
    assert rule["kind"] == "PrometheusRule"
    spec: dict[str, Any] = rule["spec"]
    return spec


def _write(tmp_path: Path, groups: dict[str, Any]) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return path


def test_promtool_unit_tests(helm: Helm, promtool: Path, tmp_path: Path) -> None:
    groups = _rendered_groups(helm, f"--values={PROMTOOL_DIR / 'values.yaml'}")
    rules = _write(tmp_path, groups)
    support.run([promtool, "check", "rules", rules])
    shutil.copy(PROMTOOL_DIR / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    out = support.run([promtool, "test", "rules", tmp_path / "alerts_test.yaml"])
    assert "SUCCESS" in out.stdout


def test_every_alert_is_tested_firing_and_silent(helm: Helm) -> None:
    groups = _rendered_groups(helm, f"--values={PROMTOOL_DIR / 'values.yaml'}")
    alerts = {r["alert"] for g in groups["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMTOOL_DIR / "alerts_test.yaml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    silent = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts == firing, f"alerts without a firing test: {alerts - firing}"
    assert alerts == silent, f"alerts without a silent test: {alerts - silent}"


def test_alerts_name_only_exported_metrics(helm: Helm) -> None:
    """Every series an alert reads is scraped from the service or the reaper, or recorded."""
    groups = _rendered_groups(helm, f"--values={PROMTOOL_DIR / 'values.yaml'}")["groups"]
    # `up` is Prometheus' own series of every scrape target.
    known = promql.exported_metric_names() | promql.recorded_names(groups) | {"up"}
    for rule in (r for g in groups for r in g["rules"]):
        names = promql.metric_names(rule["expr"])
        where = rule.get("alert") or rule.get("record")
        assert names, f"{where}: names no metric"
        assert names <= known, f"{where}: {sorted(names - known)} is not exported"


@pytest.mark.parametrize(
    "values",
    [
        {"database.url": "postgresql://x"},
        {"database.url": "postgresql://x", "reaper.enabled": False},
        {
            "database.url": "postgresql://x",
            "retention.interval": "2h",
            "alerts.fillHorizon": "2w",
            "alerts.labels": {"team": "agents", "page": "true"},
        },
    ],
    ids=["defaults", "no-reaper", "custom"],
)
def test_promtool_check_rendered_rules(
    helm: Helm, promtool: Path, tmp_path: Path, values: dict[str, Any]
) -> None:
    extra = support.set_args({**values, "monitoring.prometheusRule.enabled": True})
    rules = _write(tmp_path, _rendered_groups(helm, *extra))
    out = support.run([promtool, "check", "rules", rules])
    assert "SUCCESS" in out.stdout


def test_thresholds_come_from_values(helm: Helm) -> None:
    extra = support.set_args(
        {
            "database.url": "postgresql://x",
            "monitoring.prometheusRule.enabled": True,
            "retention.interval": "2h",
            "alerts.fillHorizon": "2w",
            "alerts.tableBytesWarning": 5 * 2**30,
            "alerts.tableBytesCritical": 20 * 2**30,
            "alerts.serviceErrorRatio": 0.02,
            "alerts.runErrorRatio": 0.25,
        }
    )
    rules = {
        (r["alert"], r["labels"]["severity"]): r
        for g in _rendered_groups(helm, *extra)["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    large = "ThreadkeeperCheckpointTablesLarge"
    assert rules[(large, "warning")]["expr"].endswith("> 5368709120")
    assert rules[(large, "critical")]["expr"].endswith("> 21474836480")
    assert "5GiB" in rules[(large, "warning")]["annotations"]["summary"]
    growing = rules[("ThreadkeeperCheckpointTablesGrowing", "warning")]["expr"]
    assert "predict_linear(threadkeeper:checkpoint_table_bytes:sum[6h], 1209600) > 21474836480" in (
        growing
    )
    stalled = rules[("ThreadkeeperReaperStalled", "warning")]["expr"]
    assert stalled.endswith("> 3 * 7200")
    assert rules[("ThreadkeeperServiceErrors", "critical")]["expr"].endswith("> 0.02")
    assert rules[("ThreadkeeperRunsFailing", "warning")]["expr"].endswith("> 0.25")


def test_each_alerts_for_duration_is_a_value(helm: Helm) -> None:
    """`alerts.for.*` set every alert's `for:`; the defaults are the runbook's durations."""
    defaults = {
        r["alert"]: r.get("for") for g in _rendered_groups(helm, _PROMTOOL_VALUES)["groups"]
        for r in g["rules"] if "alert" in r
    }  # fmt: skip
    assert defaults["ThreadkeeperCheckpointTablesLarge"] == "15m"
    assert defaults["ThreadkeeperReaperDown"] == "10m"
    sets = "alerts.for.tablesLarge=1s,alerts.for.tablesGrowing=2s,alerts.for.reaperDown=3s,"
    sets += "alerts.for.serviceErrors=4s,alerts.for.runsFailing=5s"
    short = {
        r["alert"]: r.get("for")
        for g in _rendered_groups(helm, _PROMTOOL_VALUES, f"--set={sets}")["groups"]
        for r in g["rules"]
        if "alert" in r
    }  # fmt: skip
    assert short == {
        "ThreadkeeperCheckpointTablesLarge": "1s",
        "ThreadkeeperStoreTablesLarge": "1s",
        "ThreadkeeperCheckpointTablesGrowing": "2s",
        "ThreadkeeperStoreTablesGrowing": "2s",
        "ThreadkeeperReaperDown": "3s",
        "ThreadkeeperServiceErrors": "4s",
        "ThreadkeeperRunsFailing": "5s",
        # These fire on their first evaluation: a stalled reaper and failed runs are facts.
        "ThreadkeeperReaperStalled": None,
        "ThreadkeeperPruneFailing": None,
    }


def test_an_alerts_for_duration_must_be_a_duration(helm: Helm) -> None:
    with pytest.raises(support.CommandFailed, match=r"alerts\.for\.reaperDown"):
        _rendered_groups(helm, _PROMTOOL_VALUES, "--set=alerts.for.reaperDown=soon")
