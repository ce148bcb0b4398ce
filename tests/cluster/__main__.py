"""Command line: `python -m tests.cluster build|up|down|env|pin`.

Machine-readable results go to stdout (binary paths, `export` lines for `eval`);
progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.cluster import appimage, build, controlplane, node, rootfs
from tests.cluster.errors import ClusterError


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _exports(state: dict[str, object]) -> list[str]:
    kubeconfig = shlex.quote(str(state["kubeconfig"]))
    bin_dir = shlex.quote(str(state["bin_dir"]))
    return [f"export KUBECONFIG={kubeconfig}", f'export PATH={bin_dir}:"$PATH"']


def cmd_build(args: argparse.Namespace) -> int:
    binaries = build.ensure_binaries(progress=_err)
    paths = binaries.all()
    if args.node:
        paths |= build.ensure_node_binaries(progress=_err).all()
    if args.images:
        paths |= build.ensure_image_tools(progress=_err).all()
    if args.monitoring:
        paths |= build.ensure_monitoring(progress=_err).all()
    if args.metrics:
        paths |= build.ensure_metrics(progress=_err).all()
    if args.skaffold:
        paths |= build.ensure_skaffold(progress=_err).all()
    for name, path in paths.items():
        _out(f"{name}={path}")
    return 0


def node_state_dir() -> Path:
    return build.cache_root() / "run-node"


def cmd_up_node(args: argparse.Namespace) -> int:
    state = node.running_node()
    if state is None:
        binaries = build.ensure_binaries(progress=_err)
        node_binaries = build.ensure_node_binaries(progress=_err)
        image_tools = build.ensure_image_tools(progress=_err)
        _err("starting the control plane, the node and the registry ...")
        cluster = node.NodeCluster.start(
            binaries,
            node_binaries,
            image_tools=image_tools,
            state_dir=node_state_dir(),
            detached=True,
            timeout=args.timeout,
        )
        _err(f"node {node.NODE_NAME} is Ready (state in {cluster.state_dir})")
        state = node.running_node()
        if state is None:
            raise ClusterError("the node cluster exited right after starting")
    elif not state.get("detached"):
        owner = state["owner"]["pid"]
        raise ClusterError(
            f"a node cluster is already running, owned by process {owner} (a test run); "
            "only one fits on a machine: wait for that run to end"
        )
    else:
        _err(f"a node cluster is already running (state in {state['state_dir']})")
    _publish_app_image(state)
    _err(
        f"kubectl is in {state['bin_dir']}, ctr in {state['node_bin_dir']}; "
        "stop it with `python -m tests.cluster down`"
    )
    _out(_exports(state)[0])
    return 0


def _publish_app_image(state: dict[str, object]) -> None:
    """Build the tree's image if its inputs changed, and make it pullable by the node."""
    built = appimage.app_image(
        build.ensure_image_tools(progress=_err),
        build.ensure_node_binaries(progress=_err),
        rootfs.python_base_archive(_err),
        _err,
    )
    node.publish_image(state, built.archive, built.refs)
    _err(f"the project's image is {appimage.APP_IMAGE} (also {built.ref}), pullable by the node")


def cmd_up(args: argparse.Namespace) -> int:
    if args.node:
        return cmd_up_node(args)
    state_dir = controlplane.detached_state_dir()
    state = controlplane.read_detached_state(state_dir)
    if state is None:
        # Whatever is there belongs to a cluster that died or an `up` that was cut short.
        controlplane.stop_detached(state_dir)
        binaries = build.ensure_binaries(progress=_err)
        _err("starting etcd and kube-apiserver ...")
        plane = controlplane.ControlPlane.start(
            binaries, state_dir=state_dir, detached=True, timeout=args.timeout
        )
        controlplane.write_detached_state(plane)
        state = controlplane.read_detached_state(state_dir)
        if state is None:
            controlplane.stop_detached(state_dir)
            raise ClusterError("the control plane exited right after starting")
        _err(f"control plane ready at {state['server']} (state in {state_dir})")
    else:
        _err(f"control plane already running at {state['server']}")
    _err(f"kubectl and helm are in {state['bin_dir']}; stop it with `python -m tests.cluster down`")
    _out(_exports(state)[0])
    return 0


def _down_node() -> None:
    recorded = node.recorded_node()
    if recorded is None:
        return
    if not recorded.get("detached") and node.running_node() is not None:
        owner = recorded["owner"]["pid"]
        _err(f"the node cluster of process {owner} (a test run) is running; leaving it alone")
        return
    node.teardown_recorded(recorded)
    _err("node cluster stopped; its processes, mounts, links, iptables rules are gone")


def cmd_down(_: argparse.Namespace) -> int:
    _down_node()
    state_dir = controlplane.detached_state_dir()
    if controlplane.stop_detached(state_dir):
        _err("control plane stopped and its state removed")
    else:
        _err("no control plane was running")
    return 0


def cmd_env(_: argparse.Namespace) -> int:
    state = node.running_node() or controlplane.read_detached_state(
        controlplane.detached_state_dir()
    )
    if state is None:
        _err("no control plane is running; start one with `python -m tests.cluster up`")
        return 1
    for line in _exports(state):
        _out(line)
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    build.pin(
        progress=_err,
        node=args.node,
        images=args.images,
        monitoring=args.monitoring,
        metrics=args.metrics,
        skaffold=args.skaffold,
    )
    _err(f"regenerated the wrapper modules under {build.GO_DIR}; commit go.mod and go.sum")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description="Build and run a local Kubernetes control plane for the tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build and cache the binaries, print their paths")
    build_cmd.add_argument(
        "--node", action="store_true", help="also the kubelet, containerd, runc, CNI, CoreDNS set"
    )
    build_cmd.add_argument(
        "--images", action="store_true", help="also buildkitd, buildctl and a registry"
    )
    build_cmd.add_argument(
        "--monitoring",
        action="store_true",
        help="also Prometheus, the Prometheus Operator and its config reloader",
    )
    build_cmd.add_argument(
        "--metrics", action="store_true", help="also metrics-server (the HPA's CPU metrics)"
    )
    build_cmd.add_argument(
        "--skaffold", action="store_true", help="also skaffold, built from its own module"
    )
    up = sub.add_parser("up", help="start a detached control plane, print `export KUBECONFIG=`")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    up.add_argument(
        "--node",
        action="store_true",
        help="also a node (kubelet on containerd+runc, CNI, kube-proxy, CoreDNS, a registry) "
        "and the project's image, threadkeeper.local/threadkeeper:dev (root)",
    )
    sub.add_parser("down", help="stop the detached control plane and remove its state")
    sub.add_parser("env", help="print export lines for the running detached control plane")
    pin = sub.add_parser("pin", help="regenerate go/*/go.mod and go.sum from build.py's versions")
    pin.add_argument("--node", action="store_true", help="the node set's modules instead")
    pin.add_argument("--images", action="store_true", help="the image tools' modules instead")
    pin.add_argument(
        "--monitoring", action="store_true", help="Prometheus' and its operator's modules instead"
    )
    pin.add_argument("--metrics", action="store_true", help="metrics-server's module instead")
    pin.add_argument("--skaffold", action="store_true", help="the pin of skaffold's source instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # One line per readiness poll would drown the progress messages.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    handlers = {
        "build": cmd_build,
        "up": cmd_up,
        "down": cmd_down,
        "env": cmd_env,
        "pin": cmd_pin,
    }
    try:
        return handlers[args.command](args)
    except ClusterError as exc:
        _err(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
