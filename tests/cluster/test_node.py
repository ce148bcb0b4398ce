"""A one-node cluster from tests/cluster runs pods, Services and DNS, and `stop()` undoes it.

The `node`-marked tests share one `kube_node` cluster (run them with `pytest -m node
tests/cluster`, as root). The bring-up failure tests are not marked: they change nothing
on the host and take milliseconds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import build, host, node
from tests.cluster.errors import ClusterError
from tests.cluster.host import HostState, NodeNetwork, host_state
from tests.cluster.image import ImageRef
from tests.cluster.node import BUSYBOX_IMAGE, NODE_NAME, NodeCluster, NodePorts, preflight
from tests.cluster.pods import (
    WAIT,
    apply,
    deployment_manifest,
    kubectl,
    pod_manifest,
    run_pod,
    run_to_completion,
)
from tests.cluster.proc import alive


@pytest.mark.node
def test_the_node_is_ready_on_containerd(kube_node: NodeCluster) -> None:
    nodes = json.loads(kubectl(kube_node, "get", "nodes", "-o", "json"))["items"]
    assert [n["metadata"]["name"] for n in nodes] == [NODE_NAME]
    status = nodes[0]["status"]
    ready = {c["type"]: c["status"] for c in status["conditions"]}["Ready"]
    assert ready == "True"
    info = status["nodeInfo"]
    assert info["kubeletVersion"] == build.KUBERNETES_VERSION
    assert (
        info["containerRuntimeVersion"]
        == f"containerd://{build.CONTAINERD_VERSION.removeprefix('v')}"
    )
    addresses = {a["type"]: a["address"] for a in status["addresses"]}
    assert addresses["InternalIP"] == kube_node.network.gateway


@pytest.mark.node
def test_a_pod_runs_to_completion_and_its_logs_are_served(
    kube_node: NodeCluster, namespace: str
) -> None:
    token = uuid.uuid4().hex
    # The pod's own view: its IP is in the pod range, its resolver is cluster DNS only.
    logs = run_to_completion(
        kube_node,
        namespace,
        "hello",
        f"echo {token}; hostname -i; cat /etc/resolv.conf",
    )
    lines = logs.splitlines()
    assert lines[0] == token
    assert lines[1].startswith(kube_node.network.pod_cidr.rsplit(".", 1)[0] + ".")
    nameservers = [line.split()[1] for line in lines if line.startswith("nameserver")]
    assert nameservers == [kube_node.network.gateway]


@pytest.mark.node
def test_a_pod_reaches_the_api_server_with_its_service_account_token(
    kube_node: NodeCluster, namespace: str
) -> None:
    # kubectl (static, from the host's cache) in the pod uses the in-cluster config: the
    # `kubernetes` Service, the mounted token and the cluster CA that the controller-
    # manager publishes. The API server says who the token belongs to.
    pod = pod_manifest(
        "in-cluster",
        ["/host-bin/kubectl", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
    )
    pod["metadata"] = {"name": "in-cluster", "namespace": namespace}
    spec = pod["spec"]
    spec["volumes"] = [{"name": "bin", "hostPath": {"path": str(kube_node.binaries.bin_dir)}}]
    spec["containers"][0]["volumeMounts"] = [
        {"name": "bin", "mountPath": "/host-bin", "readOnly": True}
    ]
    logs = run_pod(kube_node, pod)
    assert logs == f"system:serviceaccount:{namespace}:default"


@pytest.mark.node
def test_the_python_base_image_runs_python_3_11_as_uid_10001_read_only(
    kube_node: NodeCluster, python_base_image: ImageRef, namespace: str
) -> None:
    # The chart's pod security: non-root uid 10001, read-only root, no capabilities.
    script = "import os, sys, ssl; print(sys.version_info[:2], os.getuid(), sys.executable)"
    pod = pod_manifest("python", ["/usr/local/bin/python", "-c", script])
    pod["metadata"] = {"name": "python", "namespace": namespace}
    pod["spec"]["securityContext"] = {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True}
    container = pod["spec"]["containers"][0]
    container["image"] = str(python_base_image)
    container["securityContext"] = {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert run_pod(kube_node, pod) == "(3, 11) 10001 /usr/local/bin/python\n"


@pytest.mark.node
def test_a_pod_pulls_its_image_from_the_loopback_registry(
    kube_node: NodeCluster, namespace: str
) -> None:
    remote = kube_node.push(BUSYBOX_IMAGE, f"threadkeeper/busybox-{namespace}")
    catalog = json.loads(_registry_get(f"http://{kube_node.registry}/v2/_catalog"))
    assert f"threadkeeper/busybox-{namespace}" in catalog["repositories"]
    token = uuid.uuid4().hex
    pod = pod_manifest("pulled", ["/bin/sh", "-c", f"echo {token}"])
    pod["metadata"] = {"name": "pulled", "namespace": namespace}
    container = pod["spec"]["containers"][0]
    container["image"] = str(remote)
    # Always: the kubelet must resolve the tag at the registry, not reuse a local image.
    container["imagePullPolicy"] = "Always"
    assert run_pod(kube_node, pod) == f"{token}\n"
    status = json.loads(kubectl(kube_node, "get", "pod", "pulled", "-n", namespace, "-o", "json"))
    image_id = status["status"]["containerStatuses"][0]["imageID"]
    assert image_id.startswith(f"{remote.name}@sha256:")
    # containerd's CRI forgets the local name of an image pulled under another name; the
    # local name then resolves to the loopback registry instead of failing.
    again = run_to_completion(kube_node, namespace, "local-again", f"echo {token}")
    assert again == f"{token}\n"


def _registry_get(url: str) -> str:
    response = httpx.get(url, timeout=10, trust_env=False)
    response.raise_for_status()
    return response.text


def _web(namespace: str, token: str) -> list[dict[str, Any]]:
    labels = {"app": "web"}
    script = f"echo {token} > /www/index.html && exec httpd -f -p 8080 -h /www"
    container = {
        "name": "web",
        "image": str(BUSYBOX_IMAGE),
        "command": ["/bin/sh", "-c", script],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    deployment = deployment_manifest("web", namespace, labels, {"containers": [container]})
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return [deployment, service]


@pytest.mark.node
def test_a_service_answers_on_its_cluster_ip_and_its_dns_name(
    kube_node: NodeCluster, namespace: str
) -> None:
    token = uuid.uuid4().hex
    for manifest in _web(namespace, token):
        apply(kube_node, manifest)
    kubectl(kube_node, "rollout", "status", "-n", namespace, "deployment/web",
             f"--timeout={WAIT}")  # fmt: skip
    cluster_ip = kubectl(kube_node, "get", "service", "web", "-n", namespace,
                          "-o", "jsonpath={.spec.clusterIP}")  # fmt: skip
    domain = kube_node.network.cluster_domain
    fqdn = f"web.{namespace}.svc.{domain}"
    # kube-proxy may program the Service a moment after the rollout: retry inside the pod.
    # (Debian's static busybox wget crashes on its own -T, hence `timeout`.)
    fetch = "for i in $(seq 60); do timeout 3 wget -qO- http://{0}/ && break; sleep 1; done"
    logs = run_to_completion(
        kube_node,
        namespace,
        "client",
        " && ".join(
            (
                fetch.format(cluster_ip),
                fetch.format("web"),
                f"nslookup {fqdn} {kube_node.network.gateway}",
                # Only the cluster's zones are served: nothing is forwarded upstream.
                "! nslookup example.com",
            )
        ),
    )
    assert logs.count(token) == 2, logs
    assert cluster_ip in logs


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.cluster", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.node
def test_the_command_line_leaves_a_test_runs_node_alone(kube_node: NodeCluster) -> None:
    up = _cli("up", "--node")
    assert up.returncode == 1
    assert "a node cluster is already running" in up.stderr
    assert up.stdout == ""

    down = _cli("down")
    assert down.returncode == 0, down.stderr
    assert "(a test run) is running; leaving it alone" in down.stderr
    assert kubectl(kube_node, "get", "node", NODE_NAME, "-o", "name") == f"node/{NODE_NAME}\n"
    assert all(alive(pid) for pid in kube_node.pids().values())


@pytest.mark.node
def test_stop_leaves_nothing_behind(
    kube_node: NodeCluster, kube_node_host_before: HostState, namespace: str
) -> None:
    """Runs last (conftest orders it): it stops the session's node cluster."""
    # A running pod holds what stop() must undo: a veth, netns and rootfs mounts, a cgroup.
    apply(kube_node, {**pod_manifest("sleeper", ["sleep", "3600"]), "metadata": {
        "name": "sleeper", "namespace": namespace}})  # fmt: skip
    kubectl(kube_node, "wait", "-n", namespace, "pod/sleeper", "--for=condition=Ready",
             f"--timeout={WAIT}")  # fmt: skip
    during = host_state()
    assert during != kube_node_host_before
    assert any(link.startswith("veth") for link in during.links)
    node_bin = kube_node.node_binaries.bin_dir
    state_dir = kube_node.state_dir

    kube_node.stop()

    assert host_state() == kube_node_host_before
    assert not state_dir.exists()
    # Node binaries run only for a node; etcd and kube-apiserver also for other control
    # planes on the machine, so theirs are told apart by this cluster's state dir.
    assert not _processes_of(node_bin, state_dir)
    assert not host.cgroup_pids()


