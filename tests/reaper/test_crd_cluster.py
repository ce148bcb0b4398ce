"""The CRD on a real API server: structural schema, defaults, CEL rules, columns, status.

Runs on the session's ``kube`` API server (tests/cluster); that fixture fails with a clear
message when no cluster can be had, so these tests never skip silently. Objects go into a
namespace of this module's own.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reaper.policy import parse_policy
from reaper.summary import Outcome, PruneSummary, ThreadsDeleted
from tests.cluster.controlplane import Cluster
from tests.reaper.support import policy_document

pytestmark = pytest.mark.cluster

CRD = Path(__file__).parents[2] / "deploy" / "crds" / "retentionpolicies.threadkeeper.dev.yaml"


@dataclass(frozen=True)
class Target:
    cluster: Cluster
    namespace: str


def kubectl(
    target: Cluster | Target, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    cluster = target.cluster if isinstance(target, Target) else target
    scope = ["--namespace", target.namespace] if isinstance(target, Target) else []
    return subprocess.run(
        [str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig), *scope, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def crd(kube: Cluster) -> Target:
    applied = kubectl(kube, "apply", "-f", str(CRD))
    assert applied.returncode == 0, applied.stderr
    ready = kubectl(
        kube,
        "wait",
        "--for=condition=Established",
        "crd/retentionpolicies.threadkeeper.dev",
        "--timeout=60s",
    )
    assert ready.returncode == 0, ready.stderr
    namespace = f"crd-{uuid.uuid4().hex[:10]}"
    created = kubectl(kube, "create", "namespace", namespace)
    assert created.returncode == 0, created.stderr
    return Target(kube, namespace)


def _manifest(name: str, **spec: Any) -> str:
    document = policy_document(**spec)
    document["metadata"] = {"name": name}
    return yaml.safe_dump(document)


def test_the_api_server_defaults_like_the_model(crd: Target) -> None:
    created = kubectl(crd, "create", "-f", "-", stdin=_manifest("minimal", checkpoints={}))
    assert created.returncode == 0, created.stderr
    got = kubectl(crd, "get", "rp", "minimal", "-o", "json")
    assert got.returncode == 0, got.stderr
    stored = json.loads(got.stdout)
    from_server = parse_policy(stored).spec
    from_model = parse_policy(policy_document(checkpoints={})).spec
    assert from_server == from_model
    assert stored["spec"]["limits"] == {
        "batchSize": 500,
        "maxDuration": "5m",
        "lockTimeout": "2s",
        "statementTimeout": "30s",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "set at least one of threads, checkpoints, orphans"),
        ({"threads": {}}, "set maxIdle, archivedFor or both"),
        ({"checkpoints": {"keepLast": 0}}, "should be greater than or equal to 1"),
        ({"threads": {"maxIdle": "30 days"}}, "spec.threads.maxIdle"),
        ({"orphans": {}}, "spec.orphans.olderThan: Required value"),
    ],
)
def test_the_api_server_refuses_bad_policies(
    crd: Target, spec: dict[str, Any], message: str
) -> None:
    created = kubectl(crd, "create", "--dry-run=server", "-f", "-", stdin=_manifest("bad", **spec))
    assert created.returncode != 0
    assert message in created.stderr


def test_columns_and_status(crd: Target) -> None:
    created = kubectl(
        crd, "create", "-f", "-", stdin=_manifest("columns", threads={"maxIdle": "30d"})
    )
    assert created.returncode == 0, created.stderr
    summary = PruneSummary(
        policy="columns",
        namespace="default",
        dry_run=False,
        outcome=Outcome.SUCCEEDED,
        message="deleted 3 threads",
        started_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        duration_seconds=0.5,
        threads_deleted=ThreadsDeleted(idle=3),
    )
    status = {
        "lastRunTime": "2026-01-01T00:00:00Z",
        "lastRun": summary.last_run_status(),
        "tables": {"checkpoints": {"bytes": 8192, "rowsEstimate": 12}},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Pruned",
                "message": "ok",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
    patched = kubectl(
        crd,
        "patch",
        "rp",
        "columns",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    assert patched.returncode == 0, patched.stderr
    table = kubectl(crd, "get", "rp", "columns")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "READY",
        "INTERVAL",
        "LAST",
        "RUN",
        "DELETED",
        "SUSPENDED",
        "AGE",
    ]
    assert row.split()[:3] == ["columns", "True", "10m"]
    assert row.split()[4:6] == ["3", "false"]
    stored = json.loads(kubectl(crd, "get", "rp", "columns", "-o", "json").stdout)
    assert stored["status"]["lastRun"] == summary.last_run_status()
