"""The Grafana dashboard the chart ships (`monitoring.dashboard`).

Off by default; on, a ConfigMap Grafana's dashboard sidecar picks up (kube-prometheus-stack's
defaults: label `grafana_dashboard: "1"`, folder from the `k8s-sidecar-target-directory`
annotation), holding a Grafana dashboard whose every query is PromQL that promtool parses and
names only metrics the service or the reaper export, or a recording rule of the chart. Its
threshold lines are the chart's alert thresholds.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.chart import promql, support
from tests.chart.support import BASE, Helm, Manifest, find

TEMPLATE = "templates/monitoring/dashboard.yaml"
ON = {**BASE, "monitoring.dashboard.enabled": True}
SERVICE = f"{support.RELEASE}-threadkeeper"
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\s*\)$", re.DOTALL)


def _configmap(helm: Helm, values: dict[str, Any], *extra: str) -> Manifest:
    (doc,) = helm.render(values, *extra, f"--show-only={TEMPLATE}")
    assert doc["kind"] == "ConfigMap"
    return doc


def _dashboard(helm: Helm, values: dict[str, Any]) -> dict[str, Any]:
    (text,) = _configmap(helm, values)["data"].values()
    assert not re.search(r"@\w+@", text), "a value token was left in the dashboard"
    dashboard: dict[str, Any] = json.loads(text)
    return dashboard


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in _panels(dashboard) if p["title"].startswith(title)]
    return panel


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable's selector."""
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["query"])
            assert match, f"variable {var['name']}: not label_values(<selector>, <label>)"
            yield f"variable {var['name']}", match["selector"]


def _as_promql(expr: str) -> str:
    """The expression as Prometheus sees it once Grafana has put in its variables."""
    return promql.GRAFANA_VARIABLE.sub("x", promql.GRAFANA_DURATIONS.sub("5m", expr))


def _threshold_values(panel: dict[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0]["value"] is None, "the base step has no value"
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "line"}
    return [step["value"] for step in steps[1:]]


def test_off_by_default(helm: Helm) -> None:
    docs = helm.render(BASE)
    assert not [d for d in docs if d["kind"] == "ConfigMap"]


def test_sidecar_label_and_monitoring_labels(helm: Helm) -> None:
    doc = _configmap(helm, {**ON, "monitoring.labels": {"release": "kube-prometheus-stack"}})
    labels = doc["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"
    assert labels["release"] == "kube-prometheus-stack"
    assert labels["app.kubernetes.io/component"] == "dashboard"
    assert doc["metadata"]["name"] == f"{SERVICE}-dashboard"
    assert doc["metadata"]["namespace"] == "threadkeeper"
    assert "annotations" not in doc["metadata"], "no folder: the provider's folder"


def test_label_folder_and_namespace_are_configurable(helm: Helm) -> None:
    doc = _configmap(
        helm,
        {
            **ON,
            "monitoring.dashboard.label": "example.com/dashboard",
            "monitoring.dashboard.labelValue": "agents",
            "monitoring.dashboard.folder": "Agents",
            "monitoring.dashboard.folderAnnotation": "grafana_folder",
            "monitoring.dashboard.namespace": "monitoring",
            # The sidecar's label is not lost to a same-named one of monitoring.labels.
            "monitoring.labels": {"example.com/dashboard": "other", "team": "agents"},
        },
    )
    labels = doc["metadata"]["labels"]
    assert labels["example.com/dashboard"] == "agents"
    assert labels["team"] == "agents"
    assert "grafana_dashboard" not in labels
    assert doc["metadata"]["annotations"] == {"grafana_folder": "Agents"}
    assert doc["metadata"]["namespace"] == "monitoring"
    # The dashboard still looks at the release's namespace by default.
    dashboard = json.loads(next(iter(doc["data"].values())))
    (namespace,) = [v for v in dashboard["templating"]["list"] if v["name"] == "namespace"]
    assert namespace["current"]["value"] == "threadkeeper"


def test_is_a_grafana_dashboard(helm: Helm) -> None:
    dashboard = _dashboard(helm, ON)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["current"]["value"] == "threadkeeper"
    assert variables["job"]["current"]["value"] == SERVICE
    assert variables["reaper"]["current"]["value"] == f"{SERVICE}-reaper-metrics"
    assert variables["pod"]["multi"] and variables["pod"]["includeAll"]
    panels = _panels(dashboard)
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
    # Every variable a query uses is one the dashboard defines.
    for where, expr in _queries(dashboard):
        for match in promql.GRAFANA_VARIABLE.finditer(promql.GRAFANA_DURATIONS.sub("", expr)):
            assert (match[1] or match[2]) in variables, f"{where}: unknown variable {match[0]}"


def test_the_panels_the_issue_asks_for(helm: Helm) -> None:
    dashboard = _dashboard(helm, ON)
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in _panels(dashboard)}
    wanted = {
        "Checkpoint table size": "threadkeeper_checkpoint_table_bytes",
        "Checkpoint table growth": "deriv(threadkeeper_checkpoint_table_bytes",
        "Prune rate": "rate(threadkeeper_prune_deleted_rows_total",
        "Prune backlog": "threadkeeper_prune_backlog_threads",
        "Turns per second": "sum by (pod) (rate(threadkeeper_runs_total",
        "Run outcomes": "sum by (outcome) (rate(threadkeeper_runs_total",
        "HTTP latency p95": "histogram_quantile(0.95, sum by (pod, le) (rate("
        "threadkeeper_http_request_duration_seconds_bucket",
        "Run duration p95": "histogram_quantile(0.95, sum by (pod, le) (rate("
        "threadkeeper_run_duration_seconds_bucket",
    }
    for title, fragment in wanted.items():
        assert fragment in exprs[title], f"{title}: {exprs[title]}"


