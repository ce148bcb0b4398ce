"""A local etcd + kube-apiserver with RBAC, client-certificate admin and ServiceAccounts.

There is no controller-manager, scheduler or kubelet: objects are stored, validated,
defaulted, authorized and watched as in a real cluster, but pods never run, namespaces
never finish terminating and nothing garbage-collects.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import yaml

from tests.cluster import pki
from tests.cluster.build import Binaries, cache_root, cached_binaries
from tests.cluster.errors import ClusterError
from tests.cluster.host import NodeNetwork
from tests.cluster.proc import alive, free_port, spawn, start_time, stop_group

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_STATE_PREFIX = "threadkeeper-cluster-"
_CONTEXT = "threadkeeper-test"
# How long a TokenRequest-issued ServiceAccount token is asked to live; clusters may cap it.
_TOKEN_SECONDS = 24 * 3600

IdentityMethod = Literal["auto", "cert", "token"]


def _write_private(path: Path, data: bytes | str) -> Path:
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write_owner(state_dir: Path, children: Mapping[str, Mapping[str, int]]) -> None:
    """Record who owns `state_dir`, so `sweep_stale_state` can tell when it is abandoned."""
    owner = {"pid": os.getpid(), "start_time": start_time(os.getpid()), "children": children}
    _write_private(state_dir / "owner.json", json.dumps(owner))


def _kubeconfig_text(cluster: Mapping[str, Any], user: Mapping[str, Any]) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": _CONTEXT, "cluster": dict(cluster)}],
        "users": [{"name": _CONTEXT, "user": dict(user)}],
        "contexts": [{"name": _CONTEXT, "context": {"cluster": _CONTEXT, "user": _CONTEXT}}],
        "current-context": _CONTEXT,
    }
    return yaml.safe_dump(doc, sort_keys=False)


class Cluster:
    """A reachable API server, with an admin kubeconfig and helpers for tests.

    `kubectl` and `helm` are the binaries to run against it; `as_service_account` hands
    out kubeconfigs for other identities, written to a private directory that `close()`
    removes.
    """

    def __init__(
        self,
        *,
        kubeconfig: Path,
        server: str,
        cluster_entry: Mapping[str, Any],
        kubectl: Path | None,
        helm: Path | None,
        work_dir: Path,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.server = server
        self._cluster_entry = dict(cluster_entry)
        self._kubectl = kubectl
        self._helm = helm
        self.work_dir = work_dir
        self._identities: dict[tuple[str, str, str], Path] = {}
        self._lock = threading.Lock()

    @property
    def kubectl(self) -> Path:
        if self._kubectl is None:
            raise ClusterError("no kubectl: put one on PATH or run `python -m tests.cluster build`")
        return self._kubectl

    @property
    def helm(self) -> Path:
        if self._helm is None:
            raise ClusterError("no helm: put one on PATH or run `python -m tests.cluster build`")
        return self._helm

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses: KUBECONFIG set, kubectl and helm first on PATH."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        dirs = {str(p.parent) for p in (self._kubectl, self._helm) if p is not None}
        env["PATH"] = os.pathsep.join([*sorted(dirs), env.get("PATH", "")])
        return env

    def api_client(self, kubeconfig: Path | None = None) -> ApiClient:
        """A new `kubernetes.client.ApiClient` for the admin (or the given kubeconfig).

        The caller owns it and should `close()` it (or use it as a context manager).
        """
        # Imported here: the kubernetes package takes ~2 s to import, which the CLI
        # (`build`, `up`, `down`) never needs.
        from kubernetes import config

        path = str(kubeconfig or self.kubeconfig)
        api: ApiClient = config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
        return api

    def as_service_account(
        self, namespace: str, name: str, *, method: IdentityMethod = "auto"
    ) -> Path:
        """A kubeconfig path that authenticates as ServiceAccount `namespace/name`.

        "cert" (the default for a control plane started here) signs a client certificate
        with CN=system:serviceaccount:NS:NAME, so the ServiceAccount object need not
        exist. "token" (the default for an external KUBECONFIG cluster, whose CA key we do
        not hold) asks the TokenRequest API for a token, creating the ServiceAccount if
        it is missing; its namespace must exist. Either way RBAC sees the same user name
        and groups as for a pod running under that ServiceAccount.
        """
        chosen = self._default_method() if method == "auto" else method
        key = (namespace, name, chosen)
        with self._lock:
            if key not in self._identities:
                if chosen == "cert":
                    user = self._service_account_cert_user(namespace, name)
                else:
                    user = {"token": self._request_token(namespace, name)}
                directory = self.work_dir / "identities"
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / f"{namespace}.{name}.{chosen}.kubeconfig"
                _write_private(path, _kubeconfig_text(self._cluster_entry, user))
                self._identities[key] = path
            return self._identities[key]

    def _default_method(self) -> Literal["cert", "token"]:
        return "token"

    def _service_account_cert_user(self, namespace: str, name: str) -> dict[str, str]:
        raise ClusterError("client certificates need the cluster's CA key; use method='token'")

    def _request_token(self, namespace: str, name: str) -> str:
        from kubernetes import client
        from kubernetes.client import ApiException

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            try:
                core.read_namespaced_service_account(name, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
                core.create_namespaced_service_account(namespace, body)
            spec = client.V1TokenRequestSpec(audiences=[], expiration_seconds=_TOKEN_SECONDS)
            request = client.AuthenticationV1TokenRequest(spec=spec)
            response = core.create_namespaced_service_account_token(name, namespace, request)
            if response.status is None or not response.status.token:
                raise ClusterError(f"TokenRequest for {namespace}/{name} returned no token")
            return response.status.token

    def close(self) -> None:
        """Forget handed-out identities and remove their kubeconfigs."""
        with self._lock:
            self._identities.clear()
        shutil.rmtree(self.work_dir / "identities", ignore_errors=True)


def _merged_kubeconfig(paths: list[Path]) -> dict[str, Any]:
    """kubectl's merge rule for a KUBECONFIG list: the first file to define a name wins."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    seen: dict[str, set[str]] = {"clusters": set(), "contexts": set(), "users": set()}
    for path in paths:
        if not path.is_file():
            continue
        doc = yaml.safe_load(path.read_text()) or {}
        merged.setdefault("current-context", doc.get("current-context"))
        if not merged["current-context"]:
            merged["current-context"] = doc.get("current-context")
        for section in ("clusters", "contexts", "users"):
            for entry in doc.get(section) or []:
                if entry["name"] in seen[section]:
                    continue
                seen[section].add(entry["name"])
                # Relative file references are relative to the file that holds them.
                body = dict(entry.get(section[:-1]) or {})
                for field in ("certificate-authority", "client-certificate", "client-key"):
                    if field in body and not os.path.isabs(body[field]):
                        body[field] = str(path.parent / body[field])
                merged[section].append({"name": entry["name"], section[:-1]: body})
    return merged


