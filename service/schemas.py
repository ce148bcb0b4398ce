"""Request bodies of the HTTP API, validated strictly (unknown fields are errors), and the paging
parameters several routes share.

Field names follow the LangGraph Agent Server so the official SDK works unchanged. Every field is
honoured; where this service cannot honour a value, it refuses it and says why, never drops it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from threadkeeper.service.assistants import SortBy as AssistantSortBy
from threadkeeper.service.domain import MultitaskStrategy, ThreadStatus
from threadkeeper.service.query import IntParam


def _choice(values: type[StrEnum]) -> Any:
    """A field taking one of the enum's values: validated (and described in the OpenAPI
    document) as the literal strings, as the Agent Server does, and given to the code as the
    enum's member."""
    return Annotated[Literal[tuple(member.value for member in values)], AfterValidator(values)]


if TYPE_CHECKING:
    StrategyChoice = MultitaskStrategy
    ThreadStatusChoice = ThreadStatus
else:
    StrategyChoice = _choice(MultitaskStrategy)
    ThreadStatusChoice = _choice(ThreadStatus)
MAX_PAGE = 1000
# Far beyond any real page, well inside Postgres's bigint OFFSET.
MAX_OFFSET = 10**9
LIMIT = IntParam("limit", 10, lo=1, hi=MAX_PAGE)
OFFSET = IntParam("offset", 0, lo=0, hi=MAX_OFFSET)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _no_ttl(value: Any) -> Any:
    if value is not None:
        raise ValueError("per-thread ttl is not supported; retention is set by a RetentionPolicy")
    return value


class ThreadCreate(Body):
    thread_id: UUID | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"
    title: str | None = Field(default=None, max_length=500)
    ttl: Any = None
    supersteps: Any = None

    _ttl = field_validator("ttl")(_no_ttl)

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
    ttl: Any = None

    _ttl = field_validator("ttl")(_no_ttl)


class ThreadSearch(Body):
    ids: list[UUID] | None = None
    metadata: dict[str, Any] | None = None
    status: ThreadStatusChoice | None = None
    archived: bool | None = False
    limit: int = Field(default=10, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    sort_by: Literal["created_at", "updated_at", "last_message_at", "thread_id"] = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    select: list[str] | None = None
    values: dict[str, Any] | None = None

    @field_validator("values")
    @classmethod
    def _no_values(cls, value: Any) -> Any:
        if value:
            raise ValueError("filtering on values is not supported")
        return value


class ThreadCount(Body):
    metadata: dict[str, Any] | None = None
    status: ThreadStatusChoice | None = None
    archived: bool | None = False
    values: dict[str, Any] | None = None

    _no_values = ThreadSearch._no_values


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
    "after_seconds": "delayed runs are not supported",
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
    on_disconnect: Literal["cancel", "continue"] | None = None
    # The Agent Server deletes a stateless run's temporary thread on "delete"; this service has
    # only threads the caller created, which a run never deletes.
    on_completion: Literal["keep"] | None = None
    webhook: str | None = None
    after_seconds: float | None = None
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
                "on_completion 'delete' applies to stateless runs (POST /runs), which this "
                "service does not offer; a thread's runs always keep their thread"
            )
        return value

    @model_validator(mode="after")
    def _one_durability(self) -> RunCreate:
        # LangGraph refuses the pair too; which one wins would be a guess.
        if self.durability is not None and self.checkpoint_during is not None:
            raise ValueError("give durability or the deprecated checkpoint_during, not both")
        return self


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
    sort_order: Literal["asc", "desc"] = "desc"
    select: list[AssistantFieldChoice] | None = None


class AssistantVersions(Body):
    metadata: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class AssistantLatest(Body):
    version: int = Field(ge=1, le=2**31 - 1)


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
