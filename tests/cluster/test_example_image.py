"""The example user project's image on the one-node cluster (issue 28, scenario 1): its graphs
are served.

`examples/refund-agent/Dockerfile` built as it is (`example.py`) on the project's image of this
tree, then `helm install` of the chart with that image and a database Secret of the user's
(`bridge_postgres`), and the example's graphs driven through the Service with langgraph-sdk:
listed as assistants, a refund paused for approval (`interrupt`) and resumed, the tool run
with the `env` its langgraph.json sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langgraph_sdk import get_sync_client

from tests.cluster.image import ImageRef
from tests.cluster.node import NodeCluster
from tests.cluster.pgbridge import BridgePostgres
from tests.cluster.release import Installed, installed_release, ready

pytestmark = pytest.mark.node

RELEASE = "refunds"
SERVICE_PORT = 8000
CONTEXT = {"approval_threshold": 100, "reviewer": "ada"}


@pytest.fixture(scope="module")
def installed(
    kube_node: NodeCluster, example_image: ImageRef, bridge_postgres: BridgePostgres
) -> Iterator[Installed]:
    with installed_release(kube_node, example_image, bridge_postgres, RELEASE) as done:
        yield done


def _ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def test_the_example_projects_graphs_are_served(
    installed: Installed, port_forward: Callable[..., str]
) -> None:
    release = installed.release
    pods = release.service_pods()
    assert pods and all(ready(pod) for pod in pods)
    assert all(pod["spec"]["containers"][0]["image"] == str(release.image) for pod in pods)
    url = port_forward(release.namespace, f"service/{release.fullname}", SERVICE_PORT)
    sdk = get_sync_client(url=url)

    graphs = {assistant["graph_id"] for assistant in sdk.assistants.search(limit=100)}
    assert graphs >= {"refunds", "refunds_strict"}

    thread_id = sdk.threads.create()["thread_id"]
    paused: Any = sdk.runs.wait(
        thread_id, "refunds", input=_ask("refund order 20"), context=CONTEXT
    )
    (pending,) = paused["__interrupt__"]
    assert pending["value"]["question"] == "Refund 200.00?"
    # The tool ran with the env langgraph.json sets.
    assert '"currency": "EUR"' in paused["messages"][-1]["content"]
    done: Any = sdk.runs.wait(
        thread_id, "refunds", command={"resume": {"approved": True}}, context=CONTEXT
    )
    assert done["messages"][-1]["content"] == "Refunded 200.00."
    assert sdk.threads.get(thread_id)["status"] == "idle"
