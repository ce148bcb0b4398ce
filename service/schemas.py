"""Request bodies of the HTTP API, validated strictly (unknown fields are errors), and the paging
parameters several routes share.

Field names follow the LangGraph Agent Server so the official SDK works unchanged. Every field is
honoured; where this service cannot honour a value, it refuses it and says why, never drops it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from threadkeeper.service import thread_values
from threadkeeper.service.assistants import SortBy as AssistantSortBy
from threadkeeper.service.crons import SortBy as CronSortBy
from threadkeeper.service.crons import check_schedule, zone
from threadkeeper.service.domain import (
    DisconnectMode,
    MultitaskStrategy,
    OnCompletion,
    SortOrder,
    ThreadStatus,
)
from threadkeeper.service.query import IntParam
from threadkeeper.service.threads import SortBy, Ttl, TtlStrategy


def _choice(values: type[StrEnum]) -> Any:
    """A field taking one of the enum's values: validated (and described in the OpenAPI
    document) as the literal strings, as the Agent Server does, and given to the code as the
    enum's member."""
    return Annotated[Literal[tuple(member.value for member in values)], AfterValidator(values)]


if TYPE_CHECKING:
    StrategyChoice = MultitaskStrategy
    ThreadStatusChoice = ThreadStatus
    SortOrderChoice = SortOrder
    DisconnectChoice = DisconnectMode
    OnCompletionChoice = OnCompletion
else:
    StrategyChoice = _choice(MultitaskStrategy)
    ThreadStatusChoice = _choice(ThreadStatus)
    SortOrderChoice = _choice(SortOrder)
    DisconnectChoice = _choice(DisconnectMode)
    OnCompletionChoice = _choice(OnCompletion)
MAX_PAGE = 1000
# Far beyond any real page, well inside Postgres's bigint OFFSET.
MAX_OFFSET = 10**9
LIMIT = IntParam("limit", 10, lo=1, hi=MAX_PAGE)
OFFSET = IntParam("offset", 0, lo=0, hi=MAX_OFFSET)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# A century: far beyond any retention, well inside what a Postgres interval holds.
MAX_TTL_MINUTES = 100 * 366 * 24 * 60.0


class ThreadTTL(Body):
    """A thread's time to live, as the Agent Server takes it: ``ttl`` minutes from now, then
    the reaper deletes the thread (``delete``) or prunes it to its latest state
    (``keep_latest``)."""

    strategy: _choice(TtlStrategy) = TtlStrategy.DELETE  # type: ignore[valid-type]
    ttl: float = Field(gt=0, le=MAX_TTL_MINUTES, allow_inf_nan=False)

    def as_ttl(self) -> Ttl:
        return Ttl(strategy=TtlStrategy(self.strategy), minutes=self.ttl)


