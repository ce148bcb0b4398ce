"""Offline checks of the chart: lint, render every switch, the objects' shape, the schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.chart import support
from tests.chart.support import BASE, DB_URL, SCENARIOS, Helm, find
from threadkeeper.service.settings import Settings

SERVICE = "tk-threadkeeper"
REAPER = "tk-threadkeeper-reaper"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_and_template(helm: Helm, scenario: str) -> None:
    helm.lint(SCENARIOS[scenario])
    docs = helm.render(SCENARIOS[scenario])
    assert docs, "nothing rendered"
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == support.RELEASE
        if doc["kind"] != "CustomResourceDefinition":
            assert doc["metadata"]["namespace"] == "threadkeeper"


def test_default_objects(helm: Helm) -> None:
    docs = helm.render(BASE)
    assert support.kinds(docs) == sorted(
        [
            "CustomResourceDefinition/retentionpolicies.threadkeeper.dev",
            f"Deployment/{REAPER}",
            f"Deployment/{SERVICE}",
            f"Job/{SERVICE}-migrate",
            f"PodDisruptionBudget/{SERVICE}",
            f"Pod/{SERVICE}-test",
            f"RetentionPolicy/{SERVICE}",
            f"Role/{REAPER}",
            f"RoleBinding/{REAPER}",
            f"Secret/{SERVICE}-database",
            f"Secret/{SERVICE}-migrate",
            f"Service/{REAPER}-metrics",
            f"Service/{SERVICE}",
            f"ServiceAccount/{REAPER}",
            f"ServiceAccount/{SERVICE}",
            f"Job/{SERVICE}-uninstall",
            f"Role/{SERVICE}-uninstall",
            f"RoleBinding/{SERVICE}-uninstall",
            f"ServiceAccount/{SERVICE}-uninstall",
        ]
    )


def test_every_switch_renders_its_objects(helm: Helm) -> None:
    docs = helm.render(SCENARIOS["everything"])
    for kind in (
        "Ingress",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    ):
        assert any(d["kind"] == kind for d in docs), kind
    deployment = find(docs, "Deployment", SERVICE)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 10
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    image = support.containers(deployment)[0]["image"]
    assert image == "ghcr.io/threadkeeper/threadkeeper@sha256:" + "a" * 64
    assert support.pod_spec(deployment)["imagePullSecrets"] == [{"name": "registry"}]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {SERVICE, REAPER}


def test_switches_off(helm: Helm) -> None:
    docs = helm.render(
        {
            **BASE,
            "podDisruptionBudget.enabled": False,
            "reaper.enabled": False,
            "retention.enabled": False,
            "crds.create": False,
            "helmTest.enabled": False,
            "migrations.enabled": False,
        }
    )
    assert support.kinds(docs) == sorted(
        [
            f"Deployment/{SERVICE}",
            f"Secret/{SERVICE}-database",
            f"Service/{SERVICE}",
            f"ServiceAccount/{SERVICE}",
        ]
    )
    args = support.containers(find(docs, "Deployment", SERVICE))[0]["args"]
    assert "--no-migrate" not in args, "without the hook Job the replicas must migrate"


def test_service_deployment(helm: Helm) -> None:
    docs = helm.render(BASE)
    deployment = find(docs, "Deployment", SERVICE)
    pod = support.pod_spec(deployment)
    (container,) = support.containers(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["command"] == ["threadkeeper-service"]
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
    # Probes: readiness is the database-aware /readyz, liveness and start-up only /healthz.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Graceful shutdown: the preStop sleep, then the service's own budget, fit in the grace period.
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep == 10
    shutdown = float(support.env_of(container)["THREADKEEPER_SHUTDOWN_SECONDS"]["value"])
    assert sleep + shutdown < pod["terminationGracePeriodSeconds"]
    # Restricted pod security, read-only root with a writable /tmp.
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "256Mi"
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    spread = pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    # No sticky sessions anywhere.
    assert find(docs, "Service", SERVICE)["spec"]["sessionAffinity"] == "None"


def test_service_environment(helm: Helm) -> None:
    docs = helm.render(
        {
            **BASE,
            "service.model": "openai:gpt-4o-mini",
            "service.leaseSeconds": 45,
            "service.concurrentRuns": 2,
            "service.blobCacheBytes": 1048576,
            "service.pool.minSize": 3,
            "service.pool.maxSize": 12,
            "service.temporaryThreadSeconds": 300,
        }
    )
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    values = {name: e.get("value") for name, e in env.items()}
    assert values["THREADKEEPER_AUTH"] == "none"
    assert values["THREADKEEPER_MODEL"] == "openai:gpt-4o-mini"
    assert values["THREADKEEPER_LEASE_SECONDS"] == "45"
    assert values["THREADKEEPER_WORKERS"] == "2"
    assert values["THREADKEEPER_BLOB_CACHE_BYTES"] == "1048576"
    assert values["THREADKEEPER_POOL_MIN_SIZE"] == "3"
    assert values["THREADKEEPER_POOL_MAX_SIZE"] == "12"
    assert values["THREADKEEPER_TEMPORARY_THREAD_SECONDS"] == "300"
    assert values["THREADKEEPER_PREPARED_STATEMENTS"] == "true"
    assert values["THREADKEEPER_LOG_FORMAT"] == "json"
    assert env["THREADKEEPER_REPLICA"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{SERVICE}-database", "key": "url"}
    }
    assert "THREADKEEPER_AUTH_HEADER" not in env
    assert not any(name.startswith("THREADKEEPER_JWT") for name in env)
    # Unset: the service's own default (which depends on the auth mode).
    assert "THREADKEEPER_MAX_RUNS_PER_OWNER" not in env
    # Unset: the image's default deployment (./langgraph.json, else the demo).
    assert "THREADKEEPER_CONFIG" not in env


def test_the_users_own_deployment_config(helm: Helm) -> None:
    docs = helm.render({**BASE, "service.config": "/app/langgraph.json"})
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    assert env["THREADKEEPER_CONFIG"]["value"] == "/app/langgraph.json"
    # The migrate Job reads it too: its store.index makes the vector table.
    job = support.env_of(support.containers(find(docs, "Job", f"{SERVICE}-migrate"))[0])
    assert job["THREADKEEPER_CONFIG"]["value"] == "/app/langgraph.json"
    plain = find(helm.render(BASE), "Job", f"{SERVICE}-migrate")
    assert "THREADKEEPER_CONFIG" not in support.env_of(support.containers(plain)[0])


@pytest.mark.parametrize(("grace", "sleep"), [(45, 10), (25, 10), (120, 0), (600, 30)])
def test_one_shutdown_budget_for_pod_and_service(helm: Helm, grace: int, sleep: int) -> None:
    """The service's shutdown comes from the pod's grace period: what the chart renders is a
    configuration the service accepts, and its drain ends before the kubelet's SIGKILL."""
    docs = helm.render(
        {
            **BASE,
            "service.terminationGracePeriodSeconds": grace,
            "service.preStopSleepSeconds": sleep,
        }
    )
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    settings = Settings.model_validate(
        {
            name.removeprefix("THREADKEEPER_").lower(): e["value"]
            for name, e in env.items()
            if name.startswith("THREADKEEPER_") and "value" in e
        }
    )
    assert sleep + settings.shutdown_seconds < grace
    assert settings.run_drain_seconds < settings.cut_seconds < settings.shutdown_seconds


