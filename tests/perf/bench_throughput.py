"""Benchmark 1: end-to-end turn throughput over HTTP, one replica, offline model.

Ours (``runs/wait``, with runs, leases, fenced writes and thread rows) against (a) the tutorial
wiring (``/chat``), (c) ``langgraph dev`` (``runs/wait``, in memory) and (d) Aegra (``runs/wait``,
on Postgres), driven by the same client, interleaved repetition by repetition. Beside them, (b):
the same conversations on the graph itself with ``InMemorySaver``, in this process, for its CPU a
turn. The service's CPU a turn over (b)'s says what the service adds to the graph's own work on
any host (issue 32's goal: 3.5 ms on its host, about 2x (b)).
"""

from __future__ import annotations

import os
from contextlib import ExitStack

from tests.perf import bench_write_path as write_path
from tests.perf import clients, cpu, servers
from tests.perf.harness import Bench, Row, compare, interleave

NAME = "1. turn throughput, HTTP, 1 replica"
ALONE = "(b) the graph alone, InMemorySaver, in-process"


async def run(bench: Bench) -> list[Row]:
    count = bench.size(32, 8)
    turns = bench.size(10, 3)
    with ExitStack() as stack:
        ours_db = stack.enter_context(bench.database())
        tutorial_db = stack.enter_context(bench.database(migrated=False))
        # As many executor slots as conversations, so no run waits in the queue for one.
        ours = stack.enter_context(
            servers.ours(ours_db, bench.work, THREADKEEPER_WORKERS=str(count)).start()
        )
        tutorial = stack.enter_context(servers.tutorial(tutorial_db, bench.work))
        processes: dict[str, tuple[clients.Server, int]] = {
            "ours": (clients.AgentServer(ours.url), ours.pid),
            "tutorial": (clients.Tutorial(tutorial.url), tutorial.pid),
        }
        if servers.langgraph_dev_available():
            dev = stack.enter_context(servers.langgraph_dev(bench.work))
            processes["langgraph dev"] = (clients.AgentServer(dev.url), dev.pid)
        aegra = servers.start_aegra(stack, bench, NAME, smoke=True)
        if aegra is not None:
            processes["aegra"] = (clients.AgentServer(aegra.url), aegra.pid)
        spent: dict[str, list[cpu.Snapshot]] = {name: [] for name in [*processes, ALONE]}
        contenders = {
            name: clients.throughput(
                server, count, turns,
                cpu.Meter({"client": os.getpid(), "server": pid}, spent[name]),
            )
            for name, (server, pid) in processes.items()
        }  # fmt: skip
        # The graph's own CPU a turn, in this process: what a turn costs with no service at all.
        contenders[ALONE] = write_path.graph_alone(
            count, turns, cpu.Meter({"server": os.getpid()}, spent[ALONE])
        )
        # One untimed round: imports, pools and caches warm up before anything counts.
        for measure in contenders.values():
            await measure(-1)
        for snapshots in spent.values():
            snapshots.clear()
        samples = await interleave(bench.repetitions, contenders)

    def ms_per_turn(process: str) -> dict[str, list[float]]:
        """Per contender, in repetition order: ``process``'s CPU milliseconds a turn."""
        return {
            name: [s.processes[process] * 1000 / (count * turns) for s in snapshots]
            for name, snapshots in spent.items()
            if snapshots and process in snapshots[0].processes
        }

    details = {
        "conversations": count,
        "turns": turns,
        # From /proc, per repetition: each server's CPU a turn, and the client's.
        "server_cpu_ms_per_turn": ms_per_turn("server"),
        "client_cpu_ms_per_turn": ms_per_turn("client"),
    }
    rows = [
        compare(
            NAME, "throughput", "turns/s", samples["ours"], "(a) tutorial", samples["tutorial"],
            goal=">= 1.5x (a)", goal_check=lambda r: r >= 1.5, details=details,
        )
    ]  # fmt: skip
    server_cpu = details["server_cpu_ms_per_turn"]
    if "ours" in server_cpu and ALONE in server_cpu:
        rows.append(
            compare(
                NAME, "service CPU a turn", "ms", server_cpu["ours"], ALONE, server_cpu[ALONE],
                goal="<= 2x (b) (3.5 ms on the issue's host)", goal_check=lambda r: r <= 2.0,
                details=details,
            )
        )  # fmt: skip
    if "langgraph dev" in samples:
        rows.append(
            compare(
                NAME, "throughput", "turns/s", samples["ours"], "(c) langgraph dev",
                samples["langgraph dev"], goal=">= 2x (c)", goal_check=lambda r: r >= 2.0,
                details=details,
            )
        )  # fmt: skip
    if "aegra" in samples:
        rows.append(
            compare(
                NAME, "throughput", "turns/s", samples["ours"], servers.AEGRA, samples["aegra"],
                goal=">= 4x (d)", goal_check=lambda r: r >= 4.0, details=details,
            )
        )  # fmt: skip
    return rows