class ExternalCluster(Cluster):
    """The cluster that $KUBECONFIG points at, used as is; nothing is built or started."""

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str) -> ExternalCluster:
        paths = [Path(p).expanduser() for p in kubeconfig.split(os.pathsep) if p]
        if not paths or not any(p.is_file() for p in paths):
            raise ClusterError(f"KUBECONFIG={kubeconfig!r} names no readable file")
        config = _merged_kubeconfig(paths)
        current = config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config["contexts"]}
        clusters = {c["name"]: c["cluster"] for c in config["clusters"]}
        if not current or current not in contexts:
            raise ClusterError(f"KUBECONFIG={kubeconfig!r} has no usable current-context")
        entry = clusters.get(contexts[current].get("cluster", ""))
        if not entry or "server" not in entry:
            raise ClusterError(f"context {current!r} in {kubeconfig!r} names no cluster server")
        work_dir = Path(tempfile.mkdtemp(prefix=_STATE_PREFIX + "external-"))
        _write_owner(work_dir, {})
        if len(paths) == 1:
            path = paths[0]
        else:
            path = _write_private(work_dir / "kubeconfig", yaml.safe_dump(config))
        cached = cached_binaries()

        def tool(name: str) -> Path | None:
            # The pinned build first: a distribution's kubectl may be far older.
            if cached is not None:
                return cached.bin_dir / name
            found = shutil.which(name)
            return Path(found) if found else None

        return cls(
            kubeconfig=path,
            server=str(entry["server"]),
            cluster_entry=entry,
            kubectl=tool("kubectl"),
            helm=tool("helm"),
            work_dir=work_dir,
        )

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.work_dir, ignore_errors=True)


class _PortClash(ClusterError):
    pass


_live: set[ControlPlane] = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        planes = list(_live)
    for plane in planes:
        with contextlib.suppress(Exception):
            plane.stop()