def test_concurrent_runs_may_be_zero(helm: Helm) -> None:
    """A pod that serves the API but executes no runs."""
    docs = helm.render({**BASE, "service.concurrentRuns": 0})
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    assert env["THREADKEEPER_WORKERS"]["value"] == "0"


def test_per_owner_cap_of_running_runs(helm: Helm) -> None:
    for cap in (0, 3):
        docs = helm.render({**BASE, "service.maxRunsPerOwner": cap})
        env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
        assert env["THREADKEEPER_MAX_RUNS_PER_OWNER"]["value"] == str(cap)


def test_prepared_statements_can_be_turned_off_for_pgbouncer(helm: Helm) -> None:
    docs = helm.render({**BASE, "database.preparedStatements": False})
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    assert env["THREADKEEPER_PREPARED_STATEMENTS"]["value"] == "false"


def _all_strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _all_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _all_strings(v)]
    return [node] if isinstance(node, str) else []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_database_url_only_in_secrets(helm: Helm, scenario: str) -> None:
    for doc in helm.render(SCENARIOS[scenario]):
        if doc["kind"] == "Secret":
            continue
        assert not [s for s in _all_strings(doc) if "s3cret" in s], (
            f"the database URL leaks into {doc['kind']}/{doc['metadata']['name']}"
        )


