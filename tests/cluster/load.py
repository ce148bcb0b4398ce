"""The conversation load of the node tier: a client pod running `conversations.py` against a
release's Service, its summary line, and what a clean run of it means."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.cluster import conversations
from tests.cluster.node import NodeCluster
from tests.cluster.pods import WAIT_S, kubectl
from tests.cluster.release import Release

SERVICE_PORT = 8000
# The file whose creation in the pod ends the load.
STOP_FILE = "/tmp/stop"
# The load: 30+ conversations at once.
CONVERSATIONS = 32
# A user's pause between an answer and the next message.
THINK_S = 1.0
# Keeps every conversation's runs on one page of `runs.list`.
MAX_TURNS = conversations.MAX_RUNS - 1


def client_pod(
    release: Release, name: str, label: str, count: int, turns: int, think: float
) -> dict[str, Any]:
    """A pod of the release's image running `conversations.py` against its Service."""
    url = f"http://{release.fullname}.{release.namespace}.svc:{SERVICE_PORT}"
    return conversation_pod(
        url, release.namespace, str(release.image), name, label, count, turns, think
    )


def conversation_pod(
    url: str,
    namespace: str,
    image: str,
    name: str,
    label: str,
    count: int,
    turns: int,
    think: float,
) -> dict[str, Any]:
    """A pod of `image` running `conversations.py` against the service at `url`."""
    script = Path(conversations.__file__).read_text()
    args = [url, str(count), STOP_FILE, label, str(turns), str(think)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "command": ["python", "-c", script, *args],
                }
            ],
        },
    }


def summary_of(logs: str) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(logs.strip().splitlines()[-1])
    return summary


def assert_clean(summary: dict[str, Any]) -> None:
    """Every turn answered right, and the database holds exactly what was said."""
    assert summary["failures"] == []
    assert summary["wrong"] == []
    assert summary["turns"] == summary["sent"]
    assert summary["lost"] == 0
    assert summary["duplicated"] == 0
    assert summary["out_of_order"] == 0
    assert summary["runs"] == summary["turns"]
    assert summary["runs_not_success"] == 0


def wait_for_line(cluster: NodeCluster, namespace: str, pod: str, line: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while line not in kubectl(cluster, "logs", "-n", namespace, pod, check=False):
        assert time.monotonic() < deadline, f"pod {pod} never said {line!r}"
        time.sleep(1)
