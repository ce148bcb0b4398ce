"""What the chart's PromQL (alerts, dashboard) may name: the metrics the code really exports.

The names come from the prometheus_client registries the service and the reaper build, expanded
the way the exposition format writes them (a counter `x` is scraped as `x_total`, a histogram as
`x_bucket`, `x_count`, `x_sum`), so a query naming the family instead of a sample fails.

`metric_names` reads the metric names out of an expression with a small tokenizer: no PromQL parser
is packaged for Python, and promtool (which parses) cannot list names. The tokenizer only has to
tell names from functions, keywords, label matchers and label lists; `promtool check rules` on
the same expressions proves they parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.service.metrics import Metrics

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


def _families() -> Iterator[tuple[str, str]]:
    service = Metrics()
    # Never opened: the collector only reads the pool's statistics and max_size.
    service.watch_pool(AsyncConnectionPool("postgresql://unused", open=False))
    service.watch_in_flight(lambda: 0)
    reaper = CollectorRegistry()
    ReaperMetrics(reaper)
    for registry in (service.registry, reaper):
        for family in registry.collect():
            yield family.name, family.type


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
