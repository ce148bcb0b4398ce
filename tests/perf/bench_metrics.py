"""Benchmark 7: what the reaper's table-growth metrics cost, on a small and on a big store.

A scrape of the operator's ``/metrics`` (``prometheus_client.start_http_server``) only renders
the registry: it runs no query. The gauges it renders (table bytes, row estimates, threads by
state) are refreshed by the operator itself, on its timer tick (``_refresh_stats``, at most every
60 s) and after every prune run: ``reaper.stats.collect`` on the policy's database, then
``ReaperMetrics.observe_stats``. So the cost that could grow with the store is that refresh, and
this benchmark times the whole path a fresh figure takes to a scraper, on an open connection:
``stats.collect`` (with ``maxIdle`` set, so all three thread-state counts run) +
``observe_stats`` + ``generate_latest(registry)``. The connection the operator opens for each
refresh is not included (its cost does not depend on the store).

Two databases seeded alike (``tests.perf.seed``), ~10k and ~1M checkpoint rows (2k and 20k in
quick mode), measured in the same repetitions; each sample is the median of a burst of refreshes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from tests.perf.harness import Bench, Row, alone, compare, interleave
from tests.perf.seed import Seeded, seeded_database
from threadkeeper.reaper import stats
from threadkeeper.reaper.db import connect
from threadkeeper.reaper.metrics import ReaperMetrics

NAME = "7. metrics cost"

GOAL_MS = 50.0
# "Flat": the big store may cost at most this much more than the small one.
FLAT_RATIO = 1.5
MAX_IDLE = timedelta(days=30)


def _label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1_000}k"


class Scraper:
    """One database, one registry: times stats refresh + render, and its two halves."""

    def __init__(self, conn: AsyncConnection[DictRow], burst: int) -> None:
        self.conn = conn
        self.burst = burst
        self.registry = CollectorRegistry()
        self.metrics = ReaperMetrics(self.registry)
        self.collect_ms: list[float] = []
        self.render_ms: list[float] = []
        self.rendered_bytes = 0

    async def once(self) -> float:
        began = time.perf_counter()
        collected = await stats.collect(self.conn, max_idle=MAX_IDLE)
        self.metrics.observe_stats(collected, namespace="bench", policy="bench-metrics")
        middle = time.perf_counter()
        body = generate_latest(self.registry)
        ended = time.perf_counter()
        self.collect_ms.append((middle - began) * 1000)
        self.render_ms.append((ended - middle) * 1000)
        self.rendered_bytes = len(body)
        return (ended - began) * 1000

    async def measure(self, rep: int) -> float:
        return statistics.median([await self.once() for _ in range(self.burst)])

    def details(self, seeded: Seeded) -> dict[str, Any]:
        return {
            **seeded.details(),
            "refreshes_per_sample": self.burst,
            "collect_ms_median": round(statistics.median(self.collect_ms), 3),
            "render_ms_median": round(statistics.median(self.render_ms), 3),
            "rendered_bytes": self.rendered_bytes,
        }


async def run(bench: Bench) -> list[Row]:
    small_rows = bench.size(10_000, 2_000)
    big_rows = bench.size(1_000_000, 20_000)
    burst = bench.size(25, 10)
    small, big = _label(small_rows), _label(big_rows)
    async with AsyncExitStack() as stack:
        small_url, small_seed = await stack.enter_async_context(seeded_database(bench, small_rows))
        big_url, big_seed = await stack.enter_async_context(seeded_database(bench, big_rows))
        scrapers: dict[str, Scraper] = {}
        for label, url in ((small, small_url), (big, big_url)):
            conn = await connect(url)
            stack.push_async_callback(conn.close)
            scrapers[label] = Scraper(conn, burst)
            # Untimed: catalog caches and the connection warm up.
            for _ in range(3):
                await scrapers[label].once()
            scrapers[label].collect_ms.clear()
            scrapers[label].render_ms.clear()
        contenders: dict[str, Callable[[int], Awaitable[float]]] = {
            label: scraper.measure for label, scraper in scrapers.items()
        }
        samples = await interleave(bench.repetitions, contenders)

    what = "stats refresh + scrape render"
    small_details = scrapers[small].details(small_seed)
    big_details = scrapers[big].details(big_seed)
    return [
        alone(NAME, f"{what}, {small} checkpoint rows", "ms", samples[small],
              goal=f"< {GOAL_MS:g} ms", goal_check=lambda v: v < GOAL_MS, details=small_details),
        alone(NAME, f"{what}, {big} checkpoint rows", "ms", samples[big],
              goal=f"< {GOAL_MS:g} ms", goal_check=lambda v: v < GOAL_MS, details=big_details),
        compare(NAME, f"{what}, {big} vs {small}", "ms", samples[big], small, samples[small],
                goal=f"flat: <= {FLAT_RATIO:g}x", goal_check=lambda r: r <= FLAT_RATIO,
                details={"small": small_details, "big": big_details}),
    ]  # fmt: skip