def test_every_query_parses(helm: Helm, promtool: Path, tmp_path: Path) -> None:
    queries = list(_queries(_dashboard(helm, ON)))
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _as_promql(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = support.run([promtool, "check", "rules", path])
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout


def _promtool_test(
    promtool: Path,
    tmp_path: Path,
    series: Iterable[tuple[str, dict[str, str]]],
    values: str,
    cases: list[dict[str, Any]],
) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of PromQL `cases` on `series`, one sample a minute of `values`."""
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": _series_line(name, labels), "values": values}
                    for name, labels in series
                ],
                "promql_expr_test": cases,
            }
        ],
    }
    path = tmp_path / "promql_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return support.run([promtool, "test", "rules", path], check=False)


def _series_line(name: str, labels: dict[str, str]) -> str:
    matchers = ",".join(f"{key}={json.dumps(value)}" for key, value in sorted(labels.items()))
    return f"{name}{{{matchers}}}"


def test_every_query_has_a_result_on_what_the_code_exports(
    helm: Helm, promtool: Path, tmp_path: Path
) -> None:
    """Each query and variable, with the dashboard's default variables, selects series of a scrape.

    The series are what the service's and the reaper's registries expose after observing one
    of everything, with the labels Prometheus adds to a target (`tests/chart/promql.py`), two
    hours of them. promtool evaluates each query on them and must find a non-NaN result: a
    wrong label name or value, job or selector leaves a panel empty and fails here. This is
    not the live Prometheus of a cluster; it checks the queries against the exporters' series.
    """
    dashboard = _dashboard(helm, ON)
    defaults = promql.variable_defaults(dashboard)
    series = promql.scraped_series(
        service_target={"job": defaults["job"], "namespace": "threadkeeper", "pod": "tk-a"},
        reaper_target={"job": defaults["reaper"], "namespace": "threadkeeper", "pod": "tk-r"},
        policy=SERVICE,
    )
    values = "1+1x120"  # rising: counters increase, gauges have a slope to extrapolate
    cases = []
    for _, expr in _queries(dashboard):
        query = promql.as_grafana_sends(expr, defaults, "5m")
        cases.append(
            {
                "expr": f"count(({query}) == ({query})) > bool 0",
                "eval_time": "2h",
                "exp_samples": [{"labels": "{}", "value": 1}],
            }
        )
    out = _promtool_test(promtool, tmp_path, series, values, cases)
    assert out.returncode == 0, f"panels without a result:\n{out.stdout}\n{out.stderr}"
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(cases) == sum(len(p["targets"]) for p in _panels(dashboard)) + len(variables)


def test_promtool_check_catches_a_broken_query(promtool: Path, tmp_path: Path) -> None:
    """The check above can fail: an unbalanced query is refused."""
    rule = {"record": "dashboard:query_0", "expr": _as_promql("sum(rate(x[$__rate_interval])")}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [rule]}]}))
    out = support.run([promtool, "check", "rules", path], check=False)
    assert out.returncode != 0


def test_every_metric_is_exported_or_recorded(helm: Helm) -> None:
    dashboard = _dashboard(helm, ON)
    rules = find(helm.render({**ON, "monitoring.prometheusRule.enabled": True}), "PrometheusRule")
    known = promql.exported_metric_names() | promql.recorded_names(rules["spec"]["groups"])
    for where, expr in _queries(dashboard):
        names = promql.metric_names(_as_promql(expr))
        assert names, f"{where}: names no metric: {expr}"
        assert names <= known, f"{where}: {sorted(names - known)} is not exported"


def test_the_metric_check_catches_a_family_name() -> None:
    """Counters are scraped with `_total`: a query naming the bare family is caught."""
    known = promql.exported_metric_names()
    assert promql.metric_names("sum(rate(threadkeeper_runs[5m]))") - known == {"threadkeeper_runs"}
    assert promql.metric_names("sum(rate(threadkeeper_runs_total[5m]))") <= known


def test_metric_names_skips_functions_keywords_and_labels() -> None:
    expr = (
        'sum by (pod, le) (rate(a_bucket{route!~"/x|{y}", le="0.5"}[5m])) '
        "/ on (pod) group_left (node) b:recorded offset 5m > bool 1e9 "
        "and max without (z) (c) unless count(d{}) by (w)"
    )
    assert promql.metric_names(expr) == {"a_bucket", "b:recorded", "c", "d"}


def test_threshold_lines_are_the_alert_thresholds(helm: Helm) -> None:
    warning, critical = 5 * 2**30, 20 * 2**30
    dashboard = _dashboard(
        helm,
        {
            **ON,
            "alerts.tableBytesWarning": warning,
            "alerts.tableBytesCritical": critical,
            "alerts.fillHorizon": "2w",
            "alerts.serviceErrorRatio": 0.02,
            "alerts.runErrorRatio": 0.25,
        },
    )
    assert _threshold_values(_panel(dashboard, "Checkpoint table size")) == [warning, critical]
    projected = _panel(dashboard, "Projected size in 2w")
    assert _threshold_values(projected) == [critical]
    assert ", 1209600))" in projected["targets"][0]["expr"]
    assert _threshold_values(_panel(dashboard, "HTTP 5xx ratio")) == [0.02]
    assert _threshold_values(_panel(dashboard, "Failed runs ratio")) == [0.25]


def test_each_release_has_its_own_dashboard(helm: Helm) -> None:
    here = _dashboard(helm, ON)
    (doc,) = helm.render(ON, f"--show-only={TEMPLATE}", namespace="elsewhere")
    there = json.loads(next(iter(doc["data"].values())))
    assert here["uid"] != there["uid"]
    assert here["title"] != there["title"]
    # The sidecar writes each dashboard to one directory, named by its data key.
    keys = {*_configmap(helm, ON)["data"], *doc["data"]}
    assert keys == {f"threadkeeper-{SERVICE}.json", f"elsewhere-{SERVICE}.json"}


def test_ratio_panels_read_zero_when_nothing_failed(
    helm: Helm, promtool: Path, tmp_path: Path
) -> None:
    """With no failed run and no 5xx (no such series at all), the ratios are 0, not "No data"."""
    dashboard = _dashboard(helm, ON)
    defaults = promql.variable_defaults(dashboard)
    target = {"job": defaults["job"], "namespace": "threadkeeper", "pod": "tk-a"}
    healthy = [
        ("threadkeeper_runs_total", {**target, "outcome": "success"}),
        ("threadkeeper_http_requests_total", {**target, "route": "/threads", "status": "200"}),
    ]
    cases = []
    for title in ("Failed runs ratio", "HTTP 5xx ratio"):
        (target_expr,) = [t["expr"] for t in _panel(dashboard, title)["targets"]]
        query = promql.as_grafana_sends(target_expr, defaults, "5m")
        cases.append(
            {"expr": query, "eval_time": "1h", "exp_samples": [{"labels": "{}", "value": 0}]}
        )
    out = _promtool_test(promtool, tmp_path, healthy, "1+1x120", cases)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
