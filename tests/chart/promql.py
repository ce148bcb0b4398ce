"""What the chart's PromQL (alerts, dashboard) may name: the metrics the code really exports.

The names come from the prometheus_client registries the service and the reaper build, expanded
the way the exposition format writes them (a counter `x` is scraped as `x_total`, a histogram as
`x_bucket`, `x_count`, `x_sum`), so a query naming the family instead of a sample fails.

`scraped_series` is what a scrape of each returns once the code has observed one of everything
(every run outcome, a 200 and a 500, a prune run, table statistics): the series a query can
really select, with the label names the code really sets.

`metric_names` reads the metric names out of an expression with a small tokenizer: no PromQL parser
is packaged for Python, and promtool (which parses) cannot list names. The tokenizer only has to
tell names from functions, keywords, label matchers and label lists; `promtool check rules` on
the same expressions proves they parse.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool

from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.reaper.stats import TABLES, DatabaseStats, TableStats
from threadkeeper.reaper.summary import Outcome, PruneSummary, ThreadsDeleted
from threadkeeper.service.domain import ENDED_RUN_STATUSES
from threadkeeper.service.metrics import Metrics

Labels = dict[str, str]

# Sample names of a metric family by its type (OpenMetrics/Prometheus text exposition).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}

_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<matchers>\{(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^}"'])*\})
    | (?P<range>\[[^\]]*\])
    | (?P<number>[0-9][\w.]*)
    | (?P<name>[A-Za-z_:][\w:]*)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
# Followed by a parenthesised list of label names, not of expressions.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _LABEL_LISTS | {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    # Aggregation operators may stand before their `by (...)`, away from their parenthesis.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}


def _service() -> Metrics:
    service = Metrics()
    # Never opened: the collector only reads the pool's statistics and max_size.
    service.watch_pool(AsyncConnectionPool("postgresql://unused", open=False))
    service.watch_in_flight(lambda: 0)
    return service


def _families() -> Iterator[tuple[str, str]]:
    reaper = CollectorRegistry()
    ReaperMetrics(reaper)
    for registry in (_service().registry, reaper):
        for family in registry.collect():
            yield family.name, family.type


def _busy_service() -> CollectorRegistry:
    """The service's registry after a run of every outcome and a 200 and a 500 answer."""
    service = _service()
    for status in ENDED_RUN_STATUSES:
        service.runs.labels(outcome=status.value).inc()
        service.run_seconds.observe(1.0)
    for code in ("200", "500"):
        service.requests.labels(method="POST", route="/threads", status=code).inc()
        service.request_seconds.labels(method="POST", route="/threads").observe(0.1)
    service.run_events_unwritten.inc()
    return service.registry


def _busy_reaper(namespace: str, policy: str) -> CollectorRegistry:
    """The reaper's registry after a prune run that deleted rows and a statistics refresh."""
    registry = CollectorRegistry()
    metrics = ReaperMetrics(registry)
    started = dt.datetime.now(dt.UTC)
    metrics.policy_seen(namespace=namespace, policy=policy, succeeded_at=started.timestamp())
    deleted = ThreadsDeleted(idle=1, archived=1, orphan=1)
    summary = PruneSummary(
        policy=policy,
        namespace=namespace,
        dry_run=False,
        outcome=Outcome.SUCCEEDED,
        message="",
        started_at=started,
        duration_seconds=2.0,
        threads_deleted=deleted,
        checkpoints_deleted=10,
        blobs_deleted=10,
        writes_deleted=10,
        runs_deleted=2,
        backlog=5,
    )
    metrics.observe_run(summary)
    stats = DatabaseStats(
        tables={table: TableStats(bytes=2**20, rows_estimate=100) for table in TABLES},
        threads={"active": 10, "archived": 1, "idle_expired": 1},
    )
    metrics.observe_stats(stats, namespace=namespace, policy=policy)
    return registry


def _samples(registry: CollectorRegistry) -> Iterator[tuple[str, Labels]]:
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                yield sample.name, dict(sample.labels)


def scraped_series(
    *, service_target: Labels, reaper_target: Labels, policy: str
) -> list[tuple[str, Labels]]:
    """(name, labels) of every series Prometheus stores from one service pod and the reaper.

    The targets are the labels the scrape adds (job, namespace, pod, ...). The reaper's own
    `namespace` label (the RetentionPolicy's) is kept over the target's, as its ServiceMonitor's
    `honorLabels` does; here both are the target's namespace.
    """
    series = [(name, {**service_target, **labels}) for name, labels in _samples(_busy_service())]
    reaper = _busy_reaper(reaper_target["namespace"], policy)
    series += [(name, {**reaper_target, **labels}) for name, labels in _samples(reaper)]
    return series


def exported_metric_names() -> frozenset[str]:
    """Every sample name a scrape of the service or the reaper can return."""
    return frozenset(name + suffix for name, kind in _families() for suffix in _SUFFIXES[kind])


def recorded_names(groups: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Names of the recording rules of a rules file's `groups`."""
    return frozenset(
        str(rule["record"]) for group in groups for rule in group["rules"] if "record" in rule
    )


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (bare names, not `{__name__=...}`)."""
    tokens = [
        (match.lastgroup, match.group())
        for match in _TOKEN.finditer(expr)
        if match.lastgroup != "space"
    ]
    names: set[str] = set()
    skip_list = False
    depth = 0
    for i, (kind, text) in enumerate(tokens):
        if skip_list:
            depth += (kind == "open") - (kind == "close")
            skip_list = depth > 0
            continue
        if kind != "name":
            continue
        followed_by_open = i + 1 < len(tokens) and tokens[i + 1][0] == "open"
        if text in _LABEL_LISTS and followed_by_open:
            skip_list, depth = True, 0
        elif not followed_by_open and text.lower() not in _KEYWORDS:
            names.add(text)
    return names


# Grafana's interval variables, and its `$name` / `${name}` / `${name:format}` variables.
GRAFANA_DURATIONS = re.compile(r"\$__(rate_interval|interval|range)\b")
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def variable_defaults(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """What each variable holds when the dashboard opens (`All` is the variable's allValue)."""
    defaults = {}
    for var in dashboard["templating"]["list"]:
        value = var.get("current", {}).get("value")
        defaults[var["name"]] = var["allValue"] if value == "$__all" else value
    return defaults


def as_grafana_sends(expr: str, defaults: Mapping[str, str], interval: str) -> str:
    """`expr` with the variables' values and `interval` for Grafana's interval variables."""
    expr = GRAFANA_DURATIONS.sub(interval, expr)
    return GRAFANA_VARIABLE.sub(lambda m: defaults[m[1] or m[2]], expr)
