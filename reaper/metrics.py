"""Prometheus metrics of the reaper, registered on a registry the caller owns.

Every series carries ``namespace`` and ``policy`` (the RetentionPolicy it belongs to), never a
database URL or secret. Deletion counters only count what was really deleted: a dry run adds to
``threadkeeper_prune_runs_total`` and the duration histogram, nothing else.

A policy's series exist from the moment the operator sees it, so both alerts cover a policy that
never succeeds: ``last_success`` starts at its last recorded success (``status.lastSuccessTime``)
or, if it never had one, its creation time, and every outcome of ``runs_total`` starts at 0 so
the first failure is an increase. They disappear with the policy.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from threadkeeper.reaper.stats import DatabaseStats
from threadkeeper.reaper.summary import Outcome, PruneSummary

LABELS = ("namespace", "policy")

# Runs take milliseconds on a quiet database and up to maxDuration (5m by default) on a backlog.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ReaperMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._known: set[tuple[str, str]] = set()
        self.table_bytes = Gauge(
            "threadkeeper_checkpoint_table_bytes",
            "On-disk size of a table incl. TOAST and indexes (pg_total_relation_size).",
            [*LABELS, "table"],
            registry=registry,
        )
        self.table_rows = Gauge(
            "threadkeeper_checkpoint_table_rows_estimate",
            "Planner estimate of a table's rows (pg_class.reltuples).",
            [*LABELS, "table"],
            registry=registry,
        )
        self.threads = Gauge(
            "threadkeeper_threads",
            "Threads by state: active, archived, idle_expired (past maxIdle, not yet deleted); "
            "active is exact up to 1000, then from the planner's row estimate.",
            [*LABELS, "state"],
            registry=registry,
        )
        self.deleted_rows = Counter(
            "threadkeeper_prune_deleted_rows",
            "Rows deleted by the reaper, by table.",
            [*LABELS, "table"],
            registry=registry,
        )
        self.threads_deleted = Counter(
            "threadkeeper_prune_threads_deleted",
            "Threads deleted by the reaper, by reason: idle, archived, orphan, ttl.",
            [*LABELS, "reason"],
            registry=registry,
        )
        self.runs = Counter(
            "threadkeeper_prune_runs",
            "Prune runs by outcome (Succeeded, Failed, Skipped).",
            [*LABELS, "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "threadkeeper_prune_duration_seconds",
            "Wall time of prune runs that ran (not the skipped ones).",
            LABELS,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.last_success = Gauge(
            "threadkeeper_prune_last_success_timestamp_seconds",
            "Unix time at which the last successful prune run started.",
            LABELS,
            registry=registry,
        )
        self.store_items = Gauge(
            "threadkeeper_store_items",
            "Long-term memory items (the store table), from the planner's row estimate.",
            LABELS,
            registry=registry,
        )
        self.store_table_bytes = Gauge(
            "threadkeeper_store_table_bytes",
            "On-disk size of a store table incl. TOAST and indexes (pg_total_relation_size).",
            [*LABELS, "table"],
            registry=registry,
        )
        self.store_expired_deleted = Counter(
            "threadkeeper_store_expired_items_deleted",
            "Long-term memory items past their TTL deleted by the reaper.",
            LABELS,
            registry=registry,
        )
        self.store_idle_deleted = Counter(
            "threadkeeper_store_idle_items_deleted",
            "Long-term memory items idle for the policy's store.maxIdle deleted by the reaper.",
            LABELS,
            registry=registry,
        )
        self.store_excess_deleted = Counter(
            "threadkeeper_store_excess_items_deleted",
            "Long-term memory items beyond store.maxItemsPerNamespace deleted by the reaper.",
            LABELS,
            registry=registry,
        )
        self.backlog = Gauge(
            "threadkeeper_prune_backlog_threads",
            "Threads eligible for deletion or pruning that the last run left for later.",
            LABELS,
            registry=registry,
        )

    def _series(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return (
            self.table_bytes,
            self.table_rows,
            self.threads,
            self.deleted_rows,
            self.threads_deleted,
            self.runs,
            self.duration,
            self.last_success,
            self.backlog,
            self.store_items,
            self.store_table_bytes,
            self.store_expired_deleted,
            self.store_idle_deleted,
            self.store_excess_deleted,
        )

    def policy_seen(self, *, namespace: str, policy: str, succeeded_at: float) -> None:
        """Start the series of a policy (once): ``succeeded_at`` is its last known success."""
        key = (namespace, policy)
        if key in self._known:
            return
        self._known.add(key)
        labels = {"namespace": namespace, "policy": policy}
        for outcome in Outcome:
            self.runs.labels(**labels, outcome=outcome.value)
        self.last_success.labels(**labels).set(succeeded_at)

    def policy_gone(self, *, namespace: str, policy: str) -> None:
        """Drop every series of a deleted policy, so no alert fires for it."""
        self._known.discard((namespace, policy))
        for metric in self._series():
            metric.remove_by_labels({"namespace": namespace, "policy": policy})

    def observe_failure(self, *, namespace: str, policy: str) -> None:
        """A run that could not start or finish (Secret, database, timeout): a Failed run."""
        self.runs.labels(namespace=namespace, policy=policy, outcome=Outcome.FAILED.value).inc()

    def observe_run(self, summary: PruneSummary) -> None:
        key = {"namespace": summary.namespace, "policy": summary.policy}
        self.runs.labels(**key, outcome=summary.outcome.value).inc()
        if summary.outcome is Outcome.SKIPPED:
            return
        self.duration.labels(**key).observe(summary.duration_seconds)
        self.backlog.labels(**key).set(summary.backlog)
        if summary.outcome is Outcome.SUCCEEDED:
            self.last_success.labels(**key).set(summary.started_at.timestamp())
        if summary.dry_run:
            return
        for table, rows in (
            ("checkpoints", summary.checkpoints_deleted),
            ("checkpoint_blobs", summary.blobs_deleted),
            ("checkpoint_writes", summary.writes_deleted),
            ("runs", summary.runs_deleted),
            # Orphans never had a threads row.
            (
                "threads",
                summary.threads_deleted.idle
                + summary.threads_deleted.archived
                + summary.threads_deleted.ttl,
            ),
        ):
            self.deleted_rows.labels(**key, table=table).inc(rows)
        self.store_expired_deleted.labels(**key).inc(summary.store_expired_items_deleted)
        self.store_idle_deleted.labels(**key).inc(summary.store_idle_items_deleted)
        self.store_excess_deleted.labels(**key).inc(summary.store_excess_items_deleted)
        for reason, count in (
            ("idle", summary.threads_deleted.idle),
            ("archived", summary.threads_deleted.archived),
            ("orphan", summary.threads_deleted.orphan),
            ("ttl", summary.threads_deleted.ttl),
        ):
            self.threads_deleted.labels(**key, reason=reason).inc(count)

    def observe_stats(self, stats: DatabaseStats, *, namespace: str, policy: str) -> None:
        key = {"namespace": namespace, "policy": policy}
        for table, values in stats.tables.items():
            self.table_bytes.labels(**key, table=table).set(values.bytes)
            self.table_rows.labels(**key, table=table).set(values.rows_estimate)
        for state, count in stats.threads.items():
            self.threads.labels(**key, state=state).set(count)
        for table, values in stats.store.items():
            self.store_table_bytes.labels(**key, table=table).set(values.bytes)
        if "store" in stats.store:
            self.store_items.labels(**key).set(stats.store["store"].rows_estimate)
