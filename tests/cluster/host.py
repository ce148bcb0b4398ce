"""What a node cluster changes on the host, and how `down` puts it back.

The kubelet, containerd, runc, the CNI plugins and kube-proxy change machine-wide state:
a bridge and veths, iptables chains, sysctls (ip_forward, bridge netfilter, the kubelet's
kernel tunables), cgroups, mounts and a few fixed directories. `HostSnapshot.take()`
records the prior values before anything starts and is saved beside the cluster's state,
so `restore()` can undo it all, also after a crash, by a later `down` or start.

Network rule: pod, Service and bridge addresses exist only on the bridge this module
creates. A `mangle` FORWARD rule drops anything that would leave the bridge for another
interface, the Service range is routed onto the bridge, and nothing is NATed outwards.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.cluster.errors import ClusterError

log = logging.getLogger(__name__)

# Sysctls the bridge plugin (ip_forward), kube-proxy (bridge netfilter, which pod-to-
# Service-to-pod traffic on one bridge needs) and the kubelet (its kernel tunables) set.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Paths the kubelet, containerd's shims and libcni write whatever they are configured with.
FIXED_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/var/lib/cni",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The kubelet's pod cgroups (cgroupfs driver, cgroupRoot "/").
POD_CGROUP = "kubepods"
# Chains created by kube-proxy and the kubelet (KUBE-), portmap (CNI-) and us.
CHAIN_PREFIXES = ("KUBE-", "CNI-", "THREADKEEPER-")
GUARD_CHAIN = "THREADKEEPER-NODE"
_TABLES = ("filter", "nat", "mangle", "raw")


@dataclass(frozen=True)
class NodeNetwork:
    """The node's address plan, chosen explicitly and kept off every real network."""

    bridge: str = "tk-node0"
    pod_cidr: str = "10.213.0.0/24"
    service_cidr: str = "10.214.0.0/24"
    cluster_domain: str = "cluster.local"

    @property
    def gateway(self) -> str:
        """The bridge's address: the node IP, pods' default gateway and cluster DNS."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    @property
    def kubernetes_service_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))


@dataclass
class HostSnapshot:
    """Prior host state, saved before the node changes it."""

    sysctls: dict[str, str] = field(default_factory=dict)
    absent_paths: list[str] = field(default_factory=list)
    absent_cgroups: list[str] = field(default_factory=list)

    @classmethod
    def take(cls) -> HostSnapshot:
        sysctls = {}
        for name in SYSCTLS:
            with contextlib.suppress(OSError):
                sysctls[name] = (Path("/proc/sys") / name).read_text().strip()
        absent = [p for p in FIXED_PATHS if not os.path.lexists(p)]
        cgroups = [str(c) for c in _controller_dirs() if not (c / POD_CGROUP).exists()]
        return cls(sysctls=sysctls, absent_paths=absent, absent_cgroups=cgroups)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> HostSnapshot | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(**data)


def _controller_dirs() -> list[Path]:
    if not CGROUP_ROOT.is_dir():
        return []
    return [d for d in sorted(CGROUP_ROOT.iterdir()) if d.is_dir() and d.name != "unified"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host tool; a failure raises ClusterError with its stderr."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ClusterError(f"{args[0]} is not installed: {exc}") from exc
    if check and result.returncode != 0:
        raise ClusterError(f"`{' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def write_sysctl(name: str, value: str) -> None:
    (Path("/proc/sys") / name).write_text(value + "\n")


# --- checks before anything changes -------------------------------------------------------


def check_ranges(net: NodeNetwork) -> None:
    """Refuse ranges that overlap a route the machine already has (other than ours)."""
    ours = [ipaddress.ip_network(net.pod_cidr), ipaddress.ip_network(net.service_cidr)]
    routes = json.loads(run("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]")
    for route in routes:
        dst = route.get("dst", "")
        if (
            route.get("dev") == net.bridge
            or dst in ("", "default")
            or route.get("type")
            in (
                "local",
                "broadcast",
            )
        ):
            continue
        with contextlib.suppress(ValueError):
            existing = ipaddress.ip_network(dst, strict=False)
            for mine in ours:
                if existing.overlaps(mine) and not existing.is_loopback:
                    raise ClusterError(
                        f"the node's range {mine} overlaps the route to {existing} on "
                        f"{route.get('dev')}; pick other ranges (NodeNetwork)"
                    )


# --- setting up ---------------------------------------------------------------------------


def setup_network(net: NodeNetwork) -> None:
    """The bridge with the gateway address, the Service route and the egress guard."""
    run("ip", "link", "add", net.bridge, "type", "bridge")
    prefix = ipaddress.ip_network(net.pod_cidr).prefixlen
    run("ip", "addr", "add", f"{net.gateway}/{prefix}", "dev", net.bridge)
    run("ip", "link", "set", net.bridge, "up")
    # Service addresses are virtual: kube-proxy rewrites them to pod addresses. Routing
    # the range onto the bridge lets the host use them and keeps a miss on the bridge.
    run("ip", "route", "add", net.service_cidr, "dev", net.bridge, "src", net.gateway)
    run("iptables", "-t", "mangle", "-N", GUARD_CHAIN)
    run("iptables", "-t", "mangle", "-A", GUARD_CHAIN, "-i", net.bridge, "!", "-o", net.bridge,
        "-j", "DROP")  # fmt: skip
    run("iptables", "-t", "mangle", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)
    write_sysctl("net/ipv4/ip_forward", "1")
    write_sysctl("net/bridge/bridge-nf-call-iptables", "1")


# --- tearing down -------------------------------------------------------------------------


def _mounts_under(roots: list[Path]) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces etc. octal-escaped.
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == str(r) or point.startswith(str(r) + "/") for r in roots):
            found.append(point)
    return found


def unmount_under(roots: list[Path]) -> None:
    """Unmount everything at or below `roots`, deepest first (lazily if busy)."""
    for _ in range(5):
        points = _mounts_under(roots)
        if not points:
            return
        for point in sorted(points, key=len, reverse=True):
            if run("umount", point, check=False).returncode != 0:
                run("umount", "-l", point, check=False)
    left = _mounts_under(roots)
    if left:
        raise ClusterError(f"could not unmount {left}")


def _cgroup_dirs(top: Path) -> list[Path]:
    """`top` and every cgroup below it, skipping those removed while they are listed.

    The kubelet and runc remove a pod's cgroups while teardown reads them; `os.walk`
    passes over a directory that vanished between its parent's listing and its own,
    where `Path.rglob` raises.
    """
    return [Path(root) for root, _dirs, _files in os.walk(top)]


def cgroup_pids() -> list[int]:
    """Every process in the kubelet's pod cgroups."""
    pids: set[int] = set()
    for controller in _controller_dirs():
        for directory in _cgroup_dirs(controller / POD_CGROUP):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
    return sorted(pids)