def test_database_secret_and_migration_hook(helm: Helm) -> None:
    docs = helm.render(BASE)
    secret = find(docs, "Secret", f"{SERVICE}-database")
    assert secret["stringData"] == {"url": DB_URL}
    assert support.hook(secret) is None, "the release's own Secret is an ordinary object"
    # The migration runs before the release's objects exist, so it reads a hook Secret that
    # is created before it (lower weight) and deleted when the hooks succeeded.
    hook_secret = find(docs, "Secret", f"{SERVICE}-migrate")
    job = find(docs, "Job", f"{SERVICE}-migrate")
    for doc in (hook_secret, job):
        assert support.hook(doc) == "pre-install,pre-upgrade"
        policy = doc["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        assert policy == "before-hook-creation,hook-succeeded"
    weight = "helm.sh/hook-weight"
    assert int(hook_secret["metadata"]["annotations"][weight]) < int(
        job["metadata"]["annotations"][weight]
    )
    assert hook_secret["stringData"] == {"url": DB_URL}
    (container,) = support.containers(job)
    assert container["args"] == ["migrate"]
    assert support.env_of(container)["DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{SERVICE}-migrate", "key": "url"}
    }
    pod = support.pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert "serviceAccountName" not in pod, "hooks run before the chart's ServiceAccounts exist"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_existing_database_secret(helm: Helm) -> None:
    docs = helm.render(SCENARIOS["existing-secret"])
    assert not [d for d in docs if d["kind"] == "Secret"]
    ref = {"secretKeyRef": {"name": "tk-db", "key": "dsn"}}
    for kind, name in (("Deployment", SERVICE), ("Job", f"{SERVICE}-migrate")):
        container = support.containers(find(docs, kind, name))[0]
        assert support.env_of(container)["DATABASE_URL"]["valueFrom"] == ref
    policy = find(docs, "RetentionPolicy")
    assert policy["spec"]["database"] == {"secretRef": {"name": "tk-db", "key": "dsn"}}
    rules = find(docs, "Role", REAPER)["rules"]
    assert {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["tk-db"]}.items() <= (
        next(r for r in rules if r["resources"] == ["secrets"]).items()
    )


def test_header_auth(helm: Helm) -> None:
    docs = helm.render(SCENARIOS["header"])
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    assert env["THREADKEEPER_AUTH"]["value"] == "header"
    assert env["THREADKEEPER_AUTH_HEADER"]["value"] == "X-Auth-Request-User"


def test_jwt_public_key(helm: Helm) -> None:
    docs = helm.render(SCENARIOS["jwt-public-key"])
    secret = find(docs, "Secret", f"{SERVICE}-jwt")
    assert secret["stringData"] == {"publicKey": support.PUBLIC_KEY}
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    assert env["THREADKEEPER_AUTH"]["value"] == "jwt"
    assert env["THREADKEEPER_JWT_PUBLIC_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{SERVICE}-jwt", "key": "publicKey"}
    }
    assert "THREADKEEPER_JWT_SECRET" not in env
    assert env["THREADKEEPER_JWT_AUDIENCE"]["value"] == "threadkeeper"
    assert env["THREADKEEPER_JWT_ISSUER"]["value"] == "https://issuer.example.com/"


def test_jwt_existing_secret(helm: Helm) -> None:
    docs = helm.render(SCENARIOS["jwt-existing-secret"])
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("jwt")]
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    # Either key may be present in the Secret: both references are optional.
    for name, key in (
        ("THREADKEEPER_JWT_SECRET", "secret"),
        ("THREADKEEPER_JWT_PUBLIC_KEY", "publicKey"),
    ):
        assert env[name]["valueFrom"] == {
            "secretKeyRef": {"name": "tk-jwt", "key": key, "optional": True}
        }
    test_pod = find(docs, "Pod")
    assert "THREADKEEPER_JWT_SECRET" in support.env_of(support.containers(test_pod)[0])


