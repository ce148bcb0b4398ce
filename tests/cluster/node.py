"""A one-node Kubernetes on this machine: the control plane plus a node that runs pods.

On top of `ControlPlane` (etcd, kube-apiserver) it starts kube-controller-manager,
kube-scheduler, containerd (runc, CNI bridge), a kubelet, kube-proxy (iptables) and
CoreDNS, all as host processes built by `build.ensure_node_binaries()`. CoreDNS runs on
the host, listening on the bridge address, and answers only the cluster's zones.

Only one node cluster can run on a machine: the bridge, the kubelet's fixed paths and
DNS on the bridge address are machine-wide. `REGISTRY` records the running one (its
state dir, processes and the host snapshot), so a later start or `down` can clean up
after one whose owner died.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from tests.cluster import host
from tests.cluster.build import Binaries, ImageToolBinaries, NodeBinaries
from tests.cluster.controlplane import ControlPlane
from tests.cluster.errors import ClusterError
from tests.cluster.host import HostSnapshot, NodeNetwork
from tests.cluster.image import ImageRef, busybox_archive
from tests.cluster.proc import alive, free_port, spawn, start_time, stop_group

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

NODE_NAME = "threadkeeper-node"
# The registry name of images made here; containerd maps it to the loopback registry.
LOCAL_REGISTRY_NAME = "threadkeeper.local"
PAUSE_IMAGE = ImageRef(f"{LOCAL_REGISTRY_NAME}/pause", "1")
BUSYBOX_IMAGE = ImageRef(f"{LOCAL_REGISTRY_NAME}/busybox", "1")
CRI_NAMESPACE = "k8s.io"
# Machine-wide, like the bridge: at most one node cluster at a time.
REGISTRY = Path("/run/threadkeeper-node.json")
PROC_FILESYSTEMS = Path("/proc/filesystems")
# The HPA controller's loop and how long it holds a higher replica count before scaling
# down (upstream's defaults: 15 s and 5 min, too slow for a test to wait out).
HPA_SYNC_PERIOD = "5s"
HPA_DOWNSCALE_WINDOW = "20s"
# Started in this order, stopped in the reverse one.
_COMPONENTS = (
    "containerd",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "coredns",
    "registry",
)


@dataclass(frozen=True)
class NodePorts:
    """Ports on 127.0.0.1 (or the bridge address, for the kubelet and DNS)."""

    kubelet: int = 10250
    kubelet_healthz: int = 0
    controller_manager: int = 0
    scheduler: int = 0
    proxy_healthz: int = 0
    proxy_metrics: int = 0
    dns_health: int = 0
    dns_ready: int = 0
    # Where `docker push localhost:5000/...` habits expect it; only with image tools.
    registry: int = 5000

    def resolved(self) -> NodePorts:
        """Zero means any free port."""
        picked = {name: value or free_port() for name, value in asdict(self).items()}
        return NodePorts(**picked)


# --- checks that say what is missing instead of hanging -----------------------------------


def preflight(net: NodeNetwork, ports: NodePorts) -> None:
    """Fail with what to fix before anything on the host changes."""
    if os.geteuid() != 0:
        raise ClusterError("a node cluster needs root (bridges, iptables, mounts, cgroups)")
    for tool, package in (("iptables", "iptables"), ("ip", "iproute2"), ("umount", "mount")):
        if shutil.which(tool) is None:
            raise ClusterError(
                f"a node cluster needs `{tool}` on PATH; install it: `apt-get install {package}`"
            )
    _check_cgroups()
    _check_overlayfs()
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        raise ClusterError(
            "the br_netfilter kernel module is not loaded (Services between pods on one "
            "bridge need it): `modprobe br_netfilter`"
        )
    _check_port_free("kubelet", ports.kubelet)
    host.check_ranges(net)


def _check_cgroups() -> None:
    root = host.CGROUP_ROOT
    if (root / "cgroup.controllers").exists():
        return  # cgroup v2: the kubelet's default
    needed = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer")
    missing = [c for c in needed if not (root / c / "cgroup.procs").exists()]
    if missing:
        raise ClusterError(
            f"cgroup v1 controllers {', '.join(missing)} are not mounted under {root}; "
            "the kubelet needs them (or a cgroup v2 unified hierarchy)"
        )


def _check_overlayfs() -> None:
    # containerd's default snapshotter; without it every sandbox would fail to start.
    listed = PROC_FILESYSTEMS.read_text().split()
    if "overlay" not in listed:
        raise ClusterError(
            "the overlay filesystem is not available (containerd's snapshotter needs it): "
            "`modprobe overlay`"
        )


def _check_port_free(component: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind: closed connections in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            # Bound, never listened on: any address holding the port makes this fail.
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ClusterError(
                f"port {port} ({component}) is in use by another process; stop it or "
                f"choose another port (NodePorts.{component})"
            ) from exc


# --- the registry of the machine's one node cluster ---------------------------------------


def recorded_node() -> dict[str, Any] | None:
    """The registry entry, running or left behind by a crash, or None."""
    return _read_registry()


def _read_registry() -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(REGISTRY.read_text())
    except (OSError, ValueError):
        return None
    return data


def _recorded_alive(child: Mapping[str, int]) -> bool:
    return start_time(child["pid"]) == child["start_time"] and alive(child["pid"])


def running_node() -> dict[str, Any] | None:
    """The registry entry of a node cluster whose processes still run, else None."""
    data = _read_registry()
    if data is None:
        return None
    children = data.get("children", {})
    owner = data.get("owner")
    owner_ok = data.get("detached") or (owner is not None and _recorded_alive(owner))
    if owner_ok and children and any(_recorded_alive(c) for c in children.values()):
        return data
    return None


def teardown_recorded(data: Mapping[str, Any]) -> None:
    """Stop what a registry entry names and undo its host changes (idempotent)."""
    children: Mapping[str, Mapping[str, int]] = data.get("children", {})
    for name in reversed(_COMPONENTS):
        child = children.get(name)
        if child is None or not _recorded_alive(child):
            continue
        if name == "containerd":
            _kill_pods()
        stop_group(child["pid"])
    _kill_pods()
    state_dir = Path(data["state_dir"])
    _kill_shims(state_dir)
    # Before the bridge goes: the API server listens on its address, and shutting down
    # without it takes the API server its whole 15 s grace period.
    plane = data.get("control_plane", {})
    for name in ("kube-apiserver", "etcd"):
        child = plane.get(name)
        if child is not None and _recorded_alive(child):
            stop_group(child["pid"])
    net = NodeNetwork(**data["network"])
    snapshot = HostSnapshot(**data["snapshot"])
    host.unmount_under([state_dir])
    host.restore(net, snapshot)
    shutil.rmtree(state_dir, ignore_errors=True)
    REGISTRY.unlink(missing_ok=True)


def clear_leftover() -> None:
    """Undo what a node cluster whose owner died left behind; refuse while one runs.

    A run killed with its cluster up (a CI job cut short, a machine snapshot) leaves pods,
    links, routes, mounts and sysctls. Whoever starts the next cluster, or records the host's
    state to compare against later, calls this first.
    """
    running = running_node()
    if running is not None:
        raise ClusterError(
            f"a node cluster is already running (state in {running['state_dir']}); "
            "only one fits on a machine: stop it with `python -m tests.cluster down`"
        )
    leftover = _read_registry()
    if leftover is not None:
        log.warning("cleaning up after a node cluster whose owner died")
        teardown_recorded(leftover)


def _kill_pods(timeout: float = 15.0) -> None:
    """SIGKILL every process in the pod cgroups until none is left."""
    deadline = time.monotonic() + timeout
    while pids := host.cgroup_pids():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ClusterError(f"pod processes {pids} survived SIGKILL for {timeout:.0f}s")
        time.sleep(0.1)


def _kill_shims(state_dir: Path) -> None:
    """containerd's shims daemonize; ours are those whose command line names our socket."""
    marker = str(state_dir / "containerd").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _import_and_push(
    ctr: Callable[..., subprocess.CompletedProcess[str]],
    hosts: Path | None,
    archive: Path,
    refs: Sequence[ImageRef],
) -> None:
    ctr("images", "import", str(archive))
    if hosts is not None:
        for ref in refs:
            ctr("images", "push", "--plain-http", "--hosts-dir", str(hosts), str(ref))


