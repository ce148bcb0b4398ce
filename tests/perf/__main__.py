"""``python -m tests.perf [--quick] [--only 1,3]``: run the benchmarks, print and save the table.

With no ``THREADKEEPER_TEST_DATABASE_URL`` an embedded Postgres is started (and stopped) here.
Exit status 1 if any benchmark failed to produce its rows: quick mode in CI checks the harness,
not the figures.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import uvloop

from tests.perf import harness
from tests.support import postgres
from threadkeeper.service.server import GC_THRESHOLDS

MODULES = {
    "1": "tests.perf.bench_throughput",
    "2": "tests.perf.bench_write_path",
    "3": "tests.perf.bench_concurrency",
    "4": "tests.perf.bench_storage",
    "5": "tests.perf.bench_scaling",
    "6": "tests.perf.bench_prune",
    "7": "tests.perf.bench_metrics",
    "8": "tests.perf.bench_streaming",
    "9": "tests.perf.bench_failover",
    "10": "tests.perf.bench_token_streaming",
    "11": "tests.perf.bench_long",
    "12": "tests.perf.bench_memory",
    "13": "tests.perf.bench_store",
    "14": "tests.perf.bench_chat_ui",
}
RESULTS = Path(__file__).parent / "results" / "bench-results.json"

log = structlog.get_logger("bench")


@contextmanager
def postgres_server(root: Path) -> Iterator[str]:
    external = postgres.external_url()
    if external:
        postgres.create_template(external)
        yield external
        return
    with postgres.embedded_server(root) as url:
        postgres.create_template(url)
        yield url


async def run_one(key: str, bench: harness.Bench) -> list[harness.Row]:
    module: Any = importlib.import_module(MODULES[key])
    log.info("benchmark_started", benchmark=module.NAME)
    rows: list[harness.Row] = await module.run(bench)
    log.info("benchmark_finished", benchmark=module.NAME, rows=len(rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.perf")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--only", help="comma-separated benchmark numbers, e.g. 1,3")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON path ({RESULTS})")
    args = parser.parse_args(argv)
    keys = args.only.split(",") if args.only else list(MODULES)
    unknown = [k for k in keys if k not in MODULES]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; there are {', '.join(MODULES)}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))

    # This process runs what is measured in-process (the graph alone, (b); benchmark 2's savers)
    # on a replica's runtime, uvloop and its collector thresholds: the service's CPU over (b)'s
    # then compares the work, not two runtimes (the default one costs the graph about a fifth
    # more). The clients of every contender run on it alike.
    gc.set_threshold(*GC_THRESHOLDS)
    root = Path(tempfile.mkdtemp(prefix="threadkeeper-bench-"))
    rows: list[harness.Row] = []
    failures: dict[str, str] = {}
    skipped: list[harness.Skipped] = []
    try:
        with postgres_server(root) as server_url:
            bench = harness.Bench(
                server_url=server_url, work=root, quick=args.quick, skipped=skipped
            )
            info = harness.machine(server_url)
            for key in keys:
                if not harness.settle(server_url):
                    log.warning("checkpoint_refused", hint="the role lacks pg_checkpoint")
                # What earlier benchmarks left on the heap would make every later collection
                # longer, pausing this process's clients mid-measurement.
                gc.collect()
                gc.freeze()
                try:
                    rows.extend(uvloop.run(run_one(key, bench)))
                except Exception as exc:
                    failures[key] = f"{type(exc).__name__}: {exc}"
                    log.error("benchmark_failed", benchmark=key, error=traceback.format_exc())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    harness.write_json(args.out, info, rows, failures, args.quick, skipped)
    sys.stdout.write(harness.render(info, rows, failures, skipped) + "\n")
    sys.stdout.write(f"\nwritten to {args.out}\n")
    return 1 if failures or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
