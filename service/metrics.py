"""Prometheus metrics of one service process, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from threadkeeper.service.blob_cache import BlobCache
from threadkeeper.service.db import Pool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class PoolCollector(Collector):
    """Reads the pool's own statistics at scrape time, so there is nothing to keep in sync."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stats = self.pool.get_stats()
        size = stats.get("pool_size", 0)
        available = stats.get("pool_available", 0)
        yield GaugeMetricFamily(
            "threadkeeper_db_pool_size", "Connections the pool holds.", value=size
        )
        yield GaugeMetricFamily(
            "threadkeeper_db_pool_in_use",
            "Connections lent out right now.",
            value=max(size - available, 0),
        )
        yield GaugeMetricFamily(
            "threadkeeper_db_pool_waiting",
            "Requests waiting for a connection.",
            value=stats.get("requests_waiting", 0),
        )
        yield GaugeMetricFamily(
            "threadkeeper_db_pool_max_size", "Configured pool maximum.", value=self.pool.max_size
        )


class InFlightCollector(Collector):
    """Runs executing on this replica right now."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "threadkeeper_runs_in_flight",
            "Run attempts executing on this replica.",
            value=self.count(),
        )


class BlobCacheCollector(Collector):
    """The decoded-blob cache's counters and size, read at scrape time."""

    def __init__(self, cache: BlobCache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.cache.stats
        for name, help_text, value in (
            ("hits", "Checkpoint blobs served decoded from this replica's cache.", stats.hits),
            ("misses", "Checkpoint blobs this replica decoded (and then cached).", stats.misses),
            ("evictions", "Decoded blobs dropped to stay within the bound.", stats.evictions),
            ("hit_bytes", "Stored bytes of the blobs served from the cache.", stats.hit_bytes),
            ("miss_bytes", "Stored bytes of the blobs decoded on a miss.", stats.miss_bytes),
        ):
            yield CounterMetricFamily(f"threadkeeper_blob_cache_{name}", help_text, value=value)
        yield GaugeMetricFamily(
            "threadkeeper_blob_cache_bytes",
            "Memory charged for the decoded blobs held (THREADKEEPER_BLOB_CACHE_BYTES bounds it).",
            value=self.cache.held_bytes,
        )
        yield GaugeMetricFamily(
            "threadkeeper_blob_cache_max_bytes",
            "THREADKEEPER_BLOB_CACHE_BYTES.",
            value=self.cache.max_bytes,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "threadkeeper_http_requests",
            "HTTP requests by route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "threadkeeper_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.runs = Counter(
            "threadkeeper_runs",
            "Finished run attempts by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "threadkeeper_run_duration_seconds",
            "Wall time of run attempts.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_events_unwritten = Counter(
            "threadkeeper_run_events_unwritten",
            "Run stream events whose write failed (the database refused or was away); "
            "followers of the run miss them.",
            registry=self.registry,
        )

    def watch_pool(self, pool: Pool) -> None:
        self.registry.register(PoolCollector(pool))

    def watch_in_flight(self, count: Callable[[], int]) -> None:
        self.registry.register(InFlightCollector(count))

    def watch_blob_cache(self, cache: BlobCache) -> None:
        self.registry.register(BlobCacheCollector(cache))