def _processes_of(bin_dir: Path, state_dir: Path) -> list[str]:
    """Processes running a binary from `bin_dir` or naming `state_dir` in their arguments."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = str((entry / "exe").readlink())
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if exe.startswith(str(bin_dir)) or str(state_dir).encode() in cmdline:
            found.append(f"{entry.name} {exe}")
    return found


# --- bring-up failures say what is missing -----------------------------------------------


def test_no_go_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(build.GO_ENV, str(tmp_path / "no-such-go"))
    with pytest.raises(ClusterError, match=r"Go >= 1\.26\.8 is needed to build the kubelet"):
        build.ensure_node_binaries()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.fixture
def as_root() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("preflight checks root before anything else")


def test_no_iptables_says_what_to_install(
    as_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PATH with every tool preflight needs except iptables.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "umount"):
        found = subprocess.run(["which", tool], capture_output=True, text=True, check=True)
        (bin_dir / tool).symlink_to(found.stdout.strip())
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ClusterError, match=r"needs `iptables`.*apt-get install iptables"):
        preflight(NodeNetwork(), NodePorts())


def test_a_port_in_use_is_named(as_root: None) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ClusterError, match=rf"port {port} \(kubelet\) is in use"):
            preflight(NodeNetwork(), NodePorts(kubelet=port))


def test_a_port_with_only_closed_connections_is_free(as_root: None) -> None:
    with socket.socket() as listener:
        # As Go servers (the registry, the kubelet) bind their listeners.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            # The side that closes first keeps the port in TIME_WAIT.
            accepted.close()
            client.recv(1)
    preflight(NodeNetwork(), NodePorts(kubelet=port))


def test_missing_cgroup_controllers_are_named(
    as_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for controller in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    monkeypatch.setattr(host, "CGROUP_ROOT", tmp_path)
    with pytest.raises(ClusterError, match=r"cgroup v1 controllers pids are not mounted"):
        preflight(NodeNetwork(), NodePorts())


def test_a_kernel_without_overlayfs_is_named(
    as_root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filesystems = tmp_path / "filesystems"
    filesystems.write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n")
    monkeypatch.setattr(node, "PROC_FILESYSTEMS", filesystems)
    with pytest.raises(ClusterError, match=r"overlay filesystem is not available.*modprobe"):
        preflight(NodeNetwork(), NodePorts())


def test_a_range_that_overlaps_a_route_is_refused(as_root: None) -> None:
    routes = host.run("ip", "-j", "-4", "route", "show").stdout
    # A route of the machine's own, not one of a node cluster running meanwhile.
    bridge = NodeNetwork().bridge
    taken = next(
        (
            r["dst"]
            for r in json.loads(routes)
            if r.get("dst") not in (None, "default") and r.get("dev") != bridge
        ),
        None,
    )
    if taken is None:
        pytest.skip("this machine has no route but the default one to overlap")
    with pytest.raises(ClusterError, match=r"overlaps the route"):
        host.check_ranges(NodeNetwork(pod_cidr=taken))


# The owner of a cluster that a killed run leaves behind: it starts one, runs a pod in it,
# says where its state is and waits to be killed.
_OWNER = """
import sys
from tests.cluster import build
from tests.cluster.node import NodeCluster
from tests.cluster.pods import WAIT, apply, kubectl, pod_manifest
cluster = NodeCluster.start(build.ensure_binaries(), build.ensure_node_binaries())
apply(cluster, pod_manifest("left", ["sleep", "3600"]) | {
    "metadata": {"name": "left", "namespace": "default"}})
kubectl(cluster, "wait", "pod/left", "--for=condition=Ready", f"--timeout={WAIT}")
print(cluster.state_dir, flush=True)
sys.stdin.read()
"""


@pytest.mark.node
def test_the_next_run_clears_a_killed_runs_cluster(kube_node_host_before: HostState) -> None:
    """Runs after the session's cluster stopped (conftest orders it).

    A run killed with its cluster up leaves a pod running, its links, routes, mounts and
    sysctls; the next run must find the host as it was before either of them.
    """
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert owner.stdout is not None
        state_dir = Path(owner.stdout.readline().strip())
        assert owner.poll() is None, "the owner did not start its cluster"
        owner.kill()
        owner.wait(timeout=30)
        assert node.running_node() is None
        assert node.recorded_node() is not None
        assert host.cgroup_pids(), "the killed run's pod should outlive it"
        assert host_state() != kube_node_host_before

        node.clear_leftover()

        assert host_state() == kube_node_host_before
        assert not host.cgroup_pids()
        assert node.recorded_node() is None
        assert not state_dir.exists()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=30)
        node.clear_leftover()
