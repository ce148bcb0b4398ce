"""The chart against a real kube-apiserver (tests/cluster): schemas, install, upgrade, RBAC.

There is no kubelet, so pods never run. Two stand-ins make the lifecycle testable anyway:
every rendered object goes through the API server's own validation with a server-side dry
run, and `JobCompleter` marks Helm's hook Jobs (the migration) as succeeded, so `helm install`
and `helm upgrade` run with their hooks exactly as on a real cluster: the hook Secret, the
migration Job, then the release's objects, then the RetentionPolicy hook.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.chart import support
from tests.chart.support import SCENARIOS, Helm, JobCompleter, Kubectl
from tests.cluster.controlplane import Cluster

pytestmark = pytest.mark.cluster

SERVICE = "tk-threadkeeper"
REAPER = "tk-threadkeeper-reaper"
CRD = "retentionpolicies.threadkeeper.dev"
GROUP, VERSION, PLURAL = "threadkeeper.dev", "v1alpha1", "retentionpolicies"
MONITORING = {
    "monitoring.serviceMonitor.enabled": True,
    "monitoring.prometheusRule.enabled": True,
    "monitoring.dashboard.enabled": True,
    "monitoring.labels": {"release": "kube-prometheus-stack"},
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_server_side_dry_run(
    helm: Helm, cluster_crds: Cluster, namespace: str, scenario: str
) -> None:
    """Every object of every scenario passes the API server's validation (schemas, CEL)."""
    rendered = helm.template(SCENARIOS[scenario], namespace=namespace).stdout
    docs = support.documents(rendered)
    out = Kubectl(cluster_crds).run(
        "apply",
        "--dry-run=server",
        "--server-side",
        # A dry run: take over fields kubectl applied (the CRD fixture) without a conflict.
        "--force-conflicts",
        "--field-manager=helm",
        "-f",
        "-",
        stdin=rendered,
    )
    # One line per object: nothing was skipped.
    assert len(out.stdout.strip().splitlines()) == len(docs), out.stdout


def test_dev_postgres_manifests(cluster_crds: Cluster, namespace: str) -> None:
    manifest = support.REPO / "deploy/dev/postgres.yaml"
    out = Kubectl(cluster_crds).run(
        "apply", "--dry-run=server", f"--namespace={namespace}", "-f", str(manifest)
    )
    assert len(out.stdout.strip().splitlines()) == 3


def _custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def _dict(value: object) -> dict[str, Any]:
    """A custom-objects API answer (typed `object` by the client) or a model, as a dict."""
    if not isinstance(value, dict):
        value = client.ApiClient().sanitize_for_serialization(value)  # type: ignore[no-untyped-call]
    assert isinstance(value, dict)
    return value


def _prepare_crd(kube: Cluster) -> bool:
    """Whether the release should create the RetentionPolicy CRD (crds.create).

    A CRD the tests made (the dry-run fixture, or an earlier test release) is deleted, so the
    release creates and owns it, as on a fresh cluster. A CRD someone else made (an external
    KUBECONFIG cluster) is left alone, and the release then runs with crds.create=false.
    """
    with kube.api_client() as api:
        extensions = client.ApiextensionsV1Api(api)
        try:
            crd = _dict(extensions.read_custom_resource_definition(CRD))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return True
    meta = crd["metadata"]
    ours = (meta.get("labels") or {}).get(support.TEST_LABEL) == "true" or (
        (meta.get("annotations") or {}).get("meta.helm.sh/release-namespace", "")
    ).startswith("chart-")
    if not ours:
        return False
    Kubectl(kube).run("delete", f"crd/{CRD}", "--ignore-not-found", "--wait=true", "--timeout=60s")
    return True