def remove_pod_cgroups(snapshot: HostSnapshot) -> None:
    for controller in snapshot.absent_cgroups:
        remove_cgroup_tree(Path(controller) / POD_CGROUP)


def remove_cgroup_tree(top: Path) -> None:
    """rmdir a cgroup and its children, bottom-up; cgroups still holding processes stay."""
    if not top.is_dir():
        return
    # cgroupfs directories go bottom-up with rmdir; their files cannot be removed.
    for directory in sorted(_cgroup_dirs(top), key=str, reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()


def absent_cgroups(name: str) -> list[Path]:
    """The cgroup `name` in every hierarchy (v1 controllers, v2, `unified`) where it is absent."""
    if not CGROUP_ROOT.is_dir():
        return []
    hierarchies = [d for d in sorted(CGROUP_ROOT.iterdir()) if d.is_dir()]
    return [h / name for h in hierarchies if not (h / name).exists()]


def remove_links(net: NodeNetwork) -> None:
    """The bridge and any veth still attached to it (their routes go with them)."""
    links = json.loads(run("ip", "-j", "link", "show").stdout or "[]")
    for link in links:
        if link.get("master") == net.bridge:
            run("ip", "link", "delete", link["ifname"], check=False)
    if any(link.get("ifname") == net.bridge for link in links):
        run("ip", "link", "delete", net.bridge, check=False)


def remove_chains(tool: str) -> None:
    """Rules jumping to, and the chains named, KUBE-*, CNI-*, THREADKEEPER-* in `tool`."""
    if shutil.which(tool) is None:
        return
    for table in _TABLES:
        listed = run(tool, "-t", table, "-S", check=False)
        if listed.returncode != 0:
            continue
        ours: list[str] = []
        jumps: list[list[str]] = []
        for line in listed.stdout.splitlines():
            parts = shlex.split(line)
            if parts[:1] == ["-N"] and parts[1].startswith(CHAIN_PREFIXES):
                ours.append(parts[1])
            elif parts[:1] == ["-A"] and not parts[1].startswith(CHAIN_PREFIXES):
                target = parts[parts.index("-j") + 1] if "-j" in parts else ""
                if target.startswith(CHAIN_PREFIXES):
                    jumps.append(parts[1:])
        for rule in jumps:
            run(tool, "-t", table, "-D", *rule, check=False)
        for chain in ours:
            run(tool, "-t", table, "-F", chain, check=False)
        for chain in ours:
            run(tool, "-t", table, "-X", chain, check=False)


def iptables_tools() -> list[str]:
    """Both backends where both exist: kube-proxy picks one by what it finds in use."""
    tools = []
    for family in ("iptables", "ip6tables"):
        variants = [f"{family}-nft", f"{family}-legacy"]
        found = [v for v in variants if shutil.which(v)]
        tools += found or ([family] if shutil.which(family) else [])
    return tools


def restore(net: NodeNetwork, snapshot: HostSnapshot) -> None:
    """Undo the network, sysctls, cgroups and fixed paths; processes must be gone."""
    remove_links(net)
    for tool in iptables_tools():
        remove_chains(tool)
    remove_pod_cgroups(snapshot)
    for name, value in snapshot.sysctls.items():
        with contextlib.suppress(OSError):
            write_sysctl(name, value)
    unmount_under([Path(p) for p in snapshot.absent_paths])
    for path in snapshot.absent_paths:
        shutil.rmtree(path, ignore_errors=True)


# --- comparing the host before and after --------------------------------------------------


@dataclass(frozen=True)
class HostState:
    """What a node cluster may change on the host, as comparable values."""

    links: tuple[str, ...]
    routes: tuple[str, ...]
    rules: tuple[str, ...]
    mounts: tuple[str, ...]
    sysctls: tuple[tuple[str, str], ...]
    paths: tuple[str, ...]
    pod_cgroups: tuple[str, ...]


def _rules() -> tuple[str, ...]:
    rules = []
    for tool in iptables_tools():
        for table in _TABLES:
            listed = run(tool, "-t", table, "-S", check=False).stdout
            rules += [f"{tool} {table} {line}" for line in listed.splitlines()]
    return tuple(rules)


def host_state() -> HostState:
    links = json.loads(run("ip", "-j", "link", "show").stdout or "[]")
    routes = run("ip", "-4", "route", "show", "table", "all").stdout.splitlines()
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    sysctls = []
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            sysctls.append((name, (Path("/proc/sys") / name).read_text().strip()))
    return HostState(
        links=tuple(sorted(link["ifname"] for link in links)),
        routes=tuple(sorted(routes)),
        rules=_rules(),
        mounts=tuple(sorted(mounts)),
        sysctls=tuple(sysctls),
        paths=tuple(p for p in FIXED_PATHS if os.path.lexists(p)),
        pod_cgroups=tuple(str(c) for c in _controller_dirs() if (c / POD_CGROUP).exists()),
    )
