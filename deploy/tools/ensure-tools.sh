#!/usr/bin/env bash
# Install the command-line tools the chart tests need that no Python package ships.
# Idempotent and silent when everything is present; progress goes to stderr otherwise.
#
#   promtool  from Debian's `prometheus` package. Only the binary is extracted
#             (`apt-get download` + `dpkg -x`): installing the package would pull a web UI's
#             JavaScript and start a Prometheus daemon on :9090, which the tests do not want.
#
# helm and kubectl come from tests/cluster (`python -m tests.cluster build`), hadolint and
# check-jsonschema from the uv dev group, and the skaffold / prometheus-operator schemas from
# the Go module proxy (fetched and cached by the tests themselves).
set -euo pipefail

PROMTOOL_DEST="${PROMTOOL_DEST:-}"

log() { printf 'ensure-tools: %s\n' "$*" >&2; }

have_promtool() {
	command -v promtool >/dev/null 2>&1 && return 0
	[ -x /usr/local/bin/promtool ] && return 0
	[ -x "${HOME:-/nonexistent}/.local/bin/promtool" ] && return 0
	return 1
}

install_promtool() {
	if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
		log "promtool is missing and this is not a Debian-like system: install Prometheus' promtool (2.x) and put it on PATH"
		return 1
	fi
	local dest="$PROMTOOL_DEST"
	if [ -z "$dest" ]; then
		if [ -w /usr/local/bin ]; then dest=/usr/local/bin; else dest="$HOME/.local/bin"; fi
	fi
	local work
	work="$(mktemp -d)"
	# shellcheck disable=SC2064  # expand now: $work is local
	trap "rm -rf '$work'" RETURN
	log "installing promtool from Debian's prometheus package into $dest"
	if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
		if [ "$(id -u)" -ne 0 ]; then
			log "apt-get download prometheus failed; run 'sudo apt-get update' (or this script as root)"
			return 1
		fi
		log "refreshing the package lists (apt-get update)"
		apt-get update -qq >/dev/null
		(cd "$work" && apt-get download prometheus >/dev/null)
	fi
	dpkg -x "$work"/prometheus_*.deb "$work/root"
	mkdir -p "$dest"
	install -m 0755 "$work/root/usr/bin/promtool" "$dest/promtool"
	log "$("$dest/promtool" --version 2>&1 | head -n1)"
}

have_promtool || install_promtool
