"""The RetentionPolicy operator: kopf handlers that prune on each policy's schedule.

How it works
------------
- One short kopf **timer** per RetentionPolicy (``tick_interval``, 10 s by default) decides
  from the object alone whether a run is due (``reaper.schedule.decide``): the run-now
  annotation differs from ``status.lastRunNowHandled``, or the generation differs from
  ``status.observedGeneration`` (new policy, spec edit), or ``status.nextRunTime`` has passed.
  Level-triggered, so restarts and edits need no bookkeeping beyond the status.
- A due run reads the database URL from the policy's Secret (``spec.database.secretRef``, same
  namespace, with the operator's own credentials), runs ``reaper.engine.prune`` (async psycopg:
  it awaits, never blocks the loop) and writes the status through the status subresource
  (kopf applies the timer's ``patch.status`` after the handler returns).
- A long prune never stalls other handlers: kopf runs every object's timer in its own asyncio
  task and a timer never overlaps with itself, so a prune only delays its *own* policy's next
  tick. The engine stops itself at ``limits.maxDuration`` between threads; an
  ``asyncio.timeout`` of maxDuration plus a grace also cuts a run stuck inside one statement
  (closing the connection drops the advisory lock with the session).
- Table sizes are refreshed after every run and, on their own, at most every
  ``stats_interval`` (60 s) from the same tick.
- Status ``conditions``: ``Ready`` (True after a successful run; False with the failure's
  reason) and ``Stalled`` (True while the spec, the Secret or the database stops the policy:
  ``InvalidSpec``, ``SecretNotFound``, ``SecretKeyMissing``, ``SecretForbidden``,
  ``DatabaseUnreachable``, ``InvalidDatabaseURL``, ``InternalError``; retried after at most 30 s).
- Every failure, whether the run could not start (Stalled), was cut by its timeout or reported
  Failed threads, counts in ``threadkeeper_prune_runs_total{outcome="Failed"}``.
- Kubernetes Events: ``Pruned`` / ``DryRun`` / ``PruneSkipped`` (Normal) per run,
  ``PruneFailed`` and the Stalled reasons (Warning) when they start.

No finalizers
-------------
Nothing has to happen when a policy is deleted, so the operator must never block deletion:
otherwise removing the operator before its policies (``helm uninstall``, a namespace deletion)
leaves them, and their namespace, stuck on kopf's finalizer. kopf marks every timer as needing
a finalizer (``requires_finalizer=True`` in ``kopf/on.py``, not configurable), so
``reaper.compat.drop_finalizer_requirement`` re-registers the spawning handlers without that
mark, and there are no ``on.delete`` handlers. Without a finalizer kopf does not stop the timer
of a deleted object by itself (it only does on a deletionTimestamp), so an ``on.event`` spy
tracks live policies and the timer's ``when`` filter, which kopf re-checks on every event,
stops the timer of a deleted one. The spy also drops the deleted policy's metric series. No
kopf progress annotations are written either: there are no on.create/update handlers.

RBAC (namespaced Role; the same rules are in ``deploy/rbac/reaper-role-rules.yaml``):
retentionpolicies get/list/watch/patch, retentionpolicies/status get/patch, events create
(core and events.k8s.io), secrets get. Standalone (no peering objects) and with cluster
scanning disabled, so no namespace or CRD permissions are needed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config
import psycopg
import structlog
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from reaper import schedule, stats
from reaper.compat import drop_finalizer_requirement
from reaper.db import DatabaseUnavailable, InvalidDatabaseUrl, connect
from reaper.durations import parse_duration
from reaper.engine import prune
from reaper.metrics import ReaperMetrics
from reaper.policy import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    PolicyError,
    RetentionPolicy,
    parse_policy,
)
from reaper.probe import Heartbeat
from reaper.summary import Outcome, PruneSummary, ResumeCursor

log = structlog.get_logger(__name__)

DEFAULT_TICK = 10.0
DEFAULT_STATS_INTERVAL = 60.0
# On top of maxDuration: the engine checks its budget between threads, so the last thread's
# transaction (bounded by statementTimeout) and the backlog count may run past it.
RUN_GRACE = timedelta(seconds=60)
FALLBACK_INTERVAL = timedelta(minutes=10)
SECRET_TIMEOUT = 10.0


class Stalled(Exception):
    """The policy cannot run until something outside the operator changes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# -- the Secret ----------------------------------------------------------------------------


