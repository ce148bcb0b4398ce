"""The decoded-blob cache against real replicas: what a turn reads through it is what Postgres
holds, whichever replica served the turns before, after a failover, a delete and re-create of
the same thread id, and a pruned history."""

from __future__ import annotations

import httpx
import pytest

from tests.support.processes import ServiceProcess
from tests.system.test_replicas import Replicas, last_reply, talk

pytestmark = pytest.mark.slow

FIRST = "my name is Ada and I keep bees"
# More turns than a DeltaChannel snapshot takes (100 updates, two a turn): loads read a
# snapshot and the writes after it.
PAST_A_SNAPSHOT = 56
# A few entries: the replica evicts all along.
SMALL_BOUND = 64 * 1024


def counter(replica: ServiceProcess, name: str) -> float:
    value = replica.gauge(f"threadkeeper_blob_cache_{name}")
    assert value is not None, f"{replica.name} has no threadkeeper_blob_cache_{name}"
    return value


def turn(replica: ServiceProcess, tid: str, number: int) -> None:
    reply = last_reply(talk(replica.url, tid, FIRST if number == 1 else f"message {number}"))
    assert f"Turn {number}." in reply, reply
    assert FIRST in reply, reply


def new_thread(replica: ServiceProcess, thread_id: str | None = None) -> str:
    body = {"thread_id": thread_id} if thread_id else {}
    r = httpx.post(f"{replica.url}/threads", json=body)
    assert r.status_code == 200, r.text
    tid: str = r.json()["thread_id"]
    return tid


def messages(replica: ServiceProcess, tid: str) -> list[dict[str, object]]:
    r = httpx.get(f"{replica.url}/threads/{tid}/state")
    assert r.status_code == 200, r.text
    found: list[dict[str, object]] = r.json()["values"]["messages"]
    return found


def test_turns_alternating_between_replicas_and_a_failover_read_every_message(
    replicas: Replicas,
) -> None:
    """Each replica's cache holds the messages its own last turn ended with, and decodes what
    the other one has added since; one of them is bounded so tightly that it evicts all along,
    and it is killed and comes back with an empty cache."""
    a = replicas("a").start()
    b = replicas("b", THREADKEEPER_BLOB_CACHE_BYTES=str(SMALL_BOUND)).start(migrate=False)
    tid = new_thread(a)
    served_by_a = 0
    for number in range(1, PAST_A_SNAPSHOT + 1):
        if number == 30:
            b.kill()
        if number == 34:
            b.start(migrate=False)
        by_a = not number % 2 or 30 <= number < 34
        served_by_a += by_a
        turn(a if by_a else b, tid, number)
    # Every turn of a's but its first starts from what a holds; b's turns are decoded.
    assert counter(a, "hits_total") >= served_by_a - 1
    assert counter(a, "misses_total") > 0
    assert counter(b, "evictions_total") > 0
    assert 0 < counter(b, "bytes") <= SMALL_BOUND
    assert counter(a, "bytes") <= counter(a, "max_bytes")
    seen = messages(a, tid)
    assert len(seen) == 2 * PAST_A_SNAPSHOT
    assert messages(b, tid) == seen


def test_a_thread_deleted_and_created_again_starts_empty(replicas: Replicas) -> None:
    a = replicas("a").start()
    tid = new_thread(a)
    for number in range(1, 6):
        turn(a, tid, number)
    assert counter(a, "bytes") > 0
    assert httpx.delete(f"{a.url}/threads/{tid}").status_code == 204
    assert counter(a, "bytes") == 0, "the deleted thread's decoded blobs were kept"
    assert new_thread(a, tid) == tid
    turn(a, tid, 1)
    assert len(messages(a, tid)) == 2


def test_a_pruned_history_is_read_from_what_is_left(replicas: Replicas) -> None:
    a = replicas("a").start()
    tid = new_thread(a)
    for number in range(1, PAST_A_SNAPSHOT + 1):
        turn(a, tid, number)
    before = messages(a, tid)
    r = httpx.post(f"{a.url}/threads/prune", json={"thread_ids": [tid], "strategy": "keep_latest"})
    assert r.status_code == 200 and r.json()["pruned_count"] == 1, r.text
    assert counter(a, "bytes") == 0, "the pruned thread's decoded blobs were kept"
    assert messages(a, tid) == before
    for number in range(PAST_A_SNAPSHOT + 1, PAST_A_SNAPSHOT + 4):
        turn(a, tid, number)
    assert messages(a, tid)[: len(before)] == before
