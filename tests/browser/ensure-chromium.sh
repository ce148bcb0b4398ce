#!/usr/bin/env bash
# Debian's Chromium for the browser tests: Playwright drives it; it never downloads a browser.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-chromium: chromium is missing; as root: apt-get install -y chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends chromium >/dev/null || {
    apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null
}
