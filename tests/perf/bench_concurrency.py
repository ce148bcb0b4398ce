"""Benchmark 3: concurrency with a realistic model latency.

The offline model answers after 200 ms per call; 100 conversations talk at once, each of 10 turns:
the issue's reference workload (32 conversations x 10 turns) with the concurrency and the model
latency this benchmark names. A turn without tools makes two model calls (plan, then reply), so
the ideal wall time, with every call overlapping, is ``calls x 200 ms / concurrency`` =
``turns x 2 x 200 ms``. The wall time runs from the first turn to the last reply; creating the
threads (a request each for ours, none for the tutorial, whose client picks the ids) comes before
it. Ours runs with as many executor slots as conversations; (a), the tutorial wiring, funnels
every checkpoint read and write through the one connection of its single saver. Ours also runs as
two replicas on the same database, requests balanced round-robin (info): one replica is one event
loop, so it alone cannot use a second core. The second replica stays up, idle, while the first is
measured alone. And ours runs conversations of 3 turns (info): the start-up spread of the first
turn (100 requests arriving together) then counts in three turns instead of ten.

(d) is Aegra, the open-source Agent Server, serving the same graph and model on Postgres
(tests.perf.servers.aegra): its wall time beside ours is the goal; it is left out, with the
reason in the table, where it cannot be installed or started.

(b) is the same graph and model with ``InMemorySaver``, in this process, no HTTP: how close to
the ideal the graph itself gets on this machine. Every turn costs CPU (LangGraph's own, then
ours), and with 100 conversations in step those costs queue behind each other on the cores, so
where (b) is far from the ideal, no server of the graph can be close to it.

Beside the figures, from ``/proc``, each repetition's CPU seconds: the client's per turn (on a
small machine the benchmark shares the cores with both servers, and a client that costs as much
as the service would skew the ratio), the busiest server process's own over the ideal (one event
loop cannot finish sooner than its CPU seconds), and the machine's busy seconds (anything running
on it counts) over the cores and the ideal (nothing finishes sooner). Where a floor exceeds the
goal, that configuration cannot meet it on this host.

The floors are averages; the waits show how the time is spent. Each turn's latency beyond its
two calls, seen by the client, is what queued: conversations started together reach each turn's
end together, and one turn's ending, the client's next request and the next turn's start are
all CPU, with no model call to overlap them, so every turn boundary queues them one behind the
other. The longest wait is about the number of conversations times that CPU, even where the
average floors are well under the goal. Most of it is paid at the first boundaries: the queue
leaves the conversations out of step, and later boundaries overlap other conversations' calls.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Awaitable, Callable
from contextlib import ExitStack

from tests.perf import bench_write_path as write_path
from tests.perf import clients, cpu, servers
from tests.perf.harness import Bench, Row, alone, compare, interleave

NAME = "3. 100 conversations, 200 ms model"
LATENCY_MS = 200
CALLS_PER_TURN = 2
MODEL_SECONDS_PER_TURN = CALLS_PER_TURN * LATENCY_MS / 1000


def _over_http(
    server: clients.Server, count: int, turns: int, meter: cpu.Meter, waits: list[list[float]]
) -> Callable[[int], Awaitable[float]]:
    """Wall seconds of one repetition over HTTP; ``meter`` runs while the clock does, and each
    repetition appends to ``waits`` its turns' milliseconds beyond their model calls."""

    latencies: list[float] = []
    per_second = clients.throughput(server, count, turns, meter, latencies.append)

    async def measure(rep: int) -> float:
        latencies.clear()
        wall = count * turns / await per_second(rep)
        waits.append([1000 * (s - MODEL_SECONDS_PER_TURN) for s in latencies])
        return wall

    return measure


def _in_memory(count: int, turns: int, meter: cpu.Meter) -> Callable[[int], Awaitable[float]]:
    """(b): wall seconds of the same conversations on the graph itself, ``InMemorySaver``."""
    per_second = write_path.graph_alone(count, turns, meter, LATENCY_MS / 1000)

    async def measure(rep: int) -> float:
        return count * turns / await per_second(rep)

    return measure


def _busiest_server(snapshot: cpu.Snapshot) -> float:
    """CPU seconds of the busiest server process (each is one event loop), 0 if none."""
    return max((s for name, s in snapshot.processes.items() if name != "client"), default=0.0)


def _waits(reps: list[list[float]]) -> dict[str, list[float]]:
    return {
        "p50": sorted(statistics.median(waits) for waits in reps),
        "max": sorted(max(waits) for waits in reps),
    }


def _floors(spent: list[cpu.Snapshot], turns: int, ideal: float) -> dict[str, list[float]]:
    cores = os.cpu_count() or 1
    return {
        "client_cpu_ms_per_turn": [s.processes["client"] * 1000 / turns for s in spent],
        "server_cpu_x_ideal": [_busiest_server(s) / ideal for s in spent],
        "machine_cpu_per_core_x_ideal": [s.machine / cores / ideal for s in spent],
    }


def _ideal(turns: int) -> float:
    """Every call of every conversation overlapping: ``calls x 200 ms / concurrency``."""
    return turns * MODEL_SECONDS_PER_TURN