@pytest.fixture
def installed(
    helm: Helm, kube: Cluster, monitoring_crd_files: list[Path], namespace: str
) -> Iterator[str]:
    """`helm install` with hooks and monitoring on; uninstalled afterwards."""
    kubectl = Kubectl(kube)
    kubectl.run(
        "apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in monitoring_crd_files)
    )
    create_crd = _prepare_crd(kube)
    # No reaper runs here: the uninstall hook removes kopf's finalizer itself after 2 s.
    values = {
        **support.BASE,
        **MONITORING,
        "retention.uninstall.finalizerTimeoutSeconds": 2,
        "crds.create": create_crd,
    }
    completer = JobCompleter(kube, namespace)
    with completer.running():
        out = helm(
            "install",
            support.RELEASE,
            support.CHART,
            f"--namespace={namespace}",
            "--timeout=60s",
            *support.set_args(values),
            cluster=kube,
        )
    assert completer.completed == [f"{SERVICE}-migrate"]
    notes = out.stdout.split("NOTES:", 1)[1]
    assert f"kubectl -n {namespace} rollout status deployment/{SERVICE}" in notes
    assert f"helm test {support.RELEASE} -n {namespace}" in notes
    assert f"kubectl -n {namespace} delete retentionpolicies --all" in notes
    assert "ServiceMonitors and alerts are installed with labels" in notes
    assert f'ConfigMap {namespace}/{SERVICE}-dashboard, labelled grafana_dashboard="1"' in notes
    try:
        yield namespace
    finally:
        # Tests that uninstall do it with hooks; this only cleans up after the others.
        helm(
            "uninstall",
            support.RELEASE,
            f"--namespace={namespace}",
            "--no-hooks",
            "--ignore-not-found",
            cluster=kube,
            check=False,
        )


def _uninstall(helm: Helm, kube: Cluster, namespace: str) -> list[str]:
    """`helm uninstall` with hooks; the pre-delete Job's script really runs. Returns its log."""
    log: list[str] = []
    completer = JobCompleter(
        kube,
        namespace,
        runners={f"{SERVICE}-uninstall": lambda job: support.run_job_locally(kube, job, log)},
    )
    with completer.running():
        helm(
            "uninstall",
            support.RELEASE,
            f"--namespace={namespace}",
            "--wait",
            "--timeout=60s",
            cluster=kube,
        )
    assert completer.completed == [f"{SERVICE}-uninstall"], log
    return log


def _add_kopf_finalizer(kube: Cluster, namespace: str) -> None:
    with kube.api_client() as api:
        _custom(api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            SERVICE,
            {"metadata": {"finalizers": ["kopf.zalando.org/KopfFinalizerMarker"]}},
        )


def test_install_upgrade_uninstall(helm: Helm, kube: Cluster, installed: str) -> None:
    namespace = installed
    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        # The release's objects exist, monitoring included.
        client.AppsV1Api(api).read_namespaced_deployment(SERVICE, namespace)
        client.AppsV1Api(api).read_namespaced_deployment(REAPER, namespace)
        for plural in ("servicemonitors", "prometheusrules"):
            found = _dict(
                _custom(api).list_namespaced_custom_object(
                    "monitoring.coreos.com", "v1", namespace, plural
                )
            )
            assert len(found["items"]) == (2 if plural == "servicemonitors" else 1)
        # The migration hook ran and cleaned up after itself: no Job, no hook Secret; the
        # uninstall hook's objects do not exist before an uninstall.
        listed = _dict(core.list_namespaced_secret(namespace))
        secrets = {s["metadata"]["name"] for s in listed["items"]}
        assert f"{SERVICE}-database" in secrets
        assert f"{SERVICE}-migrate" not in secrets
        assert not client.BatchV1Api(api).list_namespaced_job(namespace).items
        # The post-install hook created the policy in the same release as its CRD.
        policy = _dict(
            _custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, SERVICE)
        )
        assert policy["spec"]["schedule"] == {"interval": "10m"}
        # Defaults from the CRD's structural schema are applied by the API server.
        assert policy["spec"]["database"]["secretRef"] == {
            "name": f"{SERVICE}-database",
            "key": "url",
        }

    completer = JobCompleter(kube, namespace)
    with completer.running():
        helm(
            "upgrade",
            support.RELEASE,
            support.CHART,
            f"--namespace={namespace}",
            "--reuse-values",
            "--timeout=60s",
            *support.set_args(
                {
                    "retention.interval": "15m",
                    "retention.dryRun": True,
                    "autoscaling.enabled": True,
                    "ingress.enabled": True,
                    "service.model": "openai:gpt-4o-mini",
                }
            ),
            cluster=kube,
        )
    assert completer.completed == [f"{SERVICE}-migrate"], "the upgrade migrates first"
    with kube.api_client() as api:
        policy = _dict(
            _custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, SERVICE)
        )
        assert policy["spec"]["schedule"] == {"interval": "15m"}
        assert policy["spec"]["dryRun"] is True
        client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(SERVICE, namespace)
        client.NetworkingV1Api(api).read_namespaced_ingress(SERVICE, namespace)
        deployment = _dict(client.AppsV1Api(api).read_namespaced_deployment(SERVICE, namespace))
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["THREADKEEPER_MODEL"] == "openai:gpt-4o-mini"
        rules = _dict(
            _custom(api).get_namespaced_custom_object(
                "monitoring.coreos.com", "v1", namespace, "prometheusrules", SERVICE
            )
        )
        stalled = next(
            r
            for g in rules["spec"]["groups"]
            for r in g["rules"]
            if r.get("alert") == "ThreadkeeperReaperStalled"
        )
        assert str(stalled["expr"]).endswith("> 3 * 900"), "the alert follows the new interval"
    status = helm("status", support.RELEASE, f"--namespace={namespace}", "-o", "json", cluster=kube)
    assert '"version":2' in status.stdout.replace(" ", "")

    # As the reaper would have, while nothing runs to remove it again.
    _add_kopf_finalizer(kube, namespace)
    log = _uninstall(helm, kube, namespace)
    assert "removing its finalizers" in log[0]
    with kube.api_client() as api:
        # The CRD stays (resource-policy keep); everything else is gone, the hook-created
        # policy included (the pre-delete hook deleted it), and the hook's own objects too.
        client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
        reads: list[Callable[[], object]] = [
            lambda: client.AppsV1Api(api).read_namespaced_deployment(SERVICE, namespace),
            lambda: _custom(api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, SERVICE
            ),
            lambda: client.CoreV1Api(api).read_namespaced_service_account(
                f"{SERVICE}-uninstall", namespace
            ),
            lambda: client.RbacAuthorizationV1Api(api).read_namespaced_role(
                f"{SERVICE}-uninstall", namespace
            ),
            lambda: client.BatchV1Api(api).read_namespaced_job(f"{SERVICE}-uninstall", namespace),
        ]
        for read in reads:
            with pytest.raises(ApiException) as gone:
                read()
            assert gone.value.status == 404


