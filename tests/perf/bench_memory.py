"""Benchmark 12: a replica's resident memory under sustained load.

One replica with the defaults a user gets, driven in batches of 32 new conversations of 10
turns (benchmark 1's load) until it has served about 10,000 turns; its resident set
(``VmRSS``) is read after about 1,000 and 10,000 (960 and 9,920: whole batches). A replica
that keeps nothing per conversation (design invariant 5) and whose decoded-blob cache stays
within THREADKEEPER_BLOB_CACHE_BYTES holds about the same memory at both points. Each
repetition is a new replica (one run of this is long, so it has 3 repetitions, not 5).
QUICK: one repetition, batches of 8 conversations of 3 turns, 96 and 480 turns.
"""

from __future__ import annotations

from pathlib import Path

from tests.perf import clients, servers
from tests.perf.harness import Bench, Row, alone
from tests.support.processes import ServiceProcess

NAME = "12. resident memory, 1 replica"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def gauge(replica: ServiceProcess, name: str) -> float:
    value = replica.gauge(name)
    if value is None:
        raise RuntimeError(f"{replica.name} has no {name}")
    return value


async def serve(bench: Bench, server: clients.Server, turns: int) -> None:
    """Batches of new conversations until ``turns`` turns have been served."""
    count, each = bench.size(32, 8), bench.size(10, 3)
    for _ in range(max(1, turns // (count * each))):
        await clients.conversations(server, count=count, turns=each)


async def run(bench: Bench) -> list[Row]:
    first, last = bench.size(960, 96), bench.size(9_920, 480)
    ratios: list[float] = []
    early: list[float] = []
    late: list[float] = []
    cache_fill: list[float] = []
    for rep in range(bench.size(3, 1)):
        with bench.database() as db, servers.ours(db, bench.work, f"memory-{rep}").start() as r:
            server = clients.AgentServer(r.url)
            await serve(bench, server, first)
            at_first = rss_bytes(r.pid)
            await serve(bench, server, last - first)
            at_last = rss_bytes(r.pid)
            held = gauge(r, "threadkeeper_blob_cache_bytes")
            bound = gauge(r, "threadkeeper_blob_cache_max_bytes")
        if held > bound:
            raise RuntimeError(f"the blob cache holds {held:.0f} bytes, over its bound {bound:.0f}")
        early.append(at_first / 1e6)
        late.append(at_last / 1e6)
        ratios.append(at_last / at_first)
        cache_fill.append(held / bound)
    details = {"after_first_mb": early, "after_last_mb": late, "cache_fill": cache_fill}
    return [
        alone(
            NAME, f"resident set after {last:,} turns / after {first:,}", "x", ratios,
            goal="<= 1.2x", goal_check=lambda x: x <= 1.2, details=details,
        ),
        alone(NAME, f"resident set after {last:,} turns", "MB", late, details=details),
        alone(NAME, "blob cache held / its bound", "x", cache_fill, details=details),
    ]  # fmt: skip