async def run(bench: Bench) -> list[Row]:
    count = bench.size(100, 30)
    turns = bench.size(10, 2)
    # Short conversations (info): the first turn's start-up spread counts in fewer turns.
    short_turns = bench.size(3, 1)
    ideal = _ideal(turns)
    latency = str(LATENCY_MS)
    with ExitStack() as stack:
        ours_db = stack.enter_context(bench.database())
        tutorial_db = stack.enter_context(bench.database(migrated=False))
        ours, second = (
            stack.enter_context(
                servers.ours(
                    ours_db,
                    bench.work,
                    name,
                    # The defaults a user gets, THREADKEEPER_WORKERS included.
                    THREADKEEPER_OFFLINE_LATENCY_MS=latency,
                ).start()
            )
            for name in ("ours", "ours-2")
        )
        tutorial = stack.enter_context(servers.tutorial(tutorial_db, bench.work, LATENCY_MS))
        aegra = servers.start_aegra(stack, bench, NAME, LATENCY_MS)
        client = {"client": os.getpid()}
        short = f"ours, {short_turns} turns"
        over_http: tuple[str, ...] = ("ours", "ours, 2 replicas", "tutorial", short)
        if aegra is not None:
            over_http += ("aegra",)
        spent: dict[str, list[cpu.Snapshot]] = {name: [] for name in (*over_http, "memory")}
        waits: dict[str, list[list[float]]] = {name: [] for name in over_http}
        contenders = {
            "ours": _over_http(
                clients.AgentServer(ours.url), count, turns,
                cpu.Meter(client | {"server": ours.pid}, spent["ours"]), waits["ours"],
            ),
            "ours, 2 replicas": _over_http(
                clients.Balanced([ours.url, second.url]), count, turns,
                cpu.Meter(client | {"r1": ours.pid, "r2": second.pid}, spent["ours, 2 replicas"]),
                waits["ours, 2 replicas"],
            ),
            "tutorial": _over_http(
                clients.Tutorial(tutorial.url), count, turns,
                cpu.Meter(client | {"server": tutorial.pid}, spent["tutorial"]),
                waits["tutorial"],
            ),
            "memory": _in_memory(count, turns, cpu.Meter(client, spent["memory"])),
            short: _over_http(
                clients.AgentServer(ours.url), count, short_turns,
                cpu.Meter(client | {"server": ours.pid}, spent[short]), waits[short],
            ),
        }  # fmt: skip
        if aegra is not None:
            contenders["aegra"] = _over_http(
                clients.AgentServer(aegra.url), count, turns,
                cpu.Meter(client | {"server": aegra.pid}, spent["aegra"]), waits["aegra"],
            )  # fmt: skip
        samples = await interleave(bench.repetitions, contenders)

    turns_of = {name: short_turns if name == short else turns for name in samples}
    x_ideal = {name: [s / _ideal(turns_of[name]) for s in walls] for name, walls in samples.items()}
    # Without /proc there are no floors to show.
    floors = {
        name: _floors(s, count * turns_of[name], _ideal(turns_of[name]))
        for name, s in spent.items()
        if s
    }
    wait_stats = {name: _waits(reps) for name, reps in waits.items()}
    details = {
        "conversations": count,
        "turns": turns,
        "short_turns": short_turns,
        "ideal_seconds": ideal,
        "x_ideal": {name: sorted(ratios) for name, ratios in x_ideal.items()},
        "cpu": floors,
        # Per repetition, the median and the longest of the turns' waits beyond their calls.
        "wait_beyond_model_ms": wait_stats,
    }

    def info(metric: str, values: list[float], unit: str = "x") -> Row:
        return alone(NAME, f"{metric} (info)", unit, values, details=details)

    rows = [
        alone(
            NAME, "wall / ideal", "x", x_ideal["ours"],
            goal="<= 1.3x ideal", goal_check=lambda r: r <= 1.3, details=details,
        ),
        compare(
            NAME, "wall time", "s", samples["ours"], "(a) tutorial", samples["tutorial"],
            details=details,
        ),
        info("ours, 2 replicas (round-robin), wall / ideal", x_ideal["ours, 2 replicas"]),
        info(f"ours, {short_turns} turns a conversation, wall / ideal", x_ideal[short]),
        info("(b) InMemorySaver in-process, wall / ideal", x_ideal["memory"]),
        compare(
            NAME, "wall time vs the graph alone (info)", "s", samples["ours"],
            "(b) InMemorySaver", samples["memory"], details=details,
        ),
    ]  # fmt: skip
    if "aegra" in samples:
        rows += [
            compare(
                NAME, "wall time", "s", samples["ours"], servers.AEGRA, samples["aegra"],
                goal="<= 0.3x (d)", goal_check=lambda r: r <= 0.3, details=details,
            ),
            info("(d) Aegra, wall / ideal", x_ideal["aegra"]),
        ]  # fmt: skip
    rows += [
        info(f"ours, a turn's latency beyond its model calls, {stat}", values, "ms")
        for stat, values in wait_stats["ours"].items()
    ]
    for name in ("ours", "ours, 2 replicas"):
        if name in floors:
            rows += [
                info(
                    f"{name}, CPU floor: the busiest service process's CPU seconds / ideal",
                    floors[name]["server_cpu_x_ideal"],
                ),
                info(
                    f"{name}, CPU floor: the machine's busy seconds / cores / ideal",
                    floors[name]["machine_cpu_per_core_x_ideal"],
                ),
            ]
    return rows