@contextlib.contextmanager
def _fake_reaper(kube: Cluster, namespace: str) -> Iterator[list[str]]:
    """Releases kopf's finalizer of a policy being deleted, as the running reaper does."""
    released: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            with kube.api_client() as api:
                custom = _custom(api)
                while not stop.is_set():
                    for event in support.watch_events(
                        custom.list_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        timeout_seconds=1,
                    ):
                        meta = event["object"]["metadata"]
                        if not (meta.get("deletionTimestamp") and meta.get("finalizers")):
                            continue
                        try:
                            custom.patch_namespaced_custom_object(
                                GROUP,
                                VERSION,
                                namespace,
                                PLURAL,
                                meta["name"],
                                {"metadata": {"finalizers": None}},
                            )
                        except ApiException as exc:
                            if exc.status != 404:  # a stale event of one already released
                                raise
                            continue
                        released.append(meta["name"])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=loop, name="fake-reaper", daemon=True)
    thread.start()
    try:
        yield released
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors


def test_uninstall_lets_the_reaper_release_the_policy(
    helm: Helm, kube: Cluster, installed: str
) -> None:
    _add_kopf_finalizer(kube, installed)
    with _fake_reaper(kube, installed) as released:
        log = _uninstall(helm, kube, installed)
    assert released == [SERVICE]
    assert "removing its finalizers" not in log[0] and "gone" in log[0]


def _event(namespace: str) -> dict[str, Any]:
    return {
        "metadata": {"generateName": "rp-", "namespace": namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RetentionPolicy",
            "name": SERVICE,
            "namespace": namespace,
        },
        "reason": "PruneSucceeded",
        "message": "pruned",
        "type": "Normal",
    }


