"""The JS langgraph-sdk (tests/js, installed by ``make js``) streaming from two real replicas."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

JS = Path(__file__).parent.parent / "js"
SCRIPT_TIMEOUT = 120


def test_js_sdk_streams_tokens_tools_and_rejoins_on_the_other_replica(
    replicas: Callable[..., ServiceProcess],
) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for the JS SDK tests"
    assert (JS / "node_modules" / "@langchain" / "langgraph-sdk").is_dir(), "run `make js` first"
    a = replicas("a").start()
    b = replicas("b").start(migrate=False)
    done = subprocess.run(
        [node, str(JS / "stream.mjs"), a.url, b.url],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    whole = out["whole"]
    assert whole[0]["event"] == "metadata" and whole[0]["data"]["run_id"] == out["runId"]
    reply = [p["data"] for p in whole if p["event"] == "values"][-1]["messages"][-1]["content"]
    tokens = [p["data"][0]["content"] for p in whole if p["event"] == "messages"]
    assert "".join(tokens).endswith(reply) and len(tokens) > len(reply.split()) // 2
    assert out["toolProgress"] == [{"name": "slow_lookup", "state": "completed"}]
    # The rejoin on B is exactly the events after the third, in order (end included).
    assert [(p["event"], p["data"]) for p in whole[3:]] == [
        (p["event"], p["data"]) for p in out["rest"]
    ]
    assert out["refused"]["status"] == 422, out["refused"]
