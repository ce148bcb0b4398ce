"""The example project served as a user deploys it: two real replicas on one Postgres, each
started with THREADKEEPER_CONFIG pointing at its langgraph.json and its package importable (what
its Dockerfile installs from `dependencies`), driven with langgraph-sdk only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from langgraph_sdk import get_client

from tests.support.processes import ServiceProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "refund-agent"
CONTEXT = {"approval_threshold": 100, "reviewer": "ada"}


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def replica(replicas: Callable[..., ServiceProcess], name: str) -> ServiceProcess:
    return replicas(
        name,
        THREADKEEPER_CONFIG=str(EXAMPLE / "langgraph.json"),
        PYTHONPATH=str(EXAMPLE / "src"),
    ).start()


async def test_interrupt_on_one_replica_resume_on_the_other_then_time_travel(
    replicas: Callable[..., ServiceProcess],
) -> None:
    a, b = replica(replicas, "a"), replica(replicas, "b")
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)
    tid = (await on_a.threads.create())["thread_id"]

    paused = await on_a.runs.wait(tid, "refunds", input=ask("refund order 20"), context=CONTEXT)
    (pending,) = paused["__interrupt__"]
    assert pending["value"]["question"] == "Refund 200.00?"
    assert pending["value"]["reviewer"] == "ada"
    # The tool ran with the env langgraph.json sets.
    assert '"currency": "EUR"' in paused["messages"][-1]["content"]

    waiting = await on_b.threads.get_state(tid)
    assert waiting["next"] == ["approve"]
    # Human in the loop as the Agent Server has it: the run that paused succeeded, and the
    # thread is the one that waits.
    (paused_run,) = await on_b.runs.list(tid)
    assert paused_run["status"] == "success"
    assert (await on_b.threads.get(tid))["status"] == "interrupted"
    resume = await on_b.runs.create(
        tid, "refunds", command={"resume": {"approved": True}}, context=CONTEXT
    )
    await on_b.runs.join(tid, resume["run_id"])
    done = await on_b.threads.get_state(tid)
    assert done["values"]["messages"][-1]["content"] == "Refunded 200.00."
    assert (await on_a.threads.get(tid))["status"] == "idle"
    assert f'"run_id": "{resume["run_id"]}"' in b.logs()  # the other replica executed it

    # Time travel: back to before the policy ran, replayed under a higher threshold.
    history = await on_a.threads.get_history(tid)
    before_policy = next(s for s in history if s["next"] == ["policy"])
    forked = await on_a.runs.wait(
        tid,
        "refunds",
        input=None,
        checkpoint_id=before_policy["checkpoint"]["checkpoint_id"],
        context={**CONTEXT, "approval_threshold": 1000},
    )
    assert "__interrupt__" not in forked
    assert forked["decision"] == "auto" and forked["messages"][-1]["content"] == "Refunded 200.00."
    branch = await on_b.threads.get_history(tid)
    assert {s["values"].get("decision") for s in branch} >= {"auto", "needs_approval"}


async def test_the_factory_graph_is_built_per_run_from_its_config(
    replicas: Callable[..., ServiceProcess],
) -> None:
    server = replica(replicas, "factory")
    client = get_client(url=server.url)
    small = ask("refund order 1")

    strict = (await client.threads.create())["thread_id"]
    asked = await client.runs.wait(
        strict, "refunds_strict", input=small, config={"configurable": {"strict": True}}
    )
    assert asked["__interrupt__"][0]["value"]["question"] == "Refund 10.00?"

    lenient = (await client.threads.create())["thread_id"]
    answered = await client.runs.wait(lenient, "refunds_strict", input=small)
    assert answered["messages"][-1]["content"] == "Refunded 10.00."
    # The factory's graph reads its thread's state too (it is called for the read).
    state = await client.threads.get_state(strict)
    assert state["next"] == ["approve"]


async def test_an_assistant_of_the_users_graph_carries_its_context_and_versions(
    replicas: Callable[..., ServiceProcess],
) -> None:
    """The usual client pattern on the user's graph: an assistant created at start-up (twice,
    as two clients would), its context reaching the graph on the other replica, its drawing,
    schemas and subgraph, and versions with ``latest`` choosing which one runs."""
    a, b = replica(replicas, "a"), replica(replicas, "b")
    on_a, on_b = get_client(url=a.url), get_client(url=b.url)
    lenient = {**CONTEXT, "approval_threshold": 1000}
    made = await on_a.assistants.create(
        graph_id="refunds", context=lenient, name="lenient refunds", if_exists="do_nothing"
    )
    again = await on_b.assistants.create(
        graph_id="refunds",
        assistant_id=made["assistant_id"],
        context=CONTEXT,
        if_exists="do_nothing",
    )
    assert again["assistant_id"] == made["assistant_id"] and again["context"] == lenient
    aid = made["assistant_id"]

    async def decide(client: Any) -> Any:
        tid = (await client.threads.create())["thread_id"]
        return await client.runs.wait(tid, aid, input=ask("refund order 20"))

    # 200.00 is under the assistant's threshold: no approval asked, on either replica.
    auto = await decide(on_b)
    assert auto["decision"] == "auto" and "__interrupt__" not in auto

    drawing = await on_a.assistants.get_graph(aid, xray=True)
    nodes = {node["id"] for node in drawing["nodes"]}
    assert {"find_order", "tools", "approve", "reply"} <= nodes
    assert any(node.startswith("policy") and node != "policy" for node in nodes)  # x-rayed
    schemas = await on_b.assistants.get_schemas(aid)
    assert schemas["graph_id"] == "refunds"
    assert "approval_threshold" in schemas["context_schema"]["properties"]
    assert "amount" in schemas["state_schema"]["properties"]
    subgraphs = await on_a.assistants.get_subgraphs(aid)
    assert list(subgraphs) == ["policy"]

    strict = await on_b.assistants.update(aid, context=CONTEXT)
    assert strict["version"] == 2
    versions = await on_a.assistants.get_versions(aid)
    assert sorted(v["version"] for v in versions) == [1, 2]
    paused = await decide(on_a)
    assert paused["decision"] == "needs_approval" and paused["__interrupt__"]
    await on_a.assistants.set_latest(aid, 1)
    assert (await decide(on_b))["decision"] == "auto"
