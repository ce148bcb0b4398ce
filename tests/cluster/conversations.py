"""Conversations through a threadkeeper Service with langgraph-sdk, run inside a pod.

This file is the pod's program (`python -c <this file> ...`, from the project's image,
which ships langgraph-sdk): stdlib and the SDK only. Each conversation is one thread
that takes a turn after another, every turn a `runs.wait` with the SDK's default retry
behaviour, until the stop file appears (the test creates it with `kubectl exec`) or the
turn limit is reached. Every `THIRD`-th turn calls the offline model's slow tool, so runs
are in flight when pods go away. At the end each thread's stored messages and runs are
read back and compared with what was sent. Prints one JSON summary line.

Arguments: service URL, conversations, stop file, label (unique per load), most turns per
conversation, think time in seconds between one answer and the next message.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import httpx
from langgraph_sdk import get_sync_client

THIRD = 3
# The service's page limit; the test keeps the turns per conversation below it.
MAX_RUNS = 1000
SLOW = "please look up slowly 1"
# The line said once the Service answered and the conversations begin.
STARTED = "conversations started"
# Only until the Service first answers: kube-proxy may program it a moment late.
FIRST_ANSWER_S = 60


def _wait_for_service(client: Any) -> None:
    deadline = time.monotonic() + FIRST_ANSWER_S
    while True:
        try:
            client.threads.search(limit=1)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _message(label: str, conversation: int, turn: int) -> str:
    text = f"{label} c{conversation} m{turn}"
    return f"{text} {SLOW}" if turn % THIRD == 0 else text


def _wrong(reply: str, first: str, text: str, turn: int) -> bool:
    return not (
        reply.startswith(f"Turn {turn}.")
        and f'You first said: "{first}"' in reply
        and f'You just said: "{text}"' in reply
    )


class Conversation(threading.Thread):
    def __init__(self, client: Any, index: int, args: dict[str, Any]) -> None:
        super().__init__(name=f"c{index}")
        self.client, self.index, self.args = client, index, args
        self.thread_id = ""
        self.sent: list[str] = []
        self.failures: list[str] = []
        self.wrong: list[str] = []
        self.seconds: list[float] = []

    def run(self) -> None:
        try:
            self.thread_id = self.client.threads.create(metadata={"load": self.args["label"]})[
                "thread_id"
            ]
        except Exception as exc:  # every failure is counted and reported
            self.failures.append(f"create: {exc!r}")
            return
        while len(self.sent) < self.args["turns"] and not os.path.exists(self.args["stop"]):
            if not self._turn(len(self.sent) + 1):
                return
            time.sleep(self.args["think"])

    def _turn(self, turn: int) -> bool:
        text = _message(self.args["label"], self.index, turn)
        self.sent.append(text)
        message = {"role": "user", "content": text}
        started = time.monotonic()
        try:
            state = self.client.runs.wait(self.thread_id, "agent", input={"messages": [message]})
        except Exception as exc:  # a failed turn ends the conversation: its fate is unknown
            self.failures.append(f"turn {turn}: {exc!r}")
            return False
        self.seconds.append(time.monotonic() - started)
        reply = state["messages"][-1]["content"]
        if _wrong(reply, self.sent[0], text, turn):
            self.wrong.append(f"turn {turn}: {reply[:200]}")
        return True

    def check(self) -> dict[str, Any]:
        """What the database holds for this thread against what was sent."""
        if not self.thread_id:
            return {"lost": 0, "duplicated": 0, "out_of_order": False, "runs_not_success": 0}
        state = self.client.threads.get_state(self.thread_id)
        stored = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
        runs = self.client.runs.list(self.thread_id, limit=MAX_RUNS)
        return {
            "lost": sum(1 for text in self.sent if text not in stored),
            "duplicated": len(stored) - len(set(stored)),
            "out_of_order": [t for t in stored if t in self.sent] != self.sent,
            "runs": len(runs),
            "runs_not_success": sum(1 for run in runs if run["status"] != "success"),
        }


def main() -> None:
    url, conversations, stop, label, turns, think = sys.argv[1:7]
    args = {"label": label, "stop": stop, "turns": int(turns), "think": float(think)}
    client = get_sync_client(url=url)
    _wait_for_service(client)
    _say(STARTED)
    started = time.monotonic()
    # A client per conversation, as each user has their own: threads sharing one httpx pool
    # hit httpcore's race that closes a connection already handed to another thread's request
    # (encode/httpcore#1110, open in 1.0.9; seen here as `ReadError('[Errno 9] Bad file
    # descriptor')` on a turn the service had answered and stored).
    workers = [Conversation(get_sync_client(url=url), i, args) for i in range(int(conversations))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    checks = [worker.check() for worker in workers]
    seconds = sorted(s for worker in workers for s in worker.seconds)
    summary = {
        "conversations": len(workers),
        "turns": sum(len(worker.seconds) for worker in workers),
        "sent": sum(len(worker.sent) for worker in workers),
        "seconds": round(elapsed, 1),
        "p95_turn_seconds": round(seconds[int(0.95 * (len(seconds) - 1))], 3) if seconds else None,
        "failures": [f"{w.name} {f}" for w in workers for f in w.failures],
        "wrong": [f"{w.name} {f}" for w in workers for f in w.wrong],
        "lost": sum(c["lost"] for c in checks),
        "duplicated": sum(c["duplicated"] for c in checks),
        "out_of_order": sum(1 for c in checks if c["out_of_order"]),
        "runs": sum(c.get("runs", 0) for c in checks),
        "runs_not_success": sum(c["runs_not_success"] for c in checks),
        "stopped_by_file": os.path.exists(stop),
        "thread_ids": [w.thread_id for w in workers],
    }
    _say(json.dumps(summary))


if __name__ == "__main__":
    main()
