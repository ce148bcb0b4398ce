"""The RetentionPolicy operator (``threadkeeper-reaper run``): prunes on each policy's schedule.

The entry point: :func:`run_operator` builds the shared context, registers the handlers and
runs kopf in this event loop with the settings below. The work lives in small modules:

- ``reaper.handlers``: the kopf handlers (registration only) and why there are no finalizers;
- ``reaper.reconcile``: one tick of one policy (is it due, the prune run, its endings);
- ``reaper.schedule``: when a policy is due (level-triggered: the run-now annotation, the
  generation, ``status.nextRunTime``), so restarts and edits need no bookkeeping;
- ``reaper.status``: the status fields, the ``Ready``/``Stalled`` conditions and the Events;
- ``reaper.sizes``: table sizes after each run and at most every ``stats_interval`` between;
- ``reaper.context``: what the handlers share and keep per policy, and a policy's metric
  series and heartbeat from when it appears until it goes;
- ``reaper.kube``: the API connection, the policy's Secret, posting Events;
- ``reaper.compat``: the kopf internals the operator relies on, checked against kopf.

RBAC (namespaced Role; the same rules are in ``deploy/rbac/reaper-role-rules.yaml``):
retentionpolicies get/list/watch/patch, retentionpolicies/status get/patch, events create
(core and events.k8s.io), secrets get. Standalone (no peering objects) and with cluster
scanning disabled, so no namespace or CRD permissions are needed.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import kopf
import structlog
from prometheus_client import CollectorRegistry

from threadkeeper.reaper.context import DEFAULT_TICK, OperatorContext
from threadkeeper.reaper.handlers import build_registry
from threadkeeper.reaper.kube import Connection, SecretReader
from threadkeeper.reaper.metrics import ReaperMetrics
from threadkeeper.reaper.policy import GROUP
from threadkeeper.reaper.probe import Heartbeat
from threadkeeper.reaper.schedule import RETRY_AFTER

log = structlog.get_logger(__name__)


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # One replica (Recreate) and the engine's advisory lock: no KopfPeering objects or RBAC.
    settings.peering.standalone = True
    # Namespaced Role only: no cluster-wide namespace/CRD scanning.
    settings.scanning.disabled = True
    # kopf would otherwise post its own INFO log lines (every timer tick's success) as Events.
    # This level also filters kopf.info(), so Normal events go through kopf.event(), which it
    # does not filter (kopf/_core/engines/posting.py).
    settings.posting.level = logging.WARNING
    # Irrelevant while no handler needs a finalizer; a project-owned name if one ever does.
    settings.persistence.finalizer = f"{GROUP}/reaper"
    return settings


async def run_operator(
    *,
    namespaces: list[str],
    connection: Connection,
    registry: CollectorRegistry,
    liveness_port: int | None,
    tick_interval: float = DEFAULT_TICK,
    retry_after: timedelta = RETRY_AFTER,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    heartbeat: Heartbeat | None = None,
) -> None:
    """Run the operator in this event loop until ``stop_flag`` is set (or a signal)."""
    ctx = OperatorContext(
        secrets=SecretReader(connection.configuration()),
        metrics=ReaperMetrics(registry),
        heartbeat=heartbeat or Heartbeat(stale_after=max(3 * tick_interval, 30.0)),
        tick_interval=tick_interval,
        retry_after=retry_after,
    )
    kopf_registry = build_registry(ctx, connection)

    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    log.info("operator_starting", namespaces=namespaces, liveness=liveness)
    await kopf.operator(
        registry=kopf_registry,
        settings=operator_settings(),
        namespaces=namespaces,
        clusterwide=False,
        standalone=True,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