def test_reaper(helm: Helm) -> None:
    docs = helm.render(BASE)
    deployment = find(docs, "Deployment", REAPER)
    pod = support.pod_spec(deployment)
    (container,) = support.containers(deployment)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["serviceAccountName"] == REAPER
    assert pod["automountServiceAccountToken"] is True
    assert find(docs, "ServiceAccount", REAPER)["automountServiceAccountToken"] is True
    assert find(docs, "ServiceAccount", SERVICE)["automountServiceAccountToken"] is False
    assert container["command"] == ["threadkeeper-reaper"]
    assert container["args"][:3] == ["run", "--namespace", "$(POD_NAMESPACE)"]
    assert container["args"][3:] == ["--metrics-port", "9090", "--liveness-port", "8080"]
    env = support.env_of(container)
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "DATABASE_URL" not in env, "the reaper reads the Secret the policy names"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "liveness": 8080}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    metrics = find(docs, "Service", f"{REAPER}-metrics")
    assert metrics["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget" and "reaper" in str(d)]


def test_reaper_role_is_least_privilege(helm: Helm) -> None:
    rules = find(helm.render(BASE), "Role", REAPER)["rules"]
    assert rules == [
        {
            "apiGroups": ["threadkeeper.dev"],
            "resources": ["retentionpolicies"],
            "verbs": ["get", "list", "watch", "patch"],
        },
        {
            "apiGroups": ["threadkeeper.dev"],
            "resources": ["retentionpolicies/status"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [f"{SERVICE}-database"],
            "verbs": ["get"],
        },
    ]


def test_reaper_role_matches_the_operators_rules(helm: Helm) -> None:
    """deploy/rbac/reaper-role-rules.yaml is what tests/reaper runs the operator with."""
    rules_file = support.REPO / "deploy/rbac/reaper-role-rules.yaml"
    if not rules_file.is_file():
        pytest.skip(f"{rules_file} is not written yet")
    expected = yaml.safe_load(rules_file.read_text())
    for rule in expected:
        if rule.get("resources") == ["secrets"]:
            rule["resourceNames"] = [f"{SERVICE}-database"]
    assert find(helm.render(BASE), "Role", REAPER)["rules"] == expected


def test_crd_is_the_deploy_crd(helm: Helm) -> None:
    rendered = find(helm.render(BASE), "CustomResourceDefinition")
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert support.hook(rendered) is None
    source = yaml.safe_load(
        (support.REPO / "deploy/crds/retentionpolicies.threadkeeper.dev.yaml").read_text()
    )
    rendered["metadata"].pop("labels")
    rendered["metadata"].pop("annotations")
    assert rendered == source
    assert not [d for d in helm.render(SCENARIOS["crds-off"]) if d["kind"].startswith("Custom")]


def _sync_crds() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sync_crds", support.REPO / "deploy/tools/sync_crds.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crd_copy_is_generated_from_deploy() -> None:
    """The chart's CRDs are generated copies of deploy/crds/, the one source to edit."""
    tool = _sync_crds()
    assert list(tool.COPIES.glob("*.yaml")), "the chart must carry the CRDs"
    assert tool.stale() == [], "run `python deploy/tools/sync_crds.py`"


def test_crd_sync_finds_and_fixes_stale_copies(tmp_path: Path) -> None:
    tool = _sync_crds()
    source, target = tmp_path / "deploy", tmp_path / "chart"
    source.mkdir()
    target.mkdir()
    (source / "a.yaml").write_text("kind: A\n")
    (target / "a.yaml").write_text("kind: old\n")
    (target / "gone.yaml").write_text("kind: Gone\n")
    assert sorted(p.name for p in tool.stale(source, target)) == ["a.yaml", "gone.yaml"]
    tool.write(source, target)
    assert tool.stale(source, target) == []
    assert (target / "a.yaml").read_text() == "kind: A\n"


def test_retention_policy(helm: Helm) -> None:
    policy = find(helm.render(BASE), "RetentionPolicy")
    annotations = policy["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert policy["spec"] == {
        "database": {"secretRef": {"name": f"{SERVICE}-database", "key": "url"}},
        "schedule": {"interval": "10m"},
        "threads": {"maxIdle": "30d", "archivedFor": "7d"},
        "checkpoints": {"keepLast": 20, "maxAge": "7d"},
        "orphans": {"olderThan": "30d"},
        "store": {"sweepExpired": True},
        "limits": {
            "batchSize": 500,
            "maxDuration": "5m",
            "lockTimeout": "2s",
            "statementTimeout": "30s",
        },
        "dryRun": False,
        "suspend": False,
    }
    custom = find(helm.render(SCENARIOS["retention-custom"]), "RetentionPolicy")
    assert custom["metadata"]["name"] == "nightly"
    assert custom["spec"]["threads"] == {"archivedFor": "7d"}
    assert custom["spec"]["checkpoints"] == {"keepLast": 20}
    assert "orphans" not in custom["spec"]
    off = {**BASE, "retention.store.sweepExpired": False}
    assert "store" not in find(helm.render(off), "RetentionPolicy")["spec"]
    bounded = {
        **off,
        "retention.store.maxItemsPerNamespace": 1000,
        "retention.store.maxIdle": "90d",
    }
    store = find(helm.render(bounded), "RetentionPolicy")["spec"]["store"]
    assert store == {"maxItemsPerNamespace": 1000, "maxIdle": "90d"}
    assert custom["spec"]["dryRun"] is True and custom["spec"]["suspend"] is True


def test_uninstall_hook(helm: Helm) -> None:
    docs = helm.render(SCENARIOS["retention-custom"])
    hooks = [d for d in docs if d["metadata"]["name"] == f"{SERVICE}-uninstall"]
    assert sorted(d["kind"] for d in hooks) == ["Job", "Role", "RoleBinding", "ServiceAccount"]
    for doc in hooks:
        assert support.hook(doc) == "pre-delete"
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    # Only the one policy, and only what deleting it takes.
    assert find(hooks, "Role")["rules"] == [
        {
            "apiGroups": ["threadkeeper.dev"],
            "resources": ["retentionpolicies"],
            "resourceNames": ["nightly"],
            "verbs": ["get", "delete", "patch"],
        }
    ]
    job = find(hooks, "Job")
    (container,) = support.containers(job)
    assert container["args"] == [(support.CHART / "files/uninstall-policy.py").read_text()]
    env = support.env_of(container)
    assert env["POLICY"]["value"] == "nightly"
    assert env["FINALIZER_TIMEOUT"]["value"] == "60"
    assert support.pod_spec(job)["serviceAccountName"] == f"{SERVICE}-uninstall"
    off = helm.render({**BASE, "retention.uninstall.deletePolicy": False})
    assert not [d for d in off if d["metadata"]["name"].endswith("-uninstall")]


def test_monitoring_labels_and_rule(helm: Helm) -> None:
    docs = helm.render(SCENARIOS["monitoring"])
    for doc in docs:
        if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    reaper = find(docs, "ServiceMonitor", REAPER)
    assert reaper["spec"]["endpoints"][0]["port"] == "metrics"
    assert reaper["spec"]["endpoints"][0]["honorLabels"] is True
    service = find(docs, "ServiceMonitor", SERVICE)
    assert service["spec"]["endpoints"][0]["port"] == "http"
    rules = find(docs, "PrometheusRule")["spec"]["groups"]
    alerts = [r for g in rules for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == {
        "ThreadkeeperCheckpointTablesLarge",
        "ThreadkeeperCheckpointTablesGrowing",
        "ThreadkeeperStoreTablesLarge",
        "ThreadkeeperStoreTablesGrowing",
        "ThreadkeeperReaperStalled",
        "ThreadkeeperPruneFailing",
        "ThreadkeeperReaperDown",
        "ThreadkeeperServiceErrors",
        "ThreadkeeperRunsFailing",
    }
    for alert in alerts:
        assert alert["labels"]["team"] == "agents"
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys()
        assert alert["annotations"]["runbook_url"].endswith("#" + alert["alert"].lower())
    # Without the reaper only the service's alerts remain.
    groups = find(helm.render(SCENARIOS["reaper-off"]), "PrometheusRule")["spec"]["groups"]
    assert [g["name"] for g in groups] == ["threadkeeper-service"]


def test_helm_test_pod(helm: Helm) -> None:
    pod = find(helm.render(BASE), "Pod")
    assert support.hook(pod) == "test"
    (container,) = support.containers(pod)
    assert container["command"] == ["python", "-c"]
    assert container["args"] == [(support.CHART / "files/helm-test.py").read_text()]
    env = support.env_of(container)
    assert env["THREADKEEPER_URL"]["value"] == f"http://{SERVICE}.threadkeeper.svc:8000"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # `helm test --logs` (as the NOTES say) reads the pod after it succeeded: it must stay
    # until the next `helm test` replaces it (the node tier runs it for real).
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"


# --- values that must be refused ---------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**BASE, "service.replicas": "two"}, "at '/service/replicas': got string, want integer"),
        ({**BASE, "service.replicaz": 2}, "additional properties 'replicaz' not allowed"),
        ({**BASE, "monitoring.serviceMonitor.enabeld": True}, "'enabeld' not allowed"),
        ({**BASE, "auth.mode": "oauth"}, "/auth/mode"),
        ({**BASE, "retention.interval": "10 minutes"}, "/retention/interval"),
        ({**BASE, "alerts.tableBytesWarning": -1}, "/alerts/tableBytesWarning"),
        ({**BASE, "image.digest": "latest"}, "/image/digest"),
        ({**BASE, "monitoring.dashboard.label": "not a label"}, "/monitoring/dashboard/label"),
        ({**BASE, "monitoring.dashboard.labelValue": "a b"}, "/monitoring/dashboard/labelValue"),
        ({**BASE, "monitoring.dashboard.enable": True}, "'enable' not allowed"),
        ({**BASE, "service.config": 7}, "/service/config"),
        ({**BASE, "service.temporaryThreadSeconds": -1}, "/service/temporaryThreadSeconds"),
        ({**BASE, "service.temporaryThreadSeconds": "1m"}, "/service/temporaryThreadSeconds"),
    ],
)
def test_schema_rejects(helm: Helm, values: dict[str, Any], message: str) -> None:
    for proc in (helm.lint(values, check=False), helm.template(values, check=False)):
        assert proc.returncode != 0
        assert message in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "set database.existingSecret"),
        ({**BASE, "auth.mode": "jwt"}, "auth.mode=jwt needs"),
        (
            {**BASE, "auth.mode": "jwt", "auth.jwt.secret": "s", "auth.jwt.publicKey": "k"},
            "set only one of auth.jwt.secret",
        ),
        ({**BASE, "service.pool.minSize": 30}, "service.pool.minSize must not exceed"),
        ({**BASE, "service.terminationGracePeriodSeconds": 20}, "at least"),
        ({**BASE, "service.workers": 4}, "renamed service.concurrentRuns"),
        (
            {**BASE, "autoscaling.enabled": True, "service.resources.requests.cpu": None},
            "autoscaling.enabled needs",
        ),
        ({**BASE, "alerts.tableBytesWarning": 10**12}, "tableBytesWarning must not exceed"),
    ],
)
def test_template_refuses(helm: Helm, values: dict[str, Any], message: str) -> None:
    proc = helm.template(values, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_template_reports_every_problem_at_once(helm: Helm) -> None:
    """A values file with several broken rules names all of them in one failed render."""
    values = {"service.pool.minSize": 30, "alerts.tableBytesWarning": 10**12}
    proc = helm.template(values, check=False)
    assert proc.returncode != 0
    for message in (
        "set database.existingSecret",
        "service.pool.minSize must not exceed",
        "tableBytesWarning must not exceed",
    ):
        assert message in proc.stderr


def test_blob_cache_default_renders_as_a_whole_number(helm: Helm) -> None:
    """Helm reads big numbers as floats; the service must get digits, not 1.6777216e+07."""
    docs = helm.render(BASE)
    env = support.env_of(support.containers(find(docs, "Deployment", SERVICE))[0])
    default = yaml.safe_load((support.CHART / "values.yaml").read_text())["service"]
    assert env["THREADKEEPER_BLOB_CACHE_BYTES"]["value"] == str(default["blobCacheBytes"])