def _forbidden(call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(ApiException) as denied:
        call(*args, **kwargs)
    assert denied.value.status == 403, denied.value


def test_reaper_service_account_can_do_its_job_and_no_more(kube: Cluster, installed: str) -> None:
    """The API calls the operator makes, as the chart's ServiceAccount: allowed; others not.

    (The full check, the operator itself pruning against this control plane, follows when
    `threadkeeper-reaper run` exists.)
    """
    namespace = installed
    kubeconfig = kube.as_service_account(namespace, REAPER)
    with kube.api_client(kubeconfig) as api:
        custom, core = _custom(api), client.CoreV1Api(api)
        # kopf: list + watch the policies of its namespace.
        listed = _dict(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
        assert [p["metadata"]["name"] for p in listed["items"]] == [SERVICE]
        # A bounded watch: the server ends it after a second, having sent the ADDED event.
        events = list(
            support.watch_events(
                custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                timeout_seconds=1,
            )
        )
        assert [e["type"] for e in events] == ["ADDED"]
        # kopf: finalizer and progress annotations on the object, results on /status.
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            SERVICE,
            {"metadata": {"finalizers": ["kopf.zalando.org/KopfFinalizerMarker"]}},
        )
        status = {
            "status": {
                "lastRunTime": "2026-01-01T00:00:00Z",
                "lastRun": {"outcome": "Succeeded", "dryRun": False},
            }
        }
        patched = _dict(
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, SERVICE, status
            )
        )
        assert patched["status"]["lastRun"]["outcome"] == "Succeeded"
        custom.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, SERVICE)
        # Events, through both APIs.
        # (The client takes plain dicts as bodies; its stubs only name the model classes.)
        core.create_namespaced_event(namespace, cast(Any, _event(namespace)))
        client.EventsV1Api(api).create_namespaced_event(
            namespace,
            cast(
                Any,
                {
                    "metadata": {"generateName": "rp-"},
                    # MicroTime: the client sends datetimes with isoformat(), which
                    # needs non-zero microseconds to carry the 6 digits the server insists on.
                    "eventTime": dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC),
                    "reportingController": "threadkeeper.dev/reaper",
                    "reportingInstance": "reaper-0",
                    "action": "Prune",
                    "reason": "PruneSucceeded",
                    "type": "Normal",
                    "regarding": _event(namespace)["involvedObject"],
                },
            ),
        )
        # The database Secret the policy names.
        secret = _dict(core.read_namespaced_secret(f"{SERVICE}-database", namespace))
        assert secret["data"]["url"]

        # ...and nothing else.
        _forbidden(core.list_namespaced_secret, namespace)
        _forbidden(core.list_secret_for_all_namespaces)
        _forbidden(core.delete_namespaced_secret, f"{SERVICE}-database", namespace)
        _forbidden(core.read_namespaced_secret, "sh.helm.release.v1.tk.v1", namespace)
        _forbidden(
            custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, SERVICE
        )
        _forbidden(custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, {})
        _forbidden(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        _forbidden(core.list_namespaced_pod, namespace)
        _forbidden(client.AppsV1Api(api).list_namespaced_deployment, namespace)
        _forbidden(
            custom.list_namespaced_custom_object, "kopf.dev", "v1", namespace, "kopfpeerings"
        )

    # Release the finalizer this test added, as kopf would.
    with kube.api_client() as api:
        _custom(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, SERVICE, {"metadata": {"finalizers": None}}
        )


def test_grafanas_sidecar_finds_the_dashboard(kube: Cluster, installed: str) -> None:
    """The query kube-prometheus-stack's sidecar makes (label, all namespaces) finds it."""
    out = Kubectl(kube).run(
        "get", "configmaps", "--all-namespaces", "-l", "grafana_dashboard=1", "-o", "json"
    )
    found = [
        item
        for item in json.loads(out.stdout)["items"]
        if item["metadata"]["namespace"] == installed
    ]
    assert [item["metadata"]["name"] for item in found] == [f"{SERVICE}-dashboard"]
    (text,) = found[0]["data"].values()
    assert json.loads(text)["panels"]


def test_service_account_of_the_service_has_no_rights(kube: Cluster, installed: str) -> None:
    kubeconfig = kube.as_service_account(installed, SERVICE)
    with kube.api_client(kubeconfig) as api:
        _forbidden(client.CoreV1Api(api).read_namespaced_secret, f"{SERVICE}-database", installed)
        _forbidden(_custom(api).list_namespaced_custom_object, GROUP, VERSION, installed, PLURAL)


def test_crd_fixture_matches(cluster_crds: Cluster) -> None:
    """The RetentionPolicy CRD on the server is the one in deploy/crds."""
    source = yaml.safe_load((support.REPO / "deploy/crds" / f"{CRD}.yaml").read_text())
    with cluster_crds.api_client() as api:
        served = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD)
    assert served.spec.group == source["spec"]["group"]
    assert [v.name for v in served.spec.versions] == [v["name"] for v in source["spec"]["versions"]]


