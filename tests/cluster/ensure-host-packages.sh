#!/usr/bin/env bash
# Debian packages the one-node cluster needs on the host, installed when missing (as root):
#   iptables        kube-proxy's Service rules and the node's own forwarding guard
#   libseccomp-dev  runc is built with seccomp (containerd gives pods the RuntimeDefault profile)
#   busybox-static  the busybox and pause images made here (no registry is reachable)
#   debootstrap     the python:3.11-slim-bookworm stand-in the project's image builds on
set -euo pipefail
packages=(iptables libseccomp-dev busybox-static debootstrap)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "ensure-host-packages: missing ${missing[*]}: run as root or apt-get install them" >&2
	exit 1
fi
echo "ensure-host-packages: installing ${missing[*]}" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
