# threadkeeper developer entry points. Everything installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
PYTEST_ARGS ?=
# The default suite's pytest-xdist workers; which tests share one: tests/support/workers.py.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadgroup
# The node tier's binary sets (tests/cluster/README.md), and where `make test` logs their build.
NODE_SETS := --node --images --monitoring --metrics --skaffold
NODE_BUILD_LOG := $(or $(TMPDIR),/tmp)/threadkeeper-node-build.log
# The node tier needs root (bridges, iptables, mounts): on by default for root, off otherwise
# (`make test` then says so). NODE_TIER=1 forces it, NODE_TIER= skips it.
NODE_TIER ?= $(shell [ "$$(id -u)" = 0 ] && echo 1)

.PHONY: help uv sync js ui-deps ui-build ui run test test-node lint fmt cluster-build cluster-up cluster-down bench clean

help:
	@echo "make run          serve on 127.0.0.1:8000 (embedded Postgres, offline model)"
	@echo "make ui           the Agent Chat UI on http://127.0.0.1:3000, talking to \`make run\`"
	@echo "make test         the whole suite, then (as root) the node tier (builds what is missing)"
	@echo "make lint         ruff + mypy"
	@echo "make cluster-up   start a local kube-apiserver + etcd; prints the KUBECONFIG line"
	@echo "make cluster-up NODE=1  also a node that runs pods (root): kubelet, containerd, CNI, kube-proxy, CoreDNS, registry,"
	@echo "                 and the Dockerfile's image as threadkeeper.local/threadkeeper:dev"
	@echo "make test-node    the one-node cluster tier (pods, Services, DNS, the project's image)"
	@echo "make cluster-down stop it"
	@echo "make bench        the benchmarks against their baselines (QUICK=1: a 3-minute smoke run)"

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check 'uv>=0.8'

sync: uv
	$(UV) sync --locked

# The JS langgraph-sdk the streaming tests drive (tests/js, pinned by its lock file).
js:
	cd tests/js && npm ci --no-audit --no-fund

# The Agent Chat UI (examples/chat-ui, pinned by its lock file) the browser tests drive; npm ci
# again only when the lock file changed since the last install.
ui-deps:
	cd examples/chat-ui && { [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; }

# `next build`, once (again only when its sources or lock file change): minutes on two cores,
# so `make test` does it before pytest, outside any test's timeout.
ui-build: sync ui-deps
	$(UV) run python -m tests.browser.chat_ui build

ui: ui-build
	cd examples/chat-ui && NEXT_TELEMETRY_DISABLED=1 npx next start -H 127.0.0.1 -p 3000

run: sync
	$(UV) run threadkeeper-service serve --host 127.0.0.1 --port 8000

lint: sync
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy
	$(UV) run mypy --strict examples/refund-agent/src/refund_agent

cluster-build: sync
	$(if $(NODE),bash tests/cluster/ensure-host-packages.sh)
	$(UV) run python -m tests.cluster build $(if $(NODE),--node --images)

cluster-up: sync
	$(if $(NODE),bash tests/cluster/ensure-host-packages.sh)
	$(UV) run python -m tests.cluster up $(if $(NODE),--node)

cluster-down: sync
	$(UV) run python -m tests.cluster down

# With the node tier, its binaries build at the lowest CPU priority while the default suite
# runs (its processes mostly wait on each other): a cold run builds them in spare CPU.
test: sync js ui-build cluster-build
	bash deploy/tools/ensure-tools.sh
	bash tests/browser/ensure-chromium.sh
ifeq ($(NODE_TIER),)
	$(UV) run pytest $(XDIST) $(PYTEST_ARGS)
	@echo "make test: skipped the node tier (it needs root): run \`make test-node\` as root"
else
	bash tests/cluster/ensure-host-packages.sh
	setsid nice -n 19 $(UV) run --no-sync python -m tests.cluster build $(NODE_SETS) \
		> $(NODE_BUILD_LOG) 2>&1 & builder=$$!; \
	trap 'kill -- -$$builder 2>/dev/null' EXIT; \
	$(UV) run pytest $(XDIST) $(PYTEST_ARGS) || exit; \
	wait $$builder || { tail -n 40 $(NODE_BUILD_LOG); echo "make test: the node tier's build failed"; exit 1; }
	$(MAKE) --no-print-directory test-node PYTEST_ARGS="$(PYTEST_ARGS)"
endif

# The one-node tier (root; builds kubelet, containerd, runc, CNI, CoreDNS, BuildKit, Prometheus
# and its operator, metrics-server and skaffold once, and the project's image from its
# Dockerfile whenever the files it copies change).
test-node: sync
	bash tests/cluster/ensure-host-packages.sh
	$(UV) run python -m tests.cluster build $(NODE_SETS)
	$(UV) run pytest -m node tests/cluster $(PYTEST_ARGS)

# The bench group adds `langgraph dev` (baseline c); `make test` syncs it away again. Aegra
# (baseline d) gets a Python 3.12 environment of its own, tests/perf/aegra/.venv, made from its
# lock by the first benchmark that needs it (seconds; skipped, saying why, where it cannot be).
bench: uv ui-deps
	$(UV) sync --locked --group bench
	$(UV) run --locked --group bench python -m tests.perf $(if $(QUICK),--quick) $(BENCH_ARGS)

fmt: sync
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache
