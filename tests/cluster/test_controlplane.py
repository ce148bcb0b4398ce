"""The local control plane of tests/cluster is a real, RBAC-enforcing Kubernetes API."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiClient, ApiException

from tests.cluster import Binaries, Cluster, ControlPlane, ensure_binaries, pki
from tests.cluster.proc import alive, port_refuses

pytestmark = pytest.mark.cluster

WARM_START_LIMIT_S = 20.0


def _eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Retry `check` until it stops raising; RBAC and CRD serving lag writes slightly."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def admin(kube: Cluster) -> Iterator[ApiClient]:
    with kube.api_client() as api:
        yield api


def test_control_plane_answers_readyz_and_leaves_nothing_behind(
    cluster_binaries: Binaries,
) -> None:
    plane = ControlPlane.start(cluster_binaries)
    try:
        pids = plane.pids()
        ports = plane.ports()
        state_dir = plane.state_dir
        assert set(pids) == {"etcd", "kube-apiserver"}
        assert all(alive(pid) for pid in pids.values())
        assert plane.server == f"https://127.0.0.1:{ports['kube-apiserver']}"

        result = subprocess.run(
            [str(plane.kubectl), "--kubeconfig", str(plane.kubeconfig), "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"
    finally:
        plane.stop()

    assert not any(alive(pid) for pid in pids.values()), pids
    refused = {name: port_refuses(port) for name, port in ports.items()}
    assert all(refused.values()), refused
    assert not state_dir.exists()


def _widget_crd(plural: str, kind: str, group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["replicas"],
                                    "properties": {"replicas": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_schema_rejects_invalid_object(kube: Cluster, admin: ApiClient) -> None:
    suffix = uuid.uuid4().hex[:8]
    group = "tests.threadkeeper.dev"
    plural = f"widgets{suffix}"
    kind = f"Widget{suffix.upper()}"
    extensions = client.ApiextensionsV1Api(admin)
    custom = client.CustomObjectsApi(admin)
    # The client accepts plain dicts; its annotations only name the model classes.
    crd: Any = _widget_crd(plural, kind, group)
    extensions.create_custom_resource_definition(crd)
    try:

        def established() -> None:
            status = extensions.read_custom_resource_definition(f"{plural}.{group}").status
            conditions = {c.type: c.status for c in (status and status.conditions) or []}
            assert conditions.get("Established") == "True", conditions

        _eventually(established)

        def widget(name: str, replicas: int) -> dict[str, Any]:
            return {
                "apiVersion": f"{group}/v1",
                "kind": kind,
                "metadata": {"name": name},
                "spec": {"replicas": replicas},
            }

        created = _eventually(
            lambda: custom.create_namespaced_custom_object(
                group, "v1", "default", plural, widget("good", 1)
            )
        )
        assert created["spec"]["replicas"] == 1

        with pytest.raises(ApiException) as rejected:
            custom.create_namespaced_custom_object(group, "v1", "default", plural, widget("bad", 0))
        assert rejected.value.status == 422
        body = rejected.value.body or ""
        assert '"reason":"Invalid"' in body.replace(" ", "")
        assert "spec.replicas" in body
        assert "greater than or equal to 1" in body
    finally:
        extensions.delete_custom_resource_definition(f"{plural}.{group}")


@pytest.mark.parametrize("method", ["auto", "token"])
def test_rbac_forbids_until_a_rolebinding_allows(
    kube: Cluster, admin: ApiClient, method: str
) -> None:
    core = client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    namespace = f"rbac-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        kubeconfig = kube.as_service_account(namespace, "reader", method=method)  # type: ignore[arg-type]
        with kube.api_client(kubeconfig) as as_reader:
            reader = client.CoreV1Api(as_reader)
            with pytest.raises(ApiException) as forbidden:
                reader.list_namespaced_config_map(namespace)
            assert forbidden.value.status == 403
            assert f"system:serviceaccount:{namespace}:reader" in (forbidden.value.body or "")

            rbac.create_namespaced_role(
                namespace,
                client.V1Role(
                    metadata=client.V1ObjectMeta(name="read-configmaps"),
                    rules=[
                        client.V1PolicyRule(
                            api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                        )
                    ],
                ),
            )
            rbac.create_namespaced_role_binding(
                namespace,
                client.V1RoleBinding(
                    metadata=client.V1ObjectMeta(name="reader-reads-configmaps"),
                    role_ref=client.V1RoleRef(
                        api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
                    ),
                    subjects=[
                        client.RbacV1Subject(
                            kind="ServiceAccount", name="reader", namespace=namespace
                        )
                    ],
                ),
            )
            listed = _eventually(lambda: reader.list_namespaced_config_map(namespace))
            assert listed.items is not None

            # The grant is namespaced: the same identity is still refused elsewhere.
            with pytest.raises(ApiException) as elsewhere:
                reader.list_namespaced_config_map("default")
            assert elsewhere.value.status == 403
    finally:
        core.delete_namespace(namespace)


def test_the_aggregation_layer_publishes_its_front_proxy(kube: Cluster, admin: ApiClient) -> None:
    """Extension API servers (metrics-server) read whom to trust for user headers here."""
    if not isinstance(kube, ControlPlane):
        pytest.skip("the front proxy's CA is known only for a plane started here")
    core = client.CoreV1Api(admin)
    info = _eventually(
        lambda: core.read_namespaced_config_map("extension-apiserver-authentication", "kube-system")
    )
    data = info.data
    front_proxy_ca = (kube.state_dir / "pki" / "front-proxy-ca.crt").read_text()
    assert data["requestheader-client-ca-file"].strip() == front_proxy_ca.strip()
    # Its own CA, not the cluster's: a cluster client certificate cannot claim users by header.
    assert front_proxy_ca.strip() not in data["client-ca-file"]
    assert json.loads(data["requestheader-allowed-names"]) == [pki.FRONT_PROXY_CLIENT]
    assert json.loads(data["requestheader-username-headers"]) == ["X-Remote-User"]
    assert json.loads(data["requestheader-group-headers"]) == ["X-Remote-Group"]
    assert json.loads(data["requestheader-extra-headers-prefix"]) == ["X-Remote-Extra-"]


def test_two_warm_starts_each_take_under_20s(cluster_binaries: Binaries) -> None:
    durations: list[float] = []
    for _ in range(2):
        started = time.monotonic()
        # Part of a warm start: finding the cached binaries must not rebuild anything.
        binaries = ensure_binaries()
        assert binaries == cluster_binaries
        plane = ControlPlane.start(binaries)
        try:
            durations.append(time.monotonic() - started)
        finally:
            plane.stop()
    assert all(d < WARM_START_LIMIT_S for d in durations), durations