class SecretReader:
    """Reads one key of a Secret with the operator's credentials (sync client, in a thread)."""

    def __init__(self, configuration: kubernetes.client.Configuration) -> None:
        self._api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))

    def _read(self, namespace: str, name: str, key: str) -> str:
        try:
            secret = self._api.read_namespaced_secret(
                name, namespace, _request_timeout=SECRET_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                raise Stalled("SecretNotFound", f"Secret {name} not found") from None
            if exc.status == 403:
                raise Stalled(
                    "SecretForbidden", f"the operator may not read Secret {name}"
                ) from None
            raise
        data = secret.data or {}
        if key not in data:
            raise Stalled("SecretKeyMissing", f"Secret {name} has no key {key!r}")
        try:
            return base64.b64decode(data[key]).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            raise Stalled("SecretKeyMissing", f"Secret {name} key {key!r} is not text") from None

    async def read(self, namespace: str, name: str, key: str) -> str:
        return await asyncio.to_thread(self._read, namespace, name, key)


# -- per-policy memory (derived, never needed by another replica) --------------------------


@dataclass
class _Memory:
    # What this process last wrote to the status: the timer may tick again before the watch
    # brings that write back, and must not run twice for one run-now request or spec edit.
    written: dict[str, Any] = field(default_factory=dict)
    resume: ResumeCursor = field(default_factory=ResumeCursor)
    stats_at: datetime | None = None


@dataclass
class OperatorContext:
    """Everything the handlers share; built once per operator."""

    secrets: SecretReader
    metrics: ReaperMetrics
    heartbeat: Heartbeat
    tick_interval: float = DEFAULT_TICK
    stats_interval: float = DEFAULT_STATS_INTERVAL
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    live: set[str] = field(default_factory=set)
    memory: dict[str, _Memory] = field(default_factory=dict)


# -- one run -------------------------------------------------------------------------------


def _document(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": dict(body.get("spec") or {}),
    }


def _last_success(body: Mapping[str, Any]) -> float:
    """When the policy last succeeded: ``status.lastSuccessTime``, else its creation."""
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    for value in (status.get("lastSuccessTime"), meta.get("creationTimestamp")):
        moment = schedule.parse_time(value)
        if moment is not None:
            return moment.timestamp()
    return 0.0


def _interval(spec: Mapping[str, Any]) -> timedelta:
    try:
        return parse_duration(str((spec.get("schedule") or {}).get("interval", "10m")))
    except ValueError:
        return FALLBACK_INTERVAL


def _stalled_conditions(reason: str, message: str, generation: int | None) -> list[dict[str, Any]]:
    return [
        schedule.condition("Ready", False, reason, message, generation=generation),
        schedule.condition("Stalled", True, reason, message, generation=generation),
    ]


def _run_conditions(summary: PruneSummary, generation: int | None) -> list[dict[str, Any]]:
    ok = schedule.condition(
        "Stalled", False, "AsExpected", "the policy can run", generation=generation
    )
    if summary.outcome is Outcome.SUCCEEDED:
        reason = "DryRunCompleted" if summary.dry_run else "PruneSucceeded"
        ready = schedule.condition("Ready", True, reason, summary.message, generation=generation)
    elif summary.outcome is Outcome.FAILED:
        ready = schedule.condition(
            "Ready", False, "PruneFailed", summary.message, generation=generation
        )
    else:
        # Another pruner holds the database: nothing about this policy is known to be wrong.
        return [ok]
    return [ready, ok]


async def _collect_stats(
    ctx: OperatorContext, conn: Any, namespace: str, name: str, max_idle: timedelta | None
) -> dict[str, Any]:
    collected = await stats.collect(conn, max_idle=max_idle)
    ctx.metrics.observe_stats(collected, namespace=namespace, policy=name)
    tables: dict[str, Any] = collected.to_json()["tables"]
    return tables


async def _stats_after_run(
    ctx: OperatorContext, conn: Any, policy: RetentionPolicy, namespace: str, name: str
) -> dict[str, Any] | None:
    """Table sizes after a run; None when the database refuses (the run reported why)."""
    threads = policy.spec.threads
    try:
        return await _collect_stats(
            ctx, conn, namespace, name, threads.max_idle_delta if threads else None
        )
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        log.info("stats_failed", namespace=namespace, policy=name, error=type(exc).__name__)
        return None


async def _attempt(
    ctx: OperatorContext, body: kopf.Body, uid: str, namespace: str, memory: _Memory
) -> tuple[PruneSummary | None, dict[str, Any] | None]:
    """Parse, read the Secret, connect, prune and measure: the summary (None: timed out) and
    the table sizes; Stalled for what stops the policy."""
    try:
        policy = parse_policy(_document(body))
    except PolicyError as exc:
        raise Stalled("InvalidSpec", str(exc)) from None
    name = policy.metadata.name
    ref = policy.spec.database.secret_ref
    url = await ctx.secrets.read(namespace, ref.name, ref.key)
    budget = policy.spec.limits.max_duration_delta + RUN_GRACE
    ctx.heartbeat.run_started(uid, budget.total_seconds())
    try:
        conn = await connect(url)
    except DatabaseUnavailable as exc:
        raise Stalled("DatabaseUnreachable", f"cannot connect to the database: {exc}") from None
    except InvalidDatabaseUrl as exc:
        raise Stalled("InvalidDatabaseURL", f"Secret {ref.name} key {ref.key!r}: {exc}") from None
    tables: dict[str, Any] | None = None
    try:
        try:
            async with asyncio.timeout(budget.total_seconds()):
                summary = await prune(conn, policy, resume=memory.resume)
        except TimeoutError:
            summary = None
        if summary is not None and summary.outcome is not Outcome.SKIPPED:
            tables = await _stats_after_run(ctx, conn, policy, namespace, name)
            memory.stats_at = ctx.clock()
    except psycopg.OperationalError as exc:
        raise Stalled("DatabaseUnreachable", f"the database connection broke: {exc}") from None
    finally:
        await conn.close()
    return summary, tables


async def _run(
    ctx: OperatorContext,
    *,
    body: kopf.Body,
    uid: str,
    namespace: str,
    name: str,
    generation: int | None,
    conditions: list[Mapping[str, Any]],
    decision: schedule.Decision,
) -> dict[str, Any]:
    """One prune of the policy; returns the status patch (never raises for expected errors)."""
    memory = ctx.memory.setdefault(uid, _Memory())
    now = ctx.clock()
    spec = body.get("spec") or {}
    interval = _interval(spec)
    patch: dict[str, Any] = {"observedGeneration": generation}
    if decision.run_now_token is not None:
        patch["lastRunNowHandled"] = decision.run_now_token
    try:
        try:
            summary, tables = await _attempt(ctx, body, uid, namespace, memory)
        except Stalled:
            raise
        except Exception as exc:
            # Whatever else goes wrong must still reach the status, the Events and the metrics.
            log.exception("prune_crashed", namespace=namespace, policy=name)
            raise Stalled("InternalError", f"{type(exc).__name__}: {exc}") from None
        if tables is not None:
            patch["tables"] = tables
    except Stalled as stalled:
        log.warning(
            "policy_stalled",
            namespace=namespace,
            policy=name,
            reason=stalled.reason,
            message=stalled.message,
        )
        ctx.metrics.observe_failure(namespace=namespace, policy=name)
        updates = _stalled_conditions(stalled.reason, stalled.message, generation)
        if schedule.condition_changed(conditions, updates[1]):
            kopf.warn(body, reason=stalled.reason, message=stalled.message)
        patch["nextRunTime"] = schedule.format_time(now + min(interval, schedule.RETRY_AFTER))
        patch["conditions"] = schedule.merge_conditions(conditions, updates, now=now)
        return patch

    if summary is None:
        message = f"the run exceeded maxDuration plus {RUN_GRACE.seconds}s and was cancelled"
        log.error("prune_timed_out", namespace=namespace, policy=name)
        ctx.metrics.observe_failure(namespace=namespace, policy=name)
        kopf.warn(body, reason="PruneFailed", message=message)
        updates = [
            schedule.condition("Ready", False, "PruneTimedOut", message, generation=generation)
        ]
        patch["lastRunTime"] = schedule.format_time(now)
        patch["nextRunTime"] = schedule.format_time(ctx.clock() + interval)
        patch["conditions"] = schedule.merge_conditions(conditions, updates, now=ctx.clock())
        return patch

    ctx.metrics.observe_run(summary)
    memory.resume = summary.resume
    finished = ctx.clock()
    patch["lastRunTime"] = schedule.format_time(summary.started_at)
    if summary.outcome is Outcome.SUCCEEDED:
        patch["lastSuccessTime"] = schedule.format_time(summary.started_at)
    patch["nextRunTime"] = schedule.format_time(finished + interval)
    patch["lastRun"] = summary.last_run_status()
    patch["conditions"] = schedule.merge_conditions(
        conditions, _run_conditions(summary, generation), now=finished
    )
    why = f" ({decision.why.value})"
    if summary.outcome is Outcome.FAILED:
        kopf.warn(body, reason="PruneFailed", message=summary.message + why)
    elif summary.outcome is Outcome.SKIPPED:
        kopf.event(body, type="Normal", reason="PruneSkipped", message=summary.message + why)
    else:
        reason = "DryRun" if summary.dry_run else "Pruned"
        kopf.event(body, type="Normal", reason=reason, message=summary.message + why)
    return patch


async def _refresh_stats(
    ctx: OperatorContext, body: Mapping[str, Any], uid: str, namespace: str, name: str
) -> dict[str, Any] | None:
    """Table sizes between runs, at most every stats_interval; None when not due or failed."""
    memory = ctx.memory.setdefault(uid, _Memory())
    now = ctx.clock()
    if memory.stats_at is not None and (now - memory.stats_at).total_seconds() < ctx.stats_interval:
        return None
    memory.stats_at = now
    try:
        policy = parse_policy(_document(body))
        ref = policy.spec.database.secret_ref
        url = await ctx.secrets.read(namespace, ref.name, ref.key)
        conn = await connect(url)
        try:
            threads = policy.spec.threads
            async with asyncio.timeout(policy.spec.limits.statement_timeout_delta.total_seconds()):
                return await _collect_stats(
                    ctx, conn, namespace, name, threads.max_idle_delta if threads else None
                )
        finally:
            await conn.close()
    except (
        PolicyError,
        Stalled,
        DatabaseUnavailable,
        InvalidDatabaseUrl,
        psycopg.Error,
        TimeoutError,
    ) as exc:
        # The next run reports these through the conditions; sizes can wait.
        log.info("stats_refresh_failed", namespace=namespace, policy=name, error=type(exc).__name__)
        return None


# -- the handlers --------------------------------------------------------------------------


def build_registry(ctx: OperatorContext) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.event(*resource, registry=registry)
    def track(
        type: str, body: kopf.Body, uid: str, namespace: str | None, name: str, **_: Any
    ) -> None:
        assert namespace is not None  # a namespaced resource
        if type == "DELETED":
            ctx.live.discard(uid)
            ctx.memory.pop(uid, None)
            ctx.heartbeat.gone(uid)
            ctx.metrics.policy_gone(namespace=namespace, policy=name)
            log.info("policy_deleted", namespace=namespace, policy=name)
        else:
            ctx.live.add(uid)
            ctx.heartbeat.seen(uid, f"{namespace}/{name}")
            ctx.metrics.policy_seen(
                namespace=namespace, policy=name, succeeded_at=_last_success(body)
            )

    def alive(uid: str, **_: Any) -> bool:
        # kopf re-matches a timer's filter on every event, after the on.event spy above: on the
        # DELETED event this stops the timer (it would only do so by itself on a
        # deletionTimestamp, which needs the finalizer this operator refuses to set).
        return uid in ctx.live

    @kopf.timer(*resource, id="schedule", interval=ctx.tick_interval, when=alive, registry=registry)
    async def tick(
        body: kopf.Body,
        meta: kopf.Meta,
        status: kopf.Status,
        patch: kopf.Patch,
        uid: str,
        namespace: str | None,
        name: str,
        **_: Any,
    ) -> None:
        assert namespace is not None  # a namespaced resource
        if uid not in ctx.live:
            # Deleted between the filter's check and this tick: nothing to do, ever again.
            log.info("tick_after_deletion", namespace=namespace, policy=name)
            return
        ctx.heartbeat.ticked(uid)
        memory = ctx.memory.setdefault(uid, _Memory())
        current = {**dict(status), **memory.written}
        spec = body.get("spec") or {}
        generation = meta.get("generation")
        if spec.get("suspend"):
            if current.get("observedGeneration") != generation:
                written = {"observedGeneration": generation, "nextRunTime": None}
                memory.written.update(written)
                patch.status.update(written)
            return
        decision = schedule.decide(
            now=ctx.clock(),
            generation=generation,
            annotations=meta.get("annotations") or {},
            status=current,
            interval=_interval(spec),
        )
        if decision is None:
            tables = await _refresh_stats(ctx, body, uid, namespace, name)
            if tables is not None:
                patch.status["tables"] = tables
            return
        log.info("prune_due", namespace=namespace, policy=name, why=decision.why.value)
        written = await _run(
            ctx,
            body=body,
            uid=uid,
            namespace=namespace,
            name=name,
            generation=generation,
            conditions=list(current.get("conditions") or []),
            decision=decision,
        )
        kept = (
            "observedGeneration",
            "lastRunNowHandled",
            "nextRunTime",
            "lastRunTime",
            "conditions",
        )
        memory.written = {k: written[k] for k in kept if k in written}
        patch.status.update(written)
        ctx.heartbeat.run_finished(uid, status_patched="lastRunTime" in written)

    @kopf.on.probe(id="activity", registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    def activity(**_: Any) -> dict[str, object]:
        try:
            return ctx.heartbeat.check()
        except Exception as exc:
            # PermanentError: no retries, so the probe request fails now (HTTP 500).
            raise kopf.PermanentError(str(exc)) from exc

    drop_finalizer_requirement(registry)
    return registry


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


# -- embedding -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """How to reach the API server: a kubeconfig file, or the in-cluster ServiceAccount."""

    kubeconfig: Path | None

    def configuration(self) -> kubernetes.client.Configuration:
        config = kubernetes.client.Configuration()
        if self.kubeconfig is not None:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig), client_configuration=config
            )
        else:
            try:
                kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=config
                )
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=config
                )
        return config

    def login(self, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
        if self.kubeconfig is None:
            # In a pod: kopf's own reader re-reads the (rotated) token on every re-login.
            info = kopf.login_with_service_account(settings=settings)
            if info is not None:
                return info
        config = self.configuration()
        header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
            "authorization"
        )
        scheme, _, token = (header or "").rpartition(" ")
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            scheme=scheme or None,
            token=token or None,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
        )


def default_namespace(kubeconfig: Path | None) -> str | None:
    """The in-cluster ServiceAccount's namespace, else the kubeconfig context's namespace."""
    in_cluster = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if kubeconfig is None and in_cluster.exists():
        return in_cluster.read_text(encoding="utf-8").strip() or None
    try:
        _, active = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None
        )
    except (kubernetes.config.ConfigException, OSError):
        return None
    namespace = (active or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else None


async def run_operator(
    *,
    namespaces: list[str],
    connection: Connection,
    registry: CollectorRegistry,
    liveness_port: int | None,
    tick_interval: float = DEFAULT_TICK,
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
    )
    kopf_registry = build_registry(ctx)

    @kopf.on.login(registry=kopf_registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return connection.login(settings)

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
