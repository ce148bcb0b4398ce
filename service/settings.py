"""Configuration, read once from the environment (pydantic-settings)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SHUTDOWN_SECONDS = 25.0
# A draining replica cuts its open responses this long before uvicorn's shutdown ends, so their
# clients see a broken response (and rejoin) rather than a closed socket mid-write.
CUT_MARGIN_SECONDS = 1.0
# Left between the end of the run drain and exit: handing runs back and answering their waits.
DRAIN_HEADROOM_SECONDS = 5.0


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("threadkeeper"))


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Every knob of the service. Environment names are part of the interface."""

    model_config = SettingsConfigDict(env_prefix="THREADKEEPER_", extra="ignore")

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Field(default_factory=_default_data_dir)

    model: str = "offline"
    offline_latency_ms: int = Field(default=0, ge=0)
    # Pause between the offline model's streamed tokens: a reply a person (or a browser test)
    # sees arrive piece by piece, and that is still streaming when a replica is killed.
    offline_token_ms: int = Field(default=0, ge=0)

    # Origins a browser app may call from (comma separated; "*": any), as the Agent Server allows
    # any by default so a chat UI on another port works. Empty: no CORS headers at all.
    cors_allow_origins: str = "*"

    auth: Literal["none", "header", "jwt"] = "none"
    auth_header: str = "X-Forwarded-User"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    pool_min_size: int = Field(default=2, ge=1)
    pool_max_size: int = Field(default=20, ge=1)
    pool_timeout: float = Field(default=10.0, gt=0)
    pool_max_idle: float = Field(default=300.0, gt=0)
    pool_max_lifetime: float = Field(default=1800.0, gt=0)
    # Server-side prepared statements: Postgres plans each statement once per connection, not on
    # every call (a turn's dozen statements cost it a third less CPU). Off for a PgBouncer in
    # transaction mode that cannot track them (before 1.21, or max_prepared_statements = 0).
    prepared_statements: bool = True

    lease_seconds: float = Field(default=30.0, gt=0)
    # Runs one replica executes at once. A turn mostly waits on the model, so a replica runs
    # many: at 10, the 100 conversations of benchmark 3 would queue for a slot while the CPU
    # idles (at least 10x the ideal wall, by arithmetic); at 100 it meets its goal
    # (docs/performance.md).
    workers: int = Field(default=100, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    # Memory for the decoded checkpoint blobs each replica keeps (service.blob_cache); 0: none.
    blob_cache_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # Runs of one owner executing at once, across all replicas; 0: no cap. Unset: half the
    # workers (at least 1) when callers are told apart (auth header or jwt), none with auth=none,
    # where every caller is the one local owner.
    max_runs_per_owner: int | None = Field(default=None, ge=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    # How often each replica looks for due crons (and the threads of stateless ones to delete).
    cron_poll_seconds: float = Field(default=1.0, gt=0)
    event_retention_seconds: float = Field(default=3600.0, gt=0)
    # How long a stateless run's temporary thread outlives its run when no request waited for
    # it (POST /runs, or its waiter's replica died): time to join the run or read its thread.
    temporary_thread_seconds: float = Field(default=60.0, ge=0)
    # SIGTERM to exit: open waits and streams are cut a second before, then uvicorn stops. The
    # chart derives it from the pod's grace period, so the two cannot disagree.
    shutdown_seconds: float = Field(default=DEFAULT_SHUTDOWN_SECONDS, ge=2)
    # How long executing runs may continue after SIGTERM before they are handed back. Unset:
    # five seconds less than ``shutdown_seconds``, leaving time to hand back and answer.
    drain_seconds: float | None = Field(default=None, ge=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    replica: str = Field(default_factory=_default_replica)
    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"

    @property
    def owner_cap(self) -> int:
        """THREADKEEPER_MAX_RUNS_PER_OWNER, or its default."""
        if self.max_runs_per_owner is not None:
            return self.max_runs_per_owner
        return 0 if self.auth == "none" else max(1, self.workers // 2)

    @property
    def run_drain_seconds(self) -> float:
        """THREADKEEPER_DRAIN_SECONDS, or its default."""
        if self.drain_seconds is not None:
            return self.drain_seconds
        return max(0.0, self.shutdown_seconds - DRAIN_HEADROOM_SECONDS)

    @property
    def cut_seconds(self) -> float:
        """After SIGTERM, when the responses still open are cut (their clients rejoin elsewhere)."""
        return self.shutdown_seconds - CUT_MARGIN_SECONDS

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.drain_seconds is not None and self.drain_seconds >= self.cut_seconds:
            raise ValueError(
                "THREADKEEPER_DRAIN_SECONDS must be less than THREADKEEPER_SHUTDOWN_SECONDS - "
                f"{CUT_MARGIN_SECONDS:g} (open responses are cut then)"
            )
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                "THREADKEEPER_POOL_MIN_SIZE must not exceed THREADKEEPER_POOL_MAX_SIZE"
            )
        if self.auth == "jwt" and not (self.jwt_secret or self.jwt_public_key):
            raise ValueError(
                "THREADKEEPER_AUTH=jwt needs THREADKEEPER_JWT_SECRET or THREADKEEPER_JWT_PUBLIC_KEY"
            )
        return self
