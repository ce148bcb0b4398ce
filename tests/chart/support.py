"""Helpers of the chart tests: running helm and kubectl, rendering, value scenarios."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster.controlplane import Cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "threadkeeper"
RELEASE = "tk"
# Label of objects the tests created, which they may delete again.
TEST_LABEL = "threadkeeper.dev/chart-tests"
DB_URL = "postgresql://threadkeeper:s3cret@db.example.internal:5432/threadkeeper"
PUBLIC_KEY = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEexampleexampleexampleexampleexampleexample\n"
    "-----END PUBLIC KEY-----\n"
)

Manifest = dict[str, Any]


class CommandFailed(AssertionError):
    """A helm or kubectl command exited non-zero; the message has its output."""


def run(
    args: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        command = " ".join(str(a) for a in args)
        raise CommandFailed(
            f"`{command}` exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def set_args(values: Mapping[str, Any]) -> list[str]:
    """`--set-json key=value` for each dotted key: exact types, no comma-splitting."""
    return [f"--set-json={key}={json.dumps(value)}" for key, value in values.items()]


def documents(text: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(text) if d]


@dataclass(frozen=True)
class Helm:
    binary: Path

    def __call__(
        self, *args: str | Path, cluster: Cluster | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = cluster.env() if cluster is not None else dict(os.environ)
        # Keep helm's caches and config out of the developer's home.
        env.setdefault("HELM_CACHE_HOME", str(REPO / ".pytest_cache" / "helm" / "cache"))
        env.setdefault("HELM_CONFIG_HOME", str(REPO / ".pytest_cache" / "helm" / "config"))
        env.setdefault("HELM_DATA_HOME", str(REPO / ".pytest_cache" / "helm" / "data"))
        return run([self.binary, *args], env=env, check=check)

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        *extra: str,
        namespace: str = "threadkeeper",
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        return self(
            "template",
            RELEASE,
            CHART,
            f"--namespace={namespace}",
            *set_args(values or {}),
            *extra,
            check=check,
        )

    def render(
        self, values: Mapping[str, Any] | None = None, *extra: str, namespace: str = "threadkeeper"
    ) -> list[Manifest]:
        return documents(self.template(values, *extra, namespace=namespace).stdout)

    def lint(
        self, values: Mapping[str, Any] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self("lint", CHART, "--strict", *set_args(values or {}), check=check)


@dataclass(frozen=True)
class Kubectl:
    cluster: Cluster

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run([self.cluster.kubectl, *args], env=self.cluster.env(), stdin=stdin, check=check)


def find(docs: Sequence[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(docs: Sequence[Manifest]) -> list[str]:
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def hook(doc: Manifest) -> str | None:
    annotations = doc["metadata"].get("annotations") or {}
    value = annotations.get("helm.sh/hook")
    return str(value) if value is not None else None


def containers(doc: Manifest) -> list[dict[str, Any]]:
    spec = doc["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec
    result: list[dict[str, Any]] = pod["containers"]
    return result


def pod_spec(doc: Manifest) -> dict[str, Any]:
    spec = doc["spec"]
    result: dict[str, Any] = spec["template"]["spec"] if "template" in spec else spec
    return result


def env_of(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# Value scenarios: defaults (plus the one required value) and every switch on.
BASE: dict[str, Any] = {"database.url": DB_URL}
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": BASE,
    "ingress": {
        **BASE,
        "ingress.enabled": True,
        "ingress.className": "nginx",
        "ingress.tls": [{"secretName": "tk-tls", "hosts": ["threadkeeper.example.com"]}],
    },
    "hpa": {**BASE, "autoscaling.enabled": True, "autoscaling.maxReplicas": 6},
    "pdb-off": {**BASE, "podDisruptionBudget.enabled": False},
    "monitoring": {
        **BASE,
        "monitoring.serviceMonitor.enabled": True,
        "monitoring.prometheusRule.enabled": True,
        "monitoring.dashboard.enabled": True,
        "monitoring.labels": {"release": "kube-prometheus-stack"},
        "alerts.labels": {"team": "agents"},
    },
    "jwt-public-key": {
        **BASE,
        "auth.mode": "jwt",
        "auth.jwt.publicKey": PUBLIC_KEY,
        "auth.jwt.audience": "threadkeeper",
        "auth.jwt.issuer": "https://issuer.example.com/",
    },
    "jwt-existing-secret": {
        **BASE,
        "auth.mode": "jwt",
        "auth.jwt.existingSecret": "tk-jwt",
    },
    "header": {**BASE, "auth.mode": "header", "auth.header": "X-Auth-Request-User"},
    "existing-secret": {"database.existingSecret": "tk-db", "database.existingSecretKey": "dsn"},
    "crds-off": {**BASE, "crds.create": False},
    "retention-custom": {
        **BASE,
        "retention.name": "nightly",
        "retention.interval": "1h",
        "retention.threads.maxIdle": "",
        "retention.orphans.olderThan": "",
        "retention.checkpoints.maxAge": "",
        "retention.dryRun": True,
        "retention.suspend": True,
    },
    "retention-off": {**BASE, "retention.enabled": False},
    "reaper-off": {**BASE, "reaper.enabled": False, "monitoring.prometheusRule.enabled": True},
    "migrations-off": {**BASE, "migrations.enabled": False},
    "everything": {
        **BASE,
        "ingress.enabled": True,
        "autoscaling.enabled": True,
        "monitoring.serviceMonitor.enabled": True,
        "monitoring.prometheusRule.enabled": True,
        "monitoring.dashboard.enabled": True,
        "auth.mode": "jwt",
        "auth.jwt.secret": "an-hs256-secret",
        "service.extraEnv": [
            {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ai", "key": "k"}}}
        ],
        "service.tolerations": [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
        "service.affinity": {"nodeAffinity": {}},
        "imagePullSecrets": ["registry"],
        "image.digest": "sha256:" + "a" * 64,
    },
}


@dataclass
class JobCompleter:
    """Stands in for kubelet and the Job controller: marks every new Job of a namespace done.

    The test control plane runs no pods, so Helm's hook Jobs (the migration) would never
    finish. This watches the namespace's Jobs and writes the status a successful run would
    leave, so `helm install/upgrade` with hooks can be tested end to end.
    """

    cluster: Cluster
    namespace: str
    # Jobs to really run (by name): a function that runs the Job's container and returns its
    # exit code; the Job then succeeds or fails accordingly. Others just succeed.
    runners: Mapping[str, Callable[[Manifest], int]] = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: threading.Event = field(default_factory=threading.Event)

    def _loop(self) -> None:
        try:
            with self.cluster.api_client() as api:
                batch = client.BatchV1Api(api)
                listed = api.sanitize_for_serialization(batch.list_namespaced_job(self.namespace))
                version = listed["metadata"]["resourceVersion"]
                self._started.set()
                while not self._stop.is_set():
                    # Short server-side timeouts let the loop notice `stop()`.
                    for event in watch_events(
                        batch.list_namespaced_job,
                        self.namespace,
                        resource_version=version,
                        timeout_seconds=1,
                    ):
                        job: Manifest = api.sanitize_for_serialization(event["object"])
                        version = job["metadata"]["resourceVersion"]
                        status = job.get("status") or {}
                        if (
                            event["type"] != "ADDED"
                            or status.get("succeeded")
                            or status.get("failed")
                        ):
                            continue
                        name = job["metadata"]["name"]
                        runner = self.runners.get(name)
                        try:
                            code = runner(job) if runner is not None else 0
                        except Exception as exc:
                            # Fail the Job now rather than leave Helm waiting for it.
                            self.errors.append(exc)
                            code = -1
                        self._finish(batch, name, succeeded=code == 0)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)
            self._started.set()

    def _finish(self, batch: client.BatchV1Api, name: str, *, succeeded: bool) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def condition(kind: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": "True",
                "lastTransitionTime": now,
                "lastProbeTime": now,
            }

        if succeeded:
            status: dict[str, Any] = {
                "startTime": now,
                "completionTime": now,
                "succeeded": 1,
                "conditions": [condition("SuccessCriteriaMet"), condition("Complete")],
            }
        else:
            failure = {"reason": "BackoffLimitExceeded", "message": "the container failed"}
            status = {
                "startTime": now,
                "failed": 1,
                "conditions": [
                    {**condition("FailureTarget"), **failure},
                    {**condition("Failed"), **failure},
                ],
            }
        body = {"status": status}
        try:
            batch.patch_namespaced_job_status(name, self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:  # Helm may delete it meanwhile
                raise
            return
        (self.completed if succeeded else self.failed).append(name)

    @contextlib.contextmanager
    def running(self) -> Iterator[JobCompleter]:
        thread = threading.Thread(target=self._loop, name="job-completer", daemon=True)
        thread.start()
        self._started.wait(timeout=30)
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)
            assert not thread.is_alive(), "the job completer did not stop"
        if self.errors:
            raise self.errors[0]


def watch_events(
    list_call: Callable[..., Any], *args: Any, **kwargs: Any
) -> Iterator[dict[str, Any]]:
    """kubernetes' `Watch().stream(...)`: typed, and bounded by the caller's timeout_seconds."""
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    events: Iterator[dict[str, Any]] = stream.stream(list_call, *args, **kwargs)  # type: ignore[no-untyped-call]
    return events


def run_job_locally(cluster: Cluster, job: Manifest, log: list[str]) -> int:
    """Run a Job's `python -c` container here, as its ServiceAccount, like kubelet would.

    The container sees what a pod would: KUBERNETES_SERVICE_HOST/PORT, a ServiceAccount token
    and CA in a directory (SERVICEACCOUNT_DIR instead of the fixed in-pod path), and its env
    with `fieldRef: metadata.namespace` resolved.
    """
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-c"], container["command"]
    namespace: str = job["metadata"]["namespace"]
    identity = cluster.as_service_account(namespace, pod["serviceAccountName"], method="token")
    kubeconfig = yaml.safe_load(identity.read_text())
    entry = kubeconfig["clusters"][0]["cluster"]
    server = urlsplit(entry["server"])
    with tempfile.TemporaryDirectory(prefix="sa-") as sa_dir:
        Path(sa_dir, "token").write_text(kubeconfig["users"][0]["user"]["token"])
        Path(sa_dir, "ca.crt").write_bytes(base64.b64decode(entry["certificate-authority-data"]))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "KUBERNETES_SERVICE_HOST": server.hostname or "",
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
            "SERVICEACCOUNT_DIR": sa_dir,
        }
        for var in container.get("env", []):
            if "valueFrom" in var:
                field_path = var["valueFrom"].get("fieldRef", {}).get("fieldPath")
                assert field_path == "metadata.namespace", var
                env[var["name"]] = namespace
            else:
                env[var["name"]] = var.get("value", "")
        out = subprocess.run(
            [sys.executable, "-c", *container["args"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    log.append(out.stdout + out.stderr)
    return out.returncode
