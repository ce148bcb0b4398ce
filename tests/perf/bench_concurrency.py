"""Benchmark 3: concurrency with a realistic model latency.

The offline model answers after 200 ms per call; 100 conversations talk at once. A turn without
tools makes two model calls (plan, then reply), so the ideal wall time, with every call
overlapping, is ``calls x 200 ms / concurrency`` = ``turns x 2 x 200 ms``. The wall time runs from
the first turn to the last reply; creating the threads (a request each for ours, none for the
tutorial, whose client picks the ids) comes before it. Ours runs with as many executor slots as
conversations; (a), the tutorial wiring, funnels every checkpoint read and write through the one
connection of its single saver.

(b) is the same graph and model with ``InMemorySaver``, in this process, no HTTP: how close to
the ideal the graph itself gets on this machine. Every turn costs CPU (LangGraph's own, then
ours), and with 100 conversations in step those costs queue behind each other on the cores, so
where (b) is far from the ideal, no server of the graph can be close to it.

The client's own CPU per turn (thread creation included) is recorded beside the figures: on a
small machine the benchmark shares the cores with both servers, and a client that costs as much
as the service would skew the ratio.
"""

from __future__ import annotations

import resource
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack

from langgraph.checkpoint.memory import InMemorySaver

from service.agent.graph import build_graph
from service.agent.offline import OfflineChatModel
from tests.perf import bench_write_path as write_path
from tests.perf import clients, servers
from tests.perf.harness import Bench, Row, alone, compare, interleave

NAME = "3. 100 conversations, 200 ms model"
LATENCY_MS = 200
CALLS_PER_TURN = 2


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wall(
    server: clients.Server, count: int, turns: int, client_cpu_ms: list[float]
) -> Callable[[int], Awaitable[float]]:
    """Wall seconds of one repetition; the client's CPU per turn goes to ``client_cpu_ms``."""

    async def measure(rep: int) -> float:
        cpu = _cpu_seconds()
        per_second = await clients.conversations(server, count=count, turns=turns)
        client_cpu_ms.append((_cpu_seconds() - cpu) * 1000 / (count * turns))
        return count * turns / per_second

    return measure


def _in_memory(count: int, turns: int) -> Callable[[int], Awaitable[float]]:
    """(b): wall seconds of the same conversations on the graph itself, ``InMemorySaver``."""
    model = OfflineChatModel(latency_seconds=LATENCY_MS / 1000)
    graph = build_graph(model).compile(checkpointer=InMemorySaver())

    async def measure(rep: int) -> float:
        thread_ids = [str(uuid.uuid4()) for _ in range(count)]
        per_second = await write_path.conversations(thread_ids, turns, lambda i, t: (graph, None))
        return count * turns / per_second

    return measure


async def run(bench: Bench) -> list[Row]:
    count = bench.size(100, 30)
    turns = bench.size(3, 1)
    ideal = count * turns * CALLS_PER_TURN * LATENCY_MS / 1000 / count
    latency = str(LATENCY_MS)
    with ExitStack() as stack:
        ours_db = stack.enter_context(bench.database())
        tutorial_db = stack.enter_context(bench.database(migrated=False))
        ours = stack.enter_context(
            servers.ours(
                ours_db,
                bench.work,
                THREADKEEPER_WORKERS=str(count),
                THREADKEEPER_OFFLINE_LATENCY_MS=latency,
            ).start()
        )
        tutorial = stack.enter_context(servers.tutorial(tutorial_db, bench.work, LATENCY_MS))
        targets: dict[str, clients.Server] = {
            "ours": clients.AgentServer(ours.url),
            "tutorial": clients.Tutorial(tutorial.url),
        }
        client_cpu_ms: dict[str, list[float]] = {name: [] for name in targets}
        contenders = {
            name: _wall(target, count, turns, client_cpu_ms[name])
            for name, target in targets.items()
        }
        contenders["memory"] = _in_memory(count, turns)
        samples = await interleave(bench.repetitions, contenders)

    details = {
        "conversations": count,
        "turns": turns,
        "ideal_seconds": ideal,
        "tutorial_x_ideal": sorted(s / ideal for s in samples["tutorial"]),
        "in_memory_x_ideal": sorted(s / ideal for s in samples["memory"]),
        "client_cpu_ms_per_turn": {k: sorted(v) for k, v in client_cpu_ms.items()},
    }
    return [
        alone(
            NAME,
            "wall / ideal",
            "x",
            [s / ideal for s in samples["ours"]],
            goal="<= 1.3x ideal",
            goal_check=lambda r: r <= 1.3,
            details=details,
        ),
        compare(
            NAME,
            "wall time",
            "s",
            samples["ours"],
            "(a) tutorial",
            samples["tutorial"],
            details=details,
        ),
        alone(
            NAME,
            "(b) InMemorySaver in-process, wall / ideal (info)",
            "x",
            [s / ideal for s in samples["memory"]],
            details=details,
        ),
        compare(
            NAME,
            "wall time vs the graph alone (info)",
            "s",
            samples["ours"],
            "(b) InMemorySaver",
            samples["memory"],
            details=details,
        ),
    ]
