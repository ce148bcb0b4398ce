"""Benchmark 4: storage of one conversation at three lengths, ours vs (a) the tutorial wiring.

Each contender is a real server process on its own fresh database that holds nothing but this one
conversation: ours is ``threadkeeper-service serve`` (the service's graph, messages in a
``DeltaChannel``, ``FencedPostgresSaver``), driven with ``runs/wait``; (a) is the tutorial app
(``tests/perf/baselines/tutorial.py``: stock ``AsyncPostgresSaver`` and ``MessagesState``),
driven with ``/chat``. Both get the same user messages: 2.5 KB of random lowercase words each
(so compression cannot hide what is stored), seeded, with the same offline model answering.

Measured after turns 10, 100 and 500 (quick: 5, 20, 40), in LangGraph's three checkpoint tables
(``checkpoints``, ``checkpoint_blobs``, ``checkpoint_writes``):

* on disk (the rows' figure): the main fork of each table, of its TOAST table and TOAST index,
  and of every index on them (``pg_relation_size``), i.e. the pages the conversation occupies.
  Free-space and visibility maps are left out: autovacuum creates them at its own pace.
* row bytes (in details): ``sum(pg_column_size(row))`` over the thread's rows, i.e. the stored
  tuples with their compressed or TOASTed values, without page and index overhead.

Our service also keeps the run queue (``runs``, with each run's input) and the stream events
(``run_events``, until ``THREADKEEPER_EVENT_RETENTION_SECONDS`` passes; a ``runs/wait`` without
``stream_mode`` records only its ``metadata`` and ``end`` there, a streamed run every step's
state). They are not
checkpoint storage and are left out of the figures with goals; one informational row adds them
at the last mark.

Message text is the UTF-8 length of every message in the thread's final state (user messages
and replies). Storage is deterministic, so each contender has one conversation and every figure
has n=1 (no repetitions, no interleaving); repeated runs agree to a page or two. Both databases
run with ``synchronous_commit = off``: commits do not wait for the WAL flush, which changes no
stored byte but makes (a)'s 500 turns (close to 900 MB) bearable.
"""

from __future__ import annotations

import asyncio
import random
import string
from contextlib import ExitStack
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.rows import dict_row

from tests.perf import clients, servers
from tests.perf.harness import Bench, Row, alone, compare
from tests.support import postgres

NAME = "4. storage, one conversation"
MESSAGE_BYTES = 2500
SEED = 7
TABLES = ["checkpoints", "checkpoint_blobs", "checkpoint_writes"]
SERVICE_TABLES = ["runs", "run_events"]
RATIO_GOAL_TURNS = 100
TEXT_GOAL_TURNS = 500

# Main forks of the tables, their TOAST tables, and every index of either.
DISK_SQL = """
WITH t AS (
    SELECT oid, reltoastrelid FROM pg_class
    WHERE relnamespace = 'public'::regnamespace AND relname = ANY(%(tables)s)
), heaps AS (
    SELECT oid FROM t
    UNION ALL SELECT reltoastrelid FROM t WHERE reltoastrelid <> 0
)
SELECT coalesce(sum(pg_relation_size(oid)), 0)::bigint AS bytes FROM (
    SELECT oid FROM heaps
    UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM heaps)
) AS rels
"""

ROW_SQL = """
SELECT
    (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM checkpoints c WHERE thread_id = %(t)s)
  + (SELECT coalesce(sum(pg_column_size(b.*)), 0) FROM checkpoint_blobs b WHERE thread_id = %(t)s)
  + (SELECT coalesce(sum(pg_column_size(w.*)), 0) FROM checkpoint_writes w WHERE thread_id = %(t)s)
  AS bytes
"""


def message(rng: random.Random, turn: int) -> str:
    """About 2.5 KB of random words: incompressible enough that TOAST cannot hide it."""
    words: list[str] = []
    size = 0
    while size < MESSAGE_BYTES:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        words.append(word)
        size += len(word) + 1
    return f"turn {turn}: " + " ".join(words)[:MESSAGE_BYTES]


async def sizes(url: str, thread_id: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(DISK_SQL, {"tables": TABLES})
        disk = await cur.fetchone()
        await cur.execute(ROW_SQL, {"t": thread_id})
        rows = await cur.fetchone()
        await cur.execute(DISK_SQL, {"tables": SERVICE_TABLES})
        service = await cur.fetchone()
    assert disk is not None and rows is not None and service is not None
    return {
        "disk": int(disk["bytes"]),
        "rows": int(rows["bytes"]),
        "service": int(service["bytes"]),
    }


def relaxed(server_url: str, database_url: str) -> None:
    """No WAL flush wait at commit: the same rows and pages, written 2-3x faster for (a)."""
    name = conninfo.conninfo_to_dict(database_url)["dbname"]
    postgres.admin_execute(server_url, f"ALTER DATABASE {name} SET synchronous_commit = off")


def text_bytes(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m["content"]).encode()) for m in messages)


