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

from tests.cluster.controlplane import Cluster
from tests.reaper.support import policy_document
from threadkeeper.reaper.durations import MAX_COUNT
from threadkeeper.reaper.policy import PolicyError, parse_policy
from threadkeeper.reaper.summary import Outcome, PruneSummary, ThreadsDeleted

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
    "store",
    [
        {"sweepExpired": True},
        {"maxItemsPerNamespace": 1000},
        {"maxIdle": "90d"},
        {"sweepExpired": True, "maxItemsPerNamespace": 100_000_000, "maxIdle": "5217w"},
    ],
    ids=["sweepExpired", "maxItemsPerNamespace", "maxIdle", "all"],
)
def test_a_store_only_policy_is_accepted(crd: Target, store: dict[str, Any]) -> None:
    spec = {"store": store}
    name = "memory-" + "-".join(sorted(store)).lower()
    created = kubectl(crd, "create", "-f", "-", stdin=_manifest(name, **spec))
    assert created.returncode == 0, created.stderr
    stored = _stored(crd, name)
    assert stored is not None
    assert parse_policy(stored).spec == parse_policy(policy_document(**spec)).spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "set at least one of threads, checkpoints, orphans"),
        ({"threads": {}}, "set maxIdle, archivedFor or both"),
        ({"checkpoints": {"keepLast": 0}}, "should be greater than or equal to 1"),
        ({"threads": {"maxIdle": "30 days"}}, "spec.threads.maxIdle"),
        ({"orphans": {}}, "spec.orphans.olderThan: Required value"),
        ({"store": {}}, "set sweepExpired: true, maxItemsPerNamespace or maxIdle"),
        ({"store": {"sweepExpired": False}}, "set sweepExpired: true, maxItemsPerNamespace or"),
        ({"store": {"maxIdle": "1 day"}}, "spec.store.maxIdle"),
        ({"store": {"maxIdle": "36526d"}}, "at most 100 years"),
        ({"store": {"maxItemsPerNamespace": 0}}, "should be greater than or equal to 1"),
    ],
)
def test_the_api_server_refuses_bad_policies(
    crd: Target, spec: dict[str, Any], message: str
) -> None:
    created = kubectl(crd, "create", "--dry-run=server", "-f", "-", stdin=_manifest("bad", **spec))
    assert created.returncode != 0
    assert message in created.stderr


TYPO = {"checkpoints": {"keepLast": 5, "maxAgee": "30d"}}
UNKNOWN = "unknown field: allowed are keepLast, maxAge"


def _stored(crd: Target, name: str) -> dict[str, Any] | None:
    got = kubectl(crd, "get", "rp", name, "-o", "json", "--ignore-not-found")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout) if got.stdout.strip() else None


@pytest.mark.parametrize(
    "how",
    [
        ("apply", "--validate=false"),
        ("apply", "--validate=warn"),
        ("apply", "--validate=ignore"),
        ("create", "--validate=false"),
    ],
    ids=" ".join,
)
def test_a_typo_is_refused_whatever_kubectl_validates(crd: Target, how: tuple[str, str]) -> None:
    name = f"typo-{how[0]}-{how[1].rpartition('=')[2]}"
    created = kubectl(crd, *how, "-f", "-", stdin=_manifest(name, **TYPO))
    assert created.returncode != 0, created.stdout
    assert UNKNOWN in created.stderr
    assert _stored(crd, name) is None


def test_a_typo_is_refused_in_a_raw_api_post(crd: Target) -> None:
    """No client-side validation at all, and no fieldValidation parameter."""
    document = policy_document(**TYPO)
    document["metadata"] = {"name": "typo-raw", "namespace": crd.namespace}
    path = f"/apis/threadkeeper.dev/v1alpha1/namespaces/{crd.namespace}/retentionpolicies"
    posted = kubectl(crd.cluster, "create", "--raw", path, "-f", "-", stdin=json.dumps(document))
    assert posted.returncode != 0, posted.stdout
    assert UNKNOWN in posted.stderr
    assert _stored(crd, "typo-raw") is None


def test_a_typo_is_refused_through_the_python_client(crd: Target) -> None:
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    document = policy_document(**TYPO)
    document["metadata"] = {"name": "typo-python"}
    with crd.cluster.api_client() as client, pytest.raises(ApiException) as refused:
        CustomObjectsApi(client).create_namespaced_custom_object(
            "threadkeeper.dev", "v1alpha1", crd.namespace, "retentionpolicies", document
        )
    assert refused.value.status == 422
    assert UNKNOWN in str(refused.value.body)


@pytest.mark.parametrize(
    "spec",
    [
        {"checkpoints": {}, "extra": True},
        {"threads": {"maxIdle": "1d", "maxidle": "2d"}},
        {"orphans": {"olderThan": "1d", "newerThan": "1d"}},
        {"store": {"sweepExpired": True, "maxItemsPerNamespace": 5, "maxAge": "1d"}},
        {"checkpoints": {}, "limits": {"batchsize": 5}},
        {"checkpoints": {}, "schedule": {"every": "1h"}},
        {"checkpoints": {}, "database": {"secretRef": {"name": "db", "keys": "url"}}},
        {"checkpoints": {}, "database": {"secretRef": {"name": "db"}, "url": "postgres://"}},
    ],
)
def test_unknown_fields_are_refused_at_every_level(crd: Target, spec: dict[str, Any]) -> None:
    created = kubectl(
        crd,
        "apply",
        "--validate=false",
        "--dry-run=server",
        "-f",
        "-",
        stdin=_manifest("unknown", **spec),
    )
    assert created.returncode != 0
    assert "unknown field: allowed are" in created.stderr
    with pytest.raises(PolicyError, match="Extra inputs are not permitted"):
        parse_policy(policy_document(**spec))


DURATIONS = [
    ("schedule", "interval"),
    ("threads", "maxIdle"),
    ("threads", "archivedFor"),
    ("checkpoints", "maxAge"),
    ("orphans", "olderThan"),
    ("limits", "maxDuration"),
    ("limits", "lockTimeout"),
    ("limits", "statementTimeout"),
]


def _with_duration(section: str, field: str, value: str) -> dict[str, Any]:
    return {"checkpoints": {}, section: {field: value}}


@pytest.mark.parametrize(("section", "field"), DURATIONS)
def test_durations_beyond_100_years_are_refused(crd: Target, section: str, field: str) -> None:
    too_long = _with_duration(section, field, "99999w")
    created = kubectl(
        crd, "create", "--dry-run=server", "-f", "-", stdin=_manifest("long", **too_long)
    )
    assert created.returncode != 0
    assert f"spec.{section}.{field}" in created.stderr
    assert "at most 100 years" in created.stderr


@pytest.mark.parametrize("unit", sorted(MAX_COUNT))
def test_the_api_server_and_the_parser_agree_on_the_longest_duration(
    crd: Target, unit: str
) -> None:
    """Both accept the longest duration of each unit and refuse one unit more."""
    for count in (MAX_COUNT[unit], MAX_COUNT[unit] + 1):
        value = f"{count}{unit}"
        spec = _with_duration("threads", "maxIdle", value)
        created = kubectl(
            crd, "create", "--dry-run=server", "-f", "-", stdin=_manifest("edge", **spec)
        )
        try:
            parse_policy(policy_document(**spec))
            parsed = True
        except PolicyError:
            parsed = False
        assert (created.returncode == 0) == parsed, (value, created.stderr)
        assert parsed == (count == MAX_COUNT[unit] and count < 10**9), value


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
