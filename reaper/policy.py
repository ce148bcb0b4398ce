"""The RetentionPolicy: one custom resource, also readable from a plain YAML file.

Field names, defaults and bounds mirror ``deploy/crds/retentionpolicies.threadkeeper.dev.yaml``;
a test compares the two so the operator (which gets defaults from the API server) and the CLI
(which gets them from here) prune by the same policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from threadkeeper.reaper.durations import parse_duration

GROUP = "threadkeeper.dev"
VERSION = "v1alpha1"
KIND = "RetentionPolicy"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "retentionpolicies"


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


Duration = Annotated[str, AfterValidator(_check_duration)]


class PolicyError(ValueError):
    """A policy document that cannot be applied; the message names every bad field."""


class _Model(BaseModel):
    # Unknown keys are refused: a typo such as "maxIdel" would otherwise silently disable a rule.
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class SecretKeyRef(_Model):
    name: str = Field(min_length=1)
    key: str = Field(default="url", min_length=1)


class DatabaseSpec(_Model):
    secret_ref: SecretKeyRef


class ScheduleSpec(_Model):
    interval: Duration = "10m"


class ThreadRules(_Model):
    """Whole-thread deletion: threads nobody spoke in for ``max_idle``, or archived long ago."""

    max_idle: Duration | None = None
    archived_for: Duration | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> ThreadRules:
        if self.max_idle is None and self.archived_for is None:
            raise ValueError("set maxIdle, archivedFor or both (or leave threads out)")
        return self

    @property
    def max_idle_delta(self) -> timedelta | None:
        return parse_duration(self.max_idle) if self.max_idle else None

    @property
    def archived_for_delta(self) -> timedelta | None:
        return parse_duration(self.archived_for) if self.archived_for else None


class CheckpointRules(_Model):
    """History depth of live threads, per checkpoint namespace."""

    keep_last: int = Field(default=1, ge=1, le=1_000_000)
    max_age: Duration | None = None

    @property
    def max_age_delta(self) -> timedelta | None:
        return parse_duration(self.max_age) if self.max_age else None


class OrphanRules(_Model):
    """Checkpoint data of thread ids that have no ``threads`` row."""

    older_than: Duration

    @property
    def older_than_delta(self) -> timedelta:
        return parse_duration(self.older_than)


class StoreRules(_Model):
    """Long-term memory (the LangGraph store), once per cluster instead of in every replica:
    items past their TTL, items idle for ``max_idle``, and the oldest items of a namespace
    beyond ``max_items_per_namespace``."""

    sweep_expired: bool = False
    max_items_per_namespace: int | None = Field(default=None, ge=1, le=100_000_000)
    max_idle: Duration | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> StoreRules:
        if not self.sweep_expired and self.max_items_per_namespace is None and not self.max_idle:
            raise ValueError(
                "set sweepExpired: true, maxItemsPerNamespace or maxIdle (or leave store out)"
            )
        return self

    @property
    def max_idle_delta(self) -> timedelta | None:
        return parse_duration(self.max_idle) if self.max_idle else None


class Limits(_Model):
    batch_size: int = Field(default=500, ge=1, le=100_000)
    max_duration: Duration = "5m"
    lock_timeout: Duration = "2s"
    statement_timeout: Duration = "30s"

    @property
    def max_duration_delta(self) -> timedelta:
        return parse_duration(self.max_duration)

    @property
    def lock_timeout_delta(self) -> timedelta:
        return parse_duration(self.lock_timeout)

    @property
    def statement_timeout_delta(self) -> timedelta:
        return parse_duration(self.statement_timeout)


class RetentionPolicySpec(_Model):
    database: DatabaseSpec
    schedule: ScheduleSpec = ScheduleSpec()
    threads: ThreadRules | None = None
    checkpoints: CheckpointRules | None = None
    orphans: OrphanRules | None = None
    store: StoreRules | None = None
    limits: Limits = Limits()
    dry_run: bool = False
    suspend: bool = False

    @model_validator(mode="after")
    def _some_rule(self) -> RetentionPolicySpec:
        rules = (self.threads, self.checkpoints, self.orphans, self.store)
        if all(rule is None for rule in rules):
            raise ValueError("set at least one of threads, checkpoints, orphans, store")
        return self


class ObjectMeta(BaseModel):
    # Manifests exported from a cluster carry uid, resourceVersion, labels... keep them.
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    namespace: str = "default"


class RetentionPolicy(_Model):
    api_version: Literal["threadkeeper.dev/v1alpha1"]
    kind: Literal["RetentionPolicy"]
    metadata: ObjectMeta
    spec: RetentionPolicySpec
    # Present in manifests read back from a cluster; the engine never uses it.
    status: dict[str, Any] | None = None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(document)"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "invalid RetentionPolicy:\n  " + "\n  ".join(lines)


def parse_policy(document: Any) -> RetentionPolicy:
    """Validate one decoded manifest; PolicyError lists every problem with its path."""
    if not isinstance(document, dict):
        raise PolicyError("a RetentionPolicy manifest must be a YAML mapping")
    try:
        return RetentionPolicy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(_describe(exc)) from None


def parse_object(body: Mapping[str, Any]) -> RetentionPolicy:
    """Validate a RetentionPolicy as the API server sends it: its name, namespace and spec."""
    meta = body.get("metadata", {})
    return parse_policy(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "spec": dict(body.get("spec") or {}),
        }
    )


def load_policy(path: Path) -> RetentionPolicy:
    """Read and validate a manifest file holding exactly one RetentionPolicy."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"policy file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {path} is not valid YAML: {exc}") from None
    if len(documents) != 1:
        raise PolicyError(
            f"policy file {path} must hold exactly one RetentionPolicy, found {len(documents)}"
        )
    return parse_policy(documents[0])