atexit.register(_stop_all_at_exit)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def sweep_stale_state() -> None:
    """Remove temp state dirs whose owning process died without cleaning up."""
    for directory in Path(tempfile.gettempdir()).glob(_STATE_PREFIX + "*"):
        owner = directory / "owner.json"
        try:
            data = json.loads(owner.read_text())
        except (OSError, ValueError):
            continue
        if start_time(int(data["pid"])) == data.get("start_time"):
            continue
        _stop_recorded(data.get("children", {}))
        shutil.rmtree(directory, ignore_errors=True)


def _stop_recorded(children: Mapping[str, Mapping[str, int]]) -> None:
    # Apiserver first, so it does not spend its shutdown retrying a vanished etcd.
    for name in ("kube-apiserver", "etcd"):
        child = children.get(name)
        if child and start_time(child["pid"]) == child["start_time"]:
            stop_group(child["pid"])


class ControlPlane(Cluster):
    """etcd and kube-apiserver as child processes, listening on 127.0.0.1 only (with a
    `node_network`, the API server listens on the node's bridge address instead).

    Start with `ControlPlane.start(binaries)` and end with `stop()` (or use it as a
    context manager). Unless `detached`, the children die with this process even when it
    is SIGKILLed, and an atexit hook stops any plane left running.
    """

    def __init__(
        self,
        *,
        binaries: Binaries,
        state_dir: Path,
        owns_state_dir: bool,
        detached: bool,
        node_network: NodeNetwork | None = None,
    ) -> None:
        self.binaries = binaries
        self.node_network = node_network
        self.state_dir = state_dir
        self._owns_state_dir = owns_state_dir
        self.detached = detached
        self.ca = pki.Authority()
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopped = False
        super().__init__(
            kubeconfig=state_dir / "kubeconfig",
            server="",
            cluster_entry={},
            kubectl=binaries.kubectl,
            helm=binaries.helm,
            work_dir=state_dir,
        )

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        binaries: Binaries,
        *,
        state_dir: Path | None = None,
        detached: bool = False,
        timeout: float = 90.0,
        node_network: NodeNetwork | None = None,
    ) -> ControlPlane:
        """Start etcd and kube-apiserver and return once `/readyz` answers ok.

        `detached` children outlive this process (for `python -m tests.cluster up`);
        stop them with `stop_detached(state_dir)`. `node_network` configures the API
        server for a node (`tests.cluster.node`): its Service range, ServiceAccount
        admission (a controller-manager makes the `default` accounts) and kubelet access.
        """
        sweep_stale_state()
        owns = state_dir is None
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix=_STATE_PREFIX))
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
        plane = cls(
            binaries=binaries,
            state_dir=state_dir,
            owns_state_dir=owns,
            detached=detached,
            node_network=node_network,
        )
        if not detached:
            with _live_lock:
                _live.add(plane)
        try:
            plane._start(timeout)
        except BaseException:
            plane.stop()
            raise
        return plane

    def _start(self, timeout: float) -> None:
        self._write_pki()
        for attempt in range(3):
            self.etcd_port, self.etcd_peer_port, self.apiserver_port = self._pick_ports()
            self.server = f"https://{self._bind_address()}:{self.apiserver_port}"
            try:
                self._launch(timeout)
            except _PortClash as clash:
                log.warning("port clash on attempt %d, retrying: %s", attempt + 1, clash)
                self._stop_children()
                # etcd's data dir remembers the peer URL it was bootstrapped with.
                shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
                (self.state_dir / "etcd").mkdir(mode=0o700)
                continue
            self._cluster_entry = {
                "server": self.server,
                "certificate-authority-data": _b64(self.ca.cert_pem),
            }
            admin = self.ca.issue(
                "threadkeeper-admin", organizations=["system:masters"], client=True
            )
            user = {
                "client-certificate-data": _b64(admin.cert_pem),
                "client-key-data": _b64(admin.key_pem),
            }
            _write_private(self.kubeconfig, _kubeconfig_text(self._cluster_entry, user))
            return
        raise ClusterError("could not find free ports for etcd and kube-apiserver in 3 tries")

    @staticmethod
    def _pick_ports() -> tuple[int, int, int]:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        a, b, c = sorted(ports)
        return a, b, c

    def _write_pki(self) -> None:
        pki_dir = self.state_dir / "pki"
        pki_dir.mkdir(exist_ok=True)
        serving = self.ca.issue(
            "kube-apiserver",
            dns_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ip_addresses=sorted({"127.0.0.1", self._bind_address(), self._kubernetes_service_ip()}),
            server=True,
        )
        kubelet_client = self.ca.issue(
            "kube-apiserver-kubelet-client", organizations=["system:masters"], client=True
        )
        # For the readiness probe, which must not depend on anything but the CA.
        probe = self.ca.issue("threadkeeper-probe", organizations=["system:masters"], client=True)
        signing = pki.signing_keypair()
        front_proxy = pki.front_proxy()
        for name, data in {
            "ca.crt": self.ca.cert_pem,
            "apiserver.crt": serving.cert_pem,
            "apiserver.key": serving.key_pem,
            "probe.crt": probe.cert_pem,
            "probe.key": probe.key_pem,
            "kubelet-client.crt": kubelet_client.cert_pem,
            "kubelet-client.key": kubelet_client.key_pem,
            "sa.pub": signing.public_pem,
            "sa.key": signing.private_pem,
            "front-proxy-ca.crt": front_proxy.ca_pem,
            "front-proxy-client.crt": front_proxy.client.cert_pem,
            "front-proxy-client.key": front_proxy.client.key_pem,
        }.items():
            _write_private(pki_dir / name, data)
        (self.state_dir / "etcd").mkdir(mode=0o700, exist_ok=True)
        (self.state_dir / "apiserver-certs").mkdir(exist_ok=True)

    def _etcd_args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            str(self.binaries.etcd),
            "--name=threadkeeper",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=threadkeeper={peer}",
            "--initial-cluster-state=new",
            # Test data is thrown away; fsync would dominate start-up and write latency.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _service_cidr(self) -> str:
        net = self.node_network
        return net.service_cidr if net is not None else SERVICE_CLUSTER_IP_RANGE

    def _kubernetes_service_ip(self) -> str:
        net = self.node_network
        return net.kubernetes_service_ip if net is not None else "10.0.0.1"

    def _bind_address(self) -> str:
        # With a node, on the bridge address: pods reach it through the `kubernetes`
        # Service, and it is as local to the host as loopback.
        net = self.node_network
        return net.gateway if net is not None else "127.0.0.1"

    def _node_args(self) -> list[str]:
        pki_dir = self.state_dir / "pki"
        if self.node_network is None:
            return [
                # No controller-manager creates `default` ServiceAccounts, so this
                # admission plugin would reject every pod.
                "--disable-admission-plugins=ServiceAccount",
                # The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints
                # reject, and no pod could use it.
                "--endpoint-reconciler-type=none",
            ]
        return [
            "--endpoint-reconciler-type=lease",
            f"--kubelet-certificate-authority={pki_dir / 'ca.crt'}",
            f"--kubelet-client-certificate={pki_dir / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki_dir / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            # The aggregator dials an APIService's endpoint (a pod IP, routed over the
            # bridge like the host's reads of Prometheus) rather than its ClusterIP, which
            # only kube-proxy's rules make reachable from the host once it has synced.
            "--enable-aggregator-routing=true",
        ]

    def _aggregation_args(self) -> list[str]:
        """The aggregation layer's front proxy, which extension API servers authenticate."""
        pki_dir = self.state_dir / "pki"
        return [
            f"--requestheader-client-ca-file={pki_dir / 'front-proxy-ca.crt'}",
            f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki_dir / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki_dir / 'front-proxy-client.key'}",
        ]

    def _apiserver_args(self) -> list[str]:
        pki_dir = self.state_dir / "pki"
        return [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self._bind_address()}",
            # Without it the apiserver looks for a default route to pick an address.
            f"--advertise-address={self._bind_address()}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
            f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
            f"--client-ca-file={pki_dir / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={self._service_cidr()}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
            *self._aggregation_args(),
            *self._node_args(),
            "--allow-privileged=true",
            "--profiling=false",
        ]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log_path = self.state_dir / f"{name}.log"
        proc = spawn(args, log_path, cwd=self.state_dir, detached=self.detached)
        self._procs[name] = proc
        self._record_children()
        return proc

    def _record_children(self) -> None:
        children = {
            name: {"pid": p.pid, "start_time": start_time(p.pid) or 0}
            for name, p in self._procs.items()
        }
        _write_owner(self.state_dir, children)

    def _fail(self, name: str, why: str) -> ClusterError:
        log_path = self.state_dir / f"{name}.log"
        tail = _log_tail(log_path)
        message = f"{name} {why}; last lines of {log_path}:\n{tail}"
        if "address already in use" in tail:
            return _PortClash(message)
        return ClusterError(message)

    def _wait(self, name: str, url: str, client: httpx.Client, deadline: float) -> None:
        proc = self._procs[name]
        while True:
            if proc.poll() is not None:
                raise self._fail(name, f"exited with code {proc.returncode} while starting")
            with contextlib.suppress(httpx.HTTPError):
                response = client.get(url, timeout=2.0)
                if response.status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise self._fail(name, f"was not ready at {url} in time")
            time.sleep(0.1)

    def _launch(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._spawn("etcd", self._etcd_args())
        with httpx.Client(trust_env=False) as plain:
            self._wait("etcd", f"http://127.0.0.1:{self.etcd_port}/health", plain, deadline)
        self._spawn("kube-apiserver", self._apiserver_args())
        pki_dir = self.state_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        context.load_cert_chain(str(pki_dir / "probe.crt"), str(pki_dir / "probe.key"))
        with httpx.Client(verify=context, trust_env=False) as tls:
            self._wait("kube-apiserver", f"{self.server}/readyz", tls, deadline)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def ports(self) -> dict[str, int]:
        return {
            "etcd": self.etcd_port,
            "etcd-peer": self.etcd_peer_port,
            "kube-apiserver": self.apiserver_port,
        }

    def logs(self) -> dict[str, Path]:
        return {name: self.state_dir / f"{name}.log" for name in self._procs}

    def _stop_children(self) -> None:
        for name in ("kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            stop_group(proc.pid)
            # stop_group reaps already; this only records the returncode.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)

    def stop(self) -> None:
        """Stop both processes and delete the state directory. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        with _live_lock:
            _live.discard(self)
        try:
            self._stop_children()
        finally:
            super().close()
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- identities ----------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, common_name: str, organizations: list[str]) -> Path:
        """A kubeconfig for a client certificate with this CN and these groups."""
        cert = self.ca.issue(common_name, organizations=organizations, client=True)
        user = {
            "client-certificate-data": _b64(cert.cert_pem),
            "client-key-data": _b64(cert.key_pem),
        }
        return _write_private(path, _kubeconfig_text(self._cluster_entry, user))

    def _default_method(self) -> Literal["cert", "token"]:
        return "cert"

    def _service_account_cert_user(self, namespace: str, name: str) -> dict[str, str]:
        # The same user name and groups the ServiceAccount token authenticator produces.
        cert = self.ca.issue(
            f"system:serviceaccount:{namespace}:{name}",
            organizations=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            client=True,
        )
        return {
            "client-certificate-data": _b64(cert.cert_pem),
            "client-key-data": _b64(cert.key_pem),
        }


# --- the detached cluster of `python -m tests.cluster up` ---------------------------------


def detached_state_dir() -> Path:
    return cache_root() / "run"


def write_detached_state(plane: ControlPlane) -> None:
    state = {
        "server": plane.server,
        "kubeconfig": str(plane.kubeconfig),
        "bin_dir": str(plane.binaries.bin_dir),
        "ports": plane.ports(),
        "children": {
            name: {"pid": pid, "start_time": start_time(pid)} for name, pid in plane.pids().items()
        },
    }
    _write_private(plane.state_dir / "state.json", json.dumps(state, indent=2) + "\n")
    for name, pid in plane.pids().items():
        _write_private(plane.state_dir / f"{name}.pid", f"{pid}\n")


def read_detached_state(state_dir: Path) -> dict[str, Any] | None:
    """The recorded state if that detached cluster is still running, else None."""
    try:
        state: dict[str, Any] = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    children = state.get("children", {})
    running = all(
        start_time(c["pid"]) == c["start_time"] and alive(c["pid"]) for c in children.values()
    )
    return state if children and running else None


def stop_detached(state_dir: Path) -> bool:
    """Stop a detached cluster and remove its state; False if none was recorded there."""
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        state = None
    if state is None:
        # A half-written state dir (an interrupted `up`) still has owner.json.
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((state_dir / "owner.json").read_text())
    if state is not None:
        _stop_recorded(state.get("children", {}))
    existed = state_dir.exists()
    shutil.rmtree(state_dir, ignore_errors=True)
    return existed and state is not None