class ThreadCreate(Body):
    thread_id: UUID | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"
    title: str | None = Field(default=None, max_length=500)
    ttl: ThreadTTL | None = None
    supersteps: Any = None

    @field_validator("supersteps")
    @classmethod
    def _no_supersteps(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("supersteps are not supported")
        return value


class ThreadPatch(Body):
    metadata: dict[str, Any] | None = None
    title: str | None = Field(default=None, max_length=500)
    archived: bool | None = None
    ttl: ThreadTTL | None = None


class ThreadSearch(Body):
    ids: list[UUID] | None = None
    metadata: dict[str, Any] | None = None
    # JSON containment on each thread's latest values (service.thread_values).
    values: dict[str, Any] | None = None
    status: ThreadStatusChoice | None = None
    archived: bool | None = False
    limit: int = Field(default=10, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort_by: SortBy = "created_at"
    sort_order: SortOrderChoice = SortOrder.DESC
    select: list[str] | None = None
    # Alias to path (``values.messages[-1].content``), returned under ``extracted``.
    extract: (
        Annotated[
            dict[str, str],
            Field(max_length=thread_values.MAX_EXTRACT_PATHS),
            AfterValidator(thread_values.check_extract),
        ]
        | None
    ) = None


class ThreadCount(Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: ThreadStatusChoice | None = None
    archived: bool | None = False


class ThreadPrune(Body):
    thread_ids: list[UUID] = Field(max_length=MAX_PAGE)
    strategy: _choice(TtlStrategy) = TtlStrategy.DELETE  # type: ignore[valid-type]


class CheckpointConfig(Body):
    """Which checkpoint of a thread, as the SDK and RemoteGraph name one."""

    thread_id: UUID | None = None
    checkpoint_ns: str = ""
    checkpoint_id: UUID | None = None
    checkpoint_map: dict[str, Any] | None = None


class StateUpdate(Body):
    values: dict[str, Any] | list[dict[str, Any]] | None = None
    as_node: str | None = None
    checkpoint: CheckpointConfig | None = None
    checkpoint_id: UUID | None = None


class StateAtCheckpoint(Body):
    checkpoint: CheckpointConfig
    subgraphs: bool = False


class HistoryQuery(Body):
    limit: int = Field(default=10, ge=1, le=MAX_PAGE)
    before: CheckpointConfig | UUID | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointConfig | None = None


class _ConfigShape(BaseModel):
    """What the Agent Server checks of a ``config`` (its ``Config`` schema); other keys pass."""

    model_config = ConfigDict(extra="allow")

    tags: list[str] | None = None
    recursion_limit: int | None = Field(default=None, ge=1, le=2**31 - 1)
    configurable: dict[str, Any] | None = None


def _config_shape(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        _ConfigShape.model_validate(value)
    return value


# Parsed as the plain dict it is stored as, checked and documented as the shape above.
ConfigBody = Annotated[
    dict[str, Any] | None,
    AfterValidator(_config_shape),
    WithJsonSchema({"anyOf": [_ConfigShape.model_json_schema(), {"type": "null"}]}),
]


# Agent Server run options this service cannot honour: a value asking for one is refused, with
# this reason, rather than dropped. Their empty values mean what happens anyway.
UNSUPPORTED_RUN_OPTIONS = {
    "webhook": "webhooks are not supported",
    "feedback_keys": "LangSmith feedback is not supported",
    "strict_resume": "strict_resume is not supported",
    "langsmith_tracer": "LangSmith tracing is not supported",
}


class RunCreate(Body):
    assistant_id: str
    input: Any = None
    command: dict[str, Any] | None = None
    config: ConfigBody = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    checkpoint: CheckpointConfig | None = None
    checkpoint_id: UUID | None = None
    interrupt_before: list[str] | Literal["*"] | None = None
    interrupt_after: list[str] | Literal["*"] | None = None
    multitask_strategy: StrategyChoice | None = None
    if_not_exists: Literal["create", "reject"] | None = None
    # Sent by the SDK; streaming options matter only to streamed runs. Every stream here is
    # resumable (its events are kept in Postgres), so stream_resumable is honoured either way.
    stream_mode: str | list[str] | None = None
    stream_subgraphs: bool | None = None
    stream_resumable: bool | None = None
    feedback_keys: list[str] | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    checkpoint_during: bool | None = None
    on_disconnect: DisconnectChoice | None = None
    # "delete" removes a stateless run's temporary thread (StatelessRunCreate); a run on a
    # thread the caller created never deletes it.
    on_completion: Literal["keep"] | None = None
    webhook: str | None = None
    # A year: far beyond any real delay, well inside a Postgres interval.
    after_seconds: float | None = Field(default=None, ge=0, le=366 * 24 * 3600, allow_inf_nan=False)
    strict_resume: bool | None = None
    langsmith_tracer: Any = None

    @field_validator(*UNSUPPORTED_RUN_OPTIONS)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise ValueError(UNSUPPORTED_RUN_OPTIONS[str(info.field_name)])
        return value

    @field_validator("on_completion", mode="before")
    @classmethod
    def _keep_only(cls, value: Any) -> Any:
        if value == "delete":
            raise ValueError(
                "on_completion 'delete' applies to stateless runs (POST /runs); a thread's "
                "runs always keep their thread"
            )
        return value

    @model_validator(mode="after")
    def _one_durability(self) -> RunCreate:
        # LangGraph refuses the pair too; which one wins would be a guess.
        if self.durability is not None and self.checkpoint_during is not None:
            raise ValueError("give durability or the deprecated checkpoint_during, not both")
        return self


class StatelessRunCreate(RunCreate):
    """A run on a new thread of its own (``POST /runs``...), which ``on_completion: delete``
    (the default) removes once the run ended. The thread is new, so ``multitask_strategy`` and
    ``if_not_exists`` (which RemoteGraph sends) change nothing."""

    on_completion: OnCompletionChoice = OnCompletion.DELETE  # type: ignore[assignment]

    @field_validator("on_completion", mode="before")
    @classmethod
    def _keep_only(cls, value: Any) -> Any:
        return value

    @model_validator(mode="after")
    def _no_checkpoint(self) -> StatelessRunCreate:
        if self.checkpoint is not None or self.checkpoint_id is not None:
            raise ValueError(
                "a stateless run starts on a new thread, which has no checkpoint to start from"
            )
        return self


MAX_BATCH = 100


class StatelessRunBatch(RootModel[list[StatelessRunCreate]]):
    """``POST /runs/batch``: background stateless runs, all accepted or none."""

    root: list[StatelessRunCreate] = Field(max_length=MAX_BATCH)


class Chat(Body):
    thread_id: UUID | None = None
    message: str = Field(min_length=1, max_length=100_000)


class CancelMany(Body):
    thread_id: UUID | None = None
    run_ids: list[UUID] | None = None
    status: Literal["pending", "running", "all"] | None = None


class AssistantField(StrEnum):
    """What ``select`` may name, as the Agent Server lists them."""

    ASSISTANT_ID = "assistant_id"
    GRAPH_ID = "graph_id"
    NAME = "name"
    DESCRIPTION = "description"
    CONFIG = "config"
    CONTEXT = "context"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    METADATA = "metadata"
    VERSION = "version"


if TYPE_CHECKING:
    AssistantSortByChoice = AssistantSortBy
    AssistantFieldChoice = AssistantField
else:
    AssistantSortByChoice = _choice(AssistantSortBy)
    AssistantFieldChoice = _choice(AssistantField)
NAME_LIMIT = 500
DESCRIPTION_LIMIT = 10_000


class _AssistantConfig(Body):
    """``config`` and ``context``: the Agent Server keeps ``config.configurable`` and ``context``
    the same, so a body may give one of them, not both."""

    config: ConfigBody = None
    context: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _configurable_or_context(self) -> _AssistantConfig:
        if self.context and (self.config or {}).get("configurable"):
            raise ValueError(
                "give context or config.configurable, not both (context replaces configurable)"
            )
        return self


class AssistantCreate(_AssistantConfig):
    graph_id: str = Field(min_length=1)
    assistant_id: UUID | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    name: str | None = Field(default=None, max_length=NAME_LIMIT)
    description: str | None = Field(default=None, max_length=DESCRIPTION_LIMIT)


class AssistantPatch(_AssistantConfig):
    graph_id: str | None = Field(default=None, min_length=1)
    metadata: dict[str, Any] | None = None
    name: str | None = Field(default=None, max_length=NAME_LIMIT)
    description: str | None = Field(default=None, max_length=DESCRIPTION_LIMIT)


class AssistantCount(Body):
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None


class AssistantSearch(AssistantCount):
    limit: int = Field(default=10, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort_by: AssistantSortByChoice = AssistantSortBy.CREATED_AT
    sort_order: SortOrderChoice = SortOrder.DESC
    select: list[AssistantFieldChoice] | None = None


class AssistantVersions(Body):
    metadata: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class AssistantLatest(Body):
    version: int = Field(ge=1, le=2**31 - 1)


if TYPE_CHECKING:
    CronSortByChoice = CronSortBy
else:
    CronSortByChoice = _choice(CronSortBy)
CRON_FIELDS = (
    "cron_id",
    "assistant_id",
    "thread_id",
    "end_time",
    "schedule",
    "timezone",
    "created_at",
    "updated_at",
    "user_id",
    "payload",
    "next_run_date",
    "metadata",
    "now",
    "on_run_completed",
    "enabled",
)


def _schedule(value: str | None) -> str | None:
    return None if value is None else check_schedule(value)


def _timezone(value: str | None) -> str | None:
    if value is not None:
        zone(value)
    return value


class _CronRun(Body):
    """What each of a cron's runs is given: the fields of a run (``RunCreate``) a cron takes,
    checked as a run's are."""

    input: Any = None
    metadata: dict[str, Any] | None = None
    config: ConfigBody = None
    context: dict[str, Any] | None = None
    checkpoint_during: bool | None = None
    interrupt_before: list[str] | Literal["*"] | None = None
    interrupt_after: list[str] | Literal["*"] | None = None
    webhook: str | None = None
    stream_mode: str | list[str] | None = None
    stream_subgraphs: bool | None = None
    stream_resumable: bool | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    timezone: Annotated[str | None, AfterValidator(_timezone)] = None
    end_time: datetime | None = None
    enabled: bool | None = None

    def run_fields(self) -> dict[str, Any]:
        return self.model_dump(
            exclude=set(_CronRun.CRON_OWN) | {"assistant_id"}, exclude_none=True, mode="json"
        )

    CRON_OWN: ClassVar[tuple[str, ...]] = (
        "schedule",
        "timezone",
        "end_time",
        "enabled",
        "on_run_completed",
    )

    @field_validator("webhook")
    @classmethod
    def _no_webhook(cls, value: Any) -> Any:
        if value:
            raise ValueError(UNSUPPORTED_RUN_OPTIONS["webhook"])
        return value

    @field_validator("end_time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A naive end time is UTC, as the Agent Server reads one.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class ThreadCronCreate(_CronRun):
    assistant_id: str = Field(min_length=1)
    schedule: Annotated[str, AfterValidator(_schedule)]
    multitask_strategy: StrategyChoice | None = None

    @model_validator(mode="after")
    def _as_run(self) -> ThreadCronCreate:
        check_run(self.payload())
        return self

    def payload(self) -> dict[str, Any]:
        found = self.run_fields()
        found["assistant_id"] = self.assistant_id
        return found


class CronCreate(ThreadCronCreate):
    on_run_completed: OnCompletionChoice = OnCompletion.DELETE


class CronPatch(_CronRun):
    schedule: Annotated[str | None, AfterValidator(_schedule)] = None
    on_run_completed: OnCompletionChoice | None = None


def check_run(payload: dict[str, Any]) -> None:
    """A cron's payload is a run's body; ValueError (saying why) when it is not a valid one."""
    try:
        RunCreate.model_validate(payload)
    except ValidationError as exc:
        raise ValueError("; ".join(str(e["msg"]) for e in exc.errors())) from exc


class CronCount(Body):
    assistant_id: str | None = None
    thread_id: UUID | None = None
    metadata: dict[str, Any] | None = None


class CronSearch(CronCount):
    enabled: bool | None = None
    limit: int = Field(default=10, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort_by: CronSortByChoice = CronSortBy.CREATED_AT
    sort_order: SortOrderChoice = SortOrder.DESC
    select: list[Literal[CRON_FIELDS]] | None = None  # type: ignore[valid-type]


def _namespace_labels(value: list[str]) -> list[str]:
    for label in value:
        if not label or "." in label:
            raise ValueError("namespace labels must be non-empty and cannot contain '.'")
    return value


Namespace = Annotated[list[str], AfterValidator(_namespace_labels)]


class StorePut(Body):
    """``PUT /store/items``; ``ttl`` in minutes, as LangGraph's store takes it."""

    namespace: Annotated[Namespace, Field(min_length=1)]
    key: str = Field(min_length=1)
    value: dict[str, Any]
    index: Literal[False] | list[str] | None = None
    ttl: float | None = Field(default=None, gt=0)


class StoreDelete(Body):
    namespace: Annotated[Namespace, Field(min_length=1)]
    key: str = Field(min_length=1)


class StoreSearch(Body):
    namespace_prefix: Namespace = Field(default_factory=list)
    filter: dict[str, Any] | None = None
    query: str | None = None
    limit: int = Field(default=10, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    refresh_ttl: bool | None = None


class StoreNamespaces(Body):
    prefix: Namespace | None = None
    suffix: Namespace | None = None
    max_depth: int | None = Field(default=None, ge=1)
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