def test_the_reaper_prunes_as_the_charts_service_account(
    helm: Helm, kube: Cluster, namespace: str, database_url: str, tmp_path: Path
) -> None:
    """The operator, outside the cluster, with the token of the ServiceAccount the chart made.

    Whatever the chart's Role lacks, this run would hit as a 403; it must complete a prune.
    """
    import os
    import subprocess
    import sys
    import time

    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO threads (thread_id, owner, last_message_at) "
            "VALUES (gen_random_uuid(), 'old', now() - interval '90 days')"
        )
    values = {
        "database.url": database_url,
        "retention.interval": "1h",
        "crds.create": _prepare_crd(kube),
    }
    with JobCompleter(kube, namespace).running():
        helm(
            "install",
            support.RELEASE,
            support.CHART,
            f"--namespace={namespace}",
            "--timeout=60s",
            *support.set_args(values),
            cluster=kube,
        )
    kubeconfig = kube.as_service_account(namespace, REAPER, method="token")
    log_path = tmp_path / "reaper.log"
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "POD_NAMESPACE")}
    with log_path.open("wb") as log:
        reaper = subprocess.Popen(
            [sys.executable, "-m", "threadkeeper.reaper.cli", "run", "--namespace", namespace,
             "--kubeconfig", str(kubeconfig), "--metrics-port", "0", "--liveness-port", "0",
             "--tick-interval", "0.5"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        with kube.api_client() as api:
            custom = _custom(api)
            deadline = time.monotonic() + 90
            last_run: dict[str, Any] = {}
            while time.monotonic() < deadline:
                policies = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
                items = policies["items"]
                last_run = (items[0].get("status") or {}).get("lastRun") or {} if items else {}
                if last_run:
                    break
                assert reaper.poll() is None, log_path.read_text()[-4000:]
                time.sleep(0.2)
        assert last_run.get("outcome") == "Succeeded", (last_run, log_path.read_text()[-4000:])
        assert last_run["threadsDeleted"]["total"] >= 1
        with psycopg.connect(database_url) as conn:
            left = conn.execute("SELECT count(*) FROM threads WHERE owner = 'old'").fetchone()
        assert left == (0,)
        assert "forbidden" not in log_path.read_text().lower()
    finally:
        reaper.terminate()
        try:
            reaper.wait(15)
        except subprocess.TimeoutExpired:
            reaper.kill()
        helm("uninstall", support.RELEASE, f"--namespace={namespace}", "--no-hooks",
             cluster=kube, check=False)  # fmt: skip


def test_a_second_release_leaves_the_first_ones_crd_alone(
    helm: Helm, kube: Cluster, namespace: str
) -> None:
    """Two teams install threadkeeper in their own namespaces, both with the default crds.create.

    The CRD is cluster-wide and Helm refuses to adopt an object another release owns: the second
    release must see the first's CRD and leave it out, not fail; the first still upgrades it.
    """
    if not _prepare_crd(kube):
        if os.environ.get("KUBECONFIG"):
            pytest.skip("the cluster's RetentionPolicy CRD is managed outside these tests")
        # The tests' own control plane: whatever made the CRD (another test file's fixture) made
        # it for a test, and its next test applies it again.
        Kubectl(kube).run("delete", f"crd/{CRD}", "--wait=true", "--timeout=60s")
    second_ns = f"{namespace}-b"
    kubectl = Kubectl(kube)
    kubectl.run("create", "namespace", second_ns)
    # Hooks off: this is about which objects each release owns, not about the migration Job.
    values = {**support.BASE, "retention.enabled": False}
    releases = [(support.RELEASE, namespace), ("tk2", second_ns)]
    try:
        for release, ns in releases:
            helm("install", release, support.CHART, f"--namespace={ns}", "--no-hooks",
                 *support.set_args(values), cluster=kube)  # fmt: skip
        with kube.api_client() as api:
            crd = _dict(client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD))
        annotations = crd["metadata"]["annotations"]
        assert annotations["meta.helm.sh/release-name"] == support.RELEASE
        assert annotations["meta.helm.sh/release-namespace"] == namespace
        second = helm("get", "manifest", "tk2", f"--namespace={second_ns}", cluster=kube).stdout
        assert "kind: CustomResourceDefinition" not in second
        assert "kind: Deployment" in second
        first = helm(
            "upgrade", support.RELEASE, support.CHART, f"--namespace={namespace}", "--no-hooks",
            *support.set_args(values), cluster=kube,
        ).stdout  # fmt: skip
        assert "STATUS: deployed" in first
        manifest = helm("get", "manifest", support.RELEASE, f"--namespace={namespace}",
                        cluster=kube).stdout  # fmt: skip
        assert "kind: CustomResourceDefinition" in manifest
    finally:
        for release, ns in releases:
            helm("uninstall", release, f"--namespace={ns}", "--no-hooks", "--ignore-not-found",
                 cluster=kube, check=False)  # fmt: skip
        kubectl.run("delete", "namespace", second_ns, "--wait=false", check=False)
        kubectl.run("delete", f"crd/{CRD}", "--ignore-not-found", "--wait=false", check=False)