async def ours_conversation(
    url: str, database_url: str, marks: list[int]
) -> tuple[dict[int, dict[str, int]], dict[int, int]]:
    """Talk to ours over HTTP; sizes and message text at each mark."""
    server = clients.AgentServer(url)
    measured: dict[int, dict[str, int]] = {}
    text: dict[int, int] = {}
    rng = random.Random(SEED)
    async with clients.client() as http:
        thread_id = await server.new_thread(http)
        for turn in range(1, marks[-1] + 1):
            body = {
                "assistant_id": "agent",
                "input": {"messages": [{"role": "user", "content": message(rng, turn)}]},
            }
            r = await http.post(f"{url}/threads/{thread_id}/runs/wait", json=body)
            if r.status_code != 200:
                raise clients.TurnFailed(f"ours turn {turn}: {r.status_code} {r.text[:300]}")
            messages = r.json()["messages"]
            if f"Turn {turn}." not in str(messages[-1]["content"]):
                raise clients.TurnFailed(f"ours lost its memory at turn {turn}")
            if turn in marks:
                measured[turn] = await sizes(database_url, thread_id)
                text[turn] = text_bytes(messages)
    return measured, text


async def tutorial_conversation(
    url: str, database_url: str, marks: list[int]
) -> dict[int, dict[str, int]]:
    server = clients.Tutorial(url)
    measured: dict[int, dict[str, int]] = {}
    rng = random.Random(SEED)
    async with clients.client() as http:
        thread_id = await server.new_thread(http)
        for turn in range(1, marks[-1] + 1):
            reply = await server.turn(http, thread_id, message(rng, turn))
            if f"Turn {turn}." not in reply:
                raise clients.TurnFailed(f"(a) lost its memory at turn {turn}")
            if turn in marks:
                measured[turn] = await sizes(database_url, thread_id)
    return measured


async def run(bench: Bench) -> list[Row]:
    marks = [bench.size(10, 5), bench.size(RATIO_GOAL_TURNS, 20), bench.size(TEXT_GOAL_TURNS, 40)]
    with ExitStack() as stack:
        ours_db = stack.enter_context(bench.database())
        tutorial_db = stack.enter_context(bench.database(migrated=False))
        for url in (ours_db, tutorial_db):
            relaxed(bench.server_url, url)
        # Both servers start side by side (their imports are most of a quick run).
        ours = stack.enter_context(servers.ours(ours_db, bench.work).start(wait=False))
        tutorial = stack.enter_context(servers.tutorial(tutorial_db, bench.work))
        ours.wait_ready()
        # Separate servers and databases: the two conversations can run side by side.
        (ours_sizes, text), base_sizes = await asyncio.gather(
            ours_conversation(ours.url, ours_db, marks),
            tutorial_conversation(tutorial.url, tutorial_db, marks),
        )

    rows: list[Row] = []
    for turn in marks:
        o, b = ours_sizes[turn], base_sizes[turn]
        goal, check = "", None
        if turn == RATIO_GOAL_TURNS:
            goal, check = "<= 0.1x (a)", (lambda r: r <= 0.1)
        rows.append(
            compare(
                NAME, f"on-disk bytes at turn {turn}", "bytes", [float(o["disk"])],
                "(a) tutorial", [float(b["disk"])], goal=goal, goal_check=check,
                details={
                    "turns": turn,
                    "n": 1,
                    "message_bytes": MESSAGE_BYTES,
                    "ours_row_bytes": o["rows"],
                    "tutorial_row_bytes": b["rows"],
                    "row_bytes_ratio": o["rows"] / b["rows"] if b["rows"] else None,
                    "ours_service_tables_bytes": o["service"],
                    "message_text_bytes": text[turn],
                },
            )
        )  # fmt: skip
    last = marks[-1]
    # Not checkpoint storage, but on the same disk: the run queue and the stream events, which
    # keep each run's input and every "values" event (the whole state) until retention ends.
    service_total = ours_sizes[last]["disk"] + ours_sizes[last]["service"]
    rows.append(
        compare(
            NAME, f"on-disk bytes at turn {last} incl. runs + run_events", "bytes",
            [float(service_total)], "(a) tutorial", [float(base_sizes[last]["disk"])],
            details={
                "turns": last,
                "n": 1,
                "ours_checkpoint_bytes": ours_sizes[last]["disk"],
                "ours_runs_and_events_bytes": ours_sizes[last]["service"],
                "note": "informational: the brief's figure is checkpoint tables only",
            },
        )
    )  # fmt: skip
    goal, check = "", None
    if last == TEXT_GOAL_TURNS:
        goal, check = "<= 20", (lambda r: r <= 20)
    rows.append(
        alone(
            NAME, f"on-disk bytes / message text at turn {last}", "x",
            [ours_sizes[last]["disk"] / text[last]], goal=goal, goal_check=check,
            details={
                "turns": last,
                "n": 1,
                "ours_disk_bytes": ours_sizes[last]["disk"],
                "ours_row_bytes": ours_sizes[last]["rows"],
                "row_bytes_per_text": ours_sizes[last]["rows"] / text[last],
                "message_text_bytes": text[last],
            },
        )
    )  # fmt: skip
    return rows
