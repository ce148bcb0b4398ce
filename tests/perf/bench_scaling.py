"""Benchmark 5: replica scaling, turn throughput with one and with two replicas on one database.

The client balances requests round-robin over the replicas, as a Kubernetes Service would, so a
conversation's turns land on either replica. On a machine where the client and Postgres share the
same cores, the figure shows how much of the machine one replica leaves unused.
"""

from __future__ import annotations

from contextlib import ExitStack

from tests.perf import clients, servers
from tests.perf.harness import Bench, Row, compare, interleave

NAME = "5. replica scaling, 1 -> 2 replicas"


async def run(bench: Bench) -> list[Row]:
    count = bench.size(32, 8)
    turns = bench.size(10, 3)
    with ExitStack() as stack:
        db = stack.enter_context(bench.database())
        replicas = [
            stack.enter_context(
                servers.ours(db, bench.work, name, THREADKEEPER_WORKERS=str(count)).start()
            )
            for name in ("r1", "r2")
        ]
        one = clients.AgentServer(replicas[0].url)
        two = clients.Balanced([r.url for r in replicas])
        contenders = {
            "1 replica": clients.throughput(one, count, turns),
            "2 replicas": clients.throughput(two, count, turns),
        }
        for measure in contenders.values():
            await measure(-1)
        samples = await interleave(bench.repetitions, contenders)
    return [
        compare(
            NAME,
            "throughput, 2 replicas",
            "turns/s",
            samples["2 replicas"],
            "1 replica",
            samples["1 replica"],
            details={"conversations": count, "turns": turns},
        )
    ]