def publish_image(state: Mapping[str, Any], archive: Path, refs: Sequence[ImageRef]) -> None:
    """`NodeCluster.import_image` for the running node a registry entry describes."""
    state_dir = Path(state["state_dir"])
    socket = state_dir / "containerd" / "containerd.sock"
    ctr = Path(state["node_bin_dir"]) / "ctr"

    def run_ctr(*args: str) -> subprocess.CompletedProcess[str]:
        return host.run(str(ctr), "--address", str(socket), "-n", CRI_NAMESPACE, *args)

    hosts = state_dir / "certs.d" if "registry" in state.get("children", {}) else None
    _import_and_push(run_ctr, hosts, archive, refs)


# --- the cluster --------------------------------------------------------------------------


class NodeCluster:
    """A `ControlPlane` plus a node; start with `NodeCluster.start(...)`, end with `stop()`."""

    def __init__(
        self,
        *,
        binaries: Binaries,
        node_binaries: NodeBinaries,
        image_tools: ImageToolBinaries | None,
        state_dir: Path,
        detached: bool,
        network: NodeNetwork,
        ports: NodePorts,
    ) -> None:
        self.binaries = binaries
        self.node_binaries = node_binaries
        self.image_tools = image_tools
        self.state_dir = state_dir
        self.detached = detached
        self.network = network
        self.ports = ports
        self.plane: ControlPlane | None = None
        self.snapshot = HostSnapshot()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopped = False

    # --- what tests use ------------------------------------------------------------------

    @property
    def control_plane(self) -> ControlPlane:
        if self.plane is None:
            raise ClusterError("the node cluster's control plane is not running")
        return self.plane

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def kubectl(self) -> Path:
        return self.control_plane.kubectl

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        return self.control_plane.env(base)

    def api_client(self) -> ApiClient:
        return self.control_plane.api_client()

    @property
    def containerd_socket(self) -> Path:
        return self.state_dir / "containerd" / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this node's containerd, in the CRI namespace."""
        cmd = [str(self.node_binaries["ctr"]), "--address", str(self.containerd_socket)]
        return host.run(*cmd, "-n", CRI_NAMESPACE, *args, check=check)

    def logs(self) -> dict[str, Path]:
        found = dict(self.plane.logs()) if self.plane is not None else {}
        found.update({name: self.state_dir / f"{name}.log" for name in self._procs})
        return found

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        binaries: Binaries,
        node_binaries: NodeBinaries,
        *,
        state_dir: Path | None = None,
        detached: bool = False,
        timeout: float = 180.0,
        network: NodeNetwork | None = None,
        ports: NodePorts | None = None,
        image_tools: ImageToolBinaries | None = None,
    ) -> NodeCluster:
        """Start everything and return once the node is Ready and DNS answers.

        With `image_tools`, a registry also listens on 127.0.0.1:`ports.registry`, and
        containerd pulls from it over plain HTTP (`registry`, `push`).
        """
        net = network or NodeNetwork()
        wanted = ports or NodePorts()
        clear_leftover()
        preflight(net, wanted)
        if image_tools is not None:
            _check_port_free("registry", wanted.registry)
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="threadkeeper-node-"))
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
        node = cls(
            binaries=binaries,
            node_binaries=node_binaries,
            image_tools=image_tools,
            state_dir=state_dir,
            detached=detached,
            network=net,
            ports=wanted.resolved(),
        )
        try:
            node._start(timeout)
        except BaseException:
            node.stop()
            raise
        return node

    def _record(self) -> None:
        owner_pid = os.getpid()
        data = {
            "state_dir": str(self.state_dir),
            "detached": self.detached,
            "owner": {"pid": owner_pid, "start_time": start_time(owner_pid) or 0},
            "network": asdict(self.network),
            "snapshot": asdict(self.snapshot),
            "children": {
                name: {"pid": p.pid, "start_time": start_time(p.pid) or 0}
                for name, p in self._procs.items()
            },
            "control_plane": {
                name: {"pid": pid, "start_time": start_time(pid) or 0}
                for name, pid in (self.plane.pids() if self.plane else {}).items()
            },
            "kubeconfig": str(self.plane.kubeconfig) if self.plane else "",
            "bin_dir": str(self.binaries.bin_dir),
            "node_bin_dir": str(self.node_binaries.bin_dir),
        }
        tmp = REGISTRY.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.rename(REGISTRY)

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Recorded before the first change, so a crash at any point can be undone.
        self.snapshot = HostSnapshot.take()
        self._record()
        host.setup_network(self.network)
        self.plane = ControlPlane.start(
            self.binaries,
            state_dir=self.state_dir / "control-plane",
            detached=self.detached,
            timeout=max(deadline - time.monotonic(), 1.0),
            node_network=self.network,
        )
        self._record()
        self._write_configs()
        self._spawn("containerd", self._containerd_args(), extra_path=self.node_binaries.bin_dir)
        self._wait("containerd", self._containerd_ready, deadline)
        if self.image_tools is not None:
            self._start_registry(deadline)
        self._import_images()
        self._spawn("kube-controller-manager", self._controller_manager_args())
        self._spawn("kube-scheduler", self._scheduler_args())
        self._spawn("kubelet", self._kubelet_args())
        self._wait("kubelet", self._node_ready, deadline)
        self._spawn(
            "kube-proxy",
            [str(self.node_binaries["kube-proxy"]), "--config", str(self._path("kube-proxy.yaml"))],
        )
        self._wait(
            "kube-proxy",
            self._http_ok(f"http://127.0.0.1:{self.ports.proxy_healthz}/healthz"),
            deadline,
        )
        self._spawn(
            "coredns", [str(self.node_binaries["coredns"]), "-conf", str(self._path("Corefile"))]
        )
        self._wait(
            "coredns", self._http_ok(f"http://127.0.0.1:{self.ports.dns_ready}/ready"), deadline
        )
        self._wait("kube-scheduler", lambda: True, deadline)
        self._wait("kube-controller-manager", self._default_service_account, deadline)

    # --- the registry --------------------------------------------------------------------

    @property
    def registry(self) -> str:
        """`127.0.0.1:PORT`, the registry's host part in image names."""
        if self.image_tools is None:
            raise ClusterError("this node cluster was started without image tools: no registry")
        return f"127.0.0.1:{self.ports.registry}"

    def push(self, local: ImageRef, repository: str) -> ImageRef:
        """Push a containerd image to the registry as `registry/repository:tag`."""
        remote = ImageRef(f"{self.registry}/{repository}", local.tag)
        self.ctr("images", "tag", "--force", str(local), str(remote))
        self.ctr("images", "push", "--plain-http", str(remote))
        return remote

    def _start_registry(self, deadline: float) -> None:
        assert self.image_tools is not None
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {
                "filesystem": {"rootdirectory": str(self._path("registry"))},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.registry},
        }
        self._path("registry.yaml").write_text(yaml.safe_dump(config))
        # Its tracing would otherwise try an OTLP collector.
        env = {"OTEL_TRACES_EXPORTER": "none"}
        args = [str(self.image_tools["registry"]), "serve", str(self._path("registry.yaml"))]
        self._spawn("registry", args, extra_env=env)
        self._wait("registry", self._http_ok(f"http://{self.registry}/v2/"), deadline)

    # --- processes -----------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.state_dir / name

    def _spawn(
        self,
        name: str,
        args: list[str],
        extra_path: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        env = dict(os.environ) | dict(extra_env or {})
        if extra_path is not None:
            # containerd finds its shim on PATH.
            env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
        log = self._path(f"{name}.log")
        proc = spawn(args, log, cwd=self.state_dir, env=env, detached=self.detached)
        self._procs[name] = proc
        self._record()

    def _fail(self, name: str, why: str) -> ClusterError:
        log_path = self._path(f"{name}.log")
        try:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        except OSError:
            tail = "(no log)"
        hint = ""
        if "address already in use" in tail:
            hint = " (a port it needs is in use by another process)"
        return ClusterError(f"{name} {why}{hint}; last lines of {log_path}:\n{tail}")

    def _wait(self, name: str, ready: Callable[[], bool], deadline: float) -> None:
        proc = self._procs[name]
        while True:
            if proc.poll() is not None:
                raise self._fail(name, f"exited with code {proc.returncode} while starting")
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._fail(name, "was not ready in time")
            time.sleep(0.2)

    def _http_ok(self, url: str) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return httpx.get(url, timeout=2.0, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        return check

    def _containerd_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        return self.ctr("version", check=False).returncode == 0

    def _kubectl_json(self, *args: str) -> dict[str, Any] | None:
        result = subprocess.run(
            [str(self.kubectl), *args, "-o", "json"],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return None
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def _node_ready(self) -> bool:
        node = self._kubectl_json("get", "node", NODE_NAME)
        if node is None:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _default_service_account(self) -> bool:
        return self._kubectl_json("get", "serviceaccount", "default", "-n", "default") is not None

    def _import_images(self) -> None:
        images = self._path("images")
        images.mkdir(exist_ok=True)
        for ref, command in ((PAUSE_IMAGE, ("/bin/sleep", "infinity")), (BUSYBOX_IMAGE, ())):
            archive = busybox_archive(
                images / f"{ref.tag}-{ref.name.rsplit('/', 1)[-1]}.tar", ref, command
            )
            self.import_image(archive, ref)

    def import_image(self, archive: Path, ref: ImageRef, *more: ImageRef) -> None:
        """Make the OCI archive of `ref` (a `threadkeeper.local/` name) available to pods.

        With a registry, the image is pushed there too, so a pull of it (a policy of
        Always, or containerd forgetting a name when the same image is pulled under
        another) finds it instead of failing. `more` are further names the archive
        carries, pushed as well.
        """
        hosts = self._path("certs.d") if self.image_tools is not None else None
        _import_and_push(self.ctr, hosts, archive, (ref, *more))

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def stop(self) -> None:
        """Stop every process, undo every host change and remove the state. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        data = _read_registry()
        if data is not None and data.get("state_dir") == str(self.state_dir):
            teardown_recorded(data)
        if self.plane is not None:
            self.plane.stop()
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> NodeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- configuration -------------------------------------------------------------------

    def _write_configs(self) -> None:
        plane = self.control_plane
        pki_dir = plane.state_dir / "pki"
        kubeconfigs = self._path("kubeconfigs")
        kubeconfigs.mkdir(exist_ok=True)
        # Every component is an admin: this is a throw-away single-user cluster, and the
        # Node authorizer would add nothing the tests look at.
        for name in (
            "kubelet",
            "kube-controller-manager",
            "kube-scheduler",
            "kube-proxy",
            "coredns",
        ):
            cn = f"system:node:{NODE_NAME}" if name == "kubelet" else f"system:{name}"
            orgs = ["system:masters", "system:nodes"] if name == "kubelet" else ["system:masters"]
            plane.write_kubeconfig(kubeconfigs / f"{name}.kubeconfig", cn, orgs)
        serving = plane.ca.issue(
            NODE_NAME, dns_names=[NODE_NAME], ip_addresses=[self.network.gateway], server=True
        )
        self._path("kubelet.crt").write_bytes(serving.cert_pem)
        self._path("kubelet.key").write_bytes(serving.key_pem)
        self._path("kubelet.key").chmod(0o600)
        # An empty resolv.conf: pods get only cluster DNS, never the host's resolvers.
        self._path("resolv.conf").write_text("")
        net_d = self._path("cni/net.d")
        net_d.mkdir(parents=True, exist_ok=True)
        (net_d / "10-threadkeeper.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        self._path("containerd.toml").write_text(self._containerd_config())
        self._write_registry_hosts()
        self._path("kubelet.yaml").write_text(
            yaml.safe_dump(self._kubelet_config(pki_dir / "ca.crt"))
        )
        self._path("kube-proxy.yaml").write_text(yaml.safe_dump(self._proxy_config()))
        self._path("Corefile").write_text(self._corefile())

    def _write_registry_hosts(self) -> None:
        """containerd's hosts.toml: the loopback registry, and where local names go."""
        # Without a registry, `threadkeeper.local` points at a closed loopback port, so
        # a pull of a local image fails here instead of asking any resolver for the name.
        url = f"http://{self.registry}" if self.image_tools is not None else "http://127.0.0.1:1"
        hosts = (
            f'server = "{url}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve", "push"]\n'
        )
        names = [LOCAL_REGISTRY_NAME] + ([self.registry] if self.image_tools is not None else [])
        for name in names:
            directory = self._path(f"certs.d/{name}")
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "hosts.toml").write_text(hosts)

    def _cni_config(self) -> dict[str, Any]:
        net = self.network
        return {
            "cniVersion": "1.0.0",
            "name": "threadkeeper",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": net.bridge,
                    "isGateway": True,
                    # No NAT: pod traffic has nowhere to go but the bridge and the host.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": net.pod_cidr, "gateway": net.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self._path("cni/ipam")),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
            ],
        }

    def _containerd_config(self) -> str:
        root = self._path("containerd")
        runtime = '[plugins."io.containerd.cri.v1.runtime"'
        return f"""version = 3
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

{runtime}]
  # Root here lacks CAP_SYS_RESOURCE, so a pod's oom_score_adj may only go up.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

{runtime}.cni]
  bin_dirs = ["{self.node_binaries.cni_dir}"]
  conf_dir = "{self._path("cni/net.d")}"

{runtime}.containerd]
  default_runtime_name = "runc"

{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

{runtime}.containerd.runtimes.runc.options]
  BinaryName = "{self.node_binaries["runc"]}"
  Root = "{root / "runc"}"
  SystemdCgroup = false

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

[plugins."io.containerd.cri.v1.images".registry]
  # hosts.toml per registry: the loopback one is plain HTTP.
  config_path = "{self._path("certs.d")}"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{PAUSE_IMAGE}"
"""

    def _containerd_args(self) -> list[str]:
        return [
            str(self.node_binaries["containerd"]),
            "--config",
            str(self._path("containerd.toml")),
        ]

    def _kubelet_config(self, ca: Path) -> dict[str, Any]:
        net = self.network
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Kubernetes >= 1.35 refuses cgroup v1 otherwise; these machines have only v1.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": net.gateway,
            "port": self.ports.kubelet,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports.kubelet_healthz,
            "tlsCertFile": str(self._path("kubelet.crt")),
            "tlsPrivateKeyFile": str(self._path("kubelet.key")),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": net.cluster_domain,
            "clusterDNS": [net.gateway],
            "resolvConf": str(self._path("resolv.conf")),
            "podLogsDir": str(self._path("pod-logs")),
            "failSwapOn": False,
            # The test machine's disk and memory are shared; evict only when truly short.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "5s",
        }

    def _kubelet_args(self) -> list[str]:
        return [
            str(self.node_binaries["kubelet"]),
            f"--config={self._path('kubelet.yaml')}",
            f"--kubeconfig={self._path('kubeconfigs/kubelet.kubeconfig')}",
            f"--root-dir={self._path('kubelet')}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={self.network.gateway}",
        ]

    def _serving_component_args(self, name: str, port: int) -> list[str]:
        """What kube-controller-manager and kube-scheduler share: identity and serving."""
        kubeconfig = self._path(f"kubeconfigs/{name}.kubeconfig")
        return [
            str(self.node_binaries[name]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self._path(f'{name}-certs')}",
            "--leader-elect=false",
        ]

    def _controller_manager_args(self) -> list[str]:
        pki_dir = self.control_plane.state_dir / "pki"
        return [
            *self._serving_component_args("kube-controller-manager", self.ports.controller_manager),
            f"--service-account-private-key-file={pki_dir / 'sa.key'}",
            f"--root-ca-file={pki_dir / 'ca.crt'}",
            f"--service-cluster-ip-range={self.network.service_cidr}",
            "--cluster-name=threadkeeper",
            "--use-service-account-credentials=false",
            # The HorizontalPodAutoscaler controller runs by default; these shorten its
            # loop (15 s) and its scale-down wait (5 min) so a test sees both in a minute.
            f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC_PERIOD}",
            f"--horizontal-pod-autoscaler-downscale-stabilization={HPA_DOWNSCALE_WINDOW}",
        ]

    def _scheduler_args(self) -> list[str]:
        return self._serving_component_args("kube-scheduler", self.ports.scheduler)

    def _proxy_config(self) -> dict[str, Any]:
        net = self.network
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {
                "kubeconfig": str(self._path("kubeconfigs/kube-proxy.kubeconfig"))
            },
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": net.pod_cidr,
            "healthzBindAddress": f"127.0.0.1:{self.ports.proxy_healthz}",
            "metricsBindAddress": f"127.0.0.1:{self.ports.proxy_metrics}",
            # NodePorts only on the bridge address, never on a real interface.
            "nodePortAddresses": [f"{net.gateway}/32"],
            # Zeros leave the host's conntrack sysctls alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        }

    def _corefile(self) -> str:
        net = self.network
        # Only the cluster domain and the reverse zones of its own ranges: anything else
        # is REFUSED, so no query ever leaves the machine.
        zones = " ".join(
            (net.cluster_domain, _reverse_zone(net.pod_cidr), _reverse_zone(net.service_cidr))
        )
        kubeconfig = self._path("kubeconfigs/coredns.kubeconfig")
        return f"""{" ".join(f"{z}:53" for z in zones.split())} {{
    bind {net.gateway}
    errors
    health 127.0.0.1:{self.ports.dns_health}
    ready 127.0.0.1:{self.ports.dns_ready}
    kubernetes {zones} {{
        kubeconfig {kubeconfig} threadkeeper-test
        pods insecure
    }}
    cache 5
}}
"""


def _reverse_zone(cidr: str) -> str:
    """The in-addr.arpa zone of a /24 (or wider, octet-aligned) IPv4 range."""
    network = ipaddress.ip_network(cidr)
    octets = str(network.network_address).split(".")[: network.prefixlen // 8]
    return ".".join(reversed(octets)) + ".in-addr.arpa"
