"""Query-string parameters: each one parses itself and describes itself for ``/openapi.json``.

A route names the ones it takes with ``service.http.queries`` and reads each with ``.of(request)``,
so the document and the parsing share one declaration. A value that is not what the parameter
says is a 422 naming it; an absent one is the default.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from starlette.requests import Request

from threadkeeper.service.problems import Problem

T = TypeVar("T")
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no", "")


class QueryParam(ABC, Generic[T]):
    name: str

    def of(self, request: Request) -> T:
        raw = request.query_params.get(self.name)
        return self.absent() if raw is None else self.parse(raw)

    def refuse(self, what: str) -> Problem:
        return Problem(422, f"{self.name} must be {what}", kind="invalid-input")

    @abstractmethod
    def absent(self) -> T: ...

    @abstractmethod
    def parse(self, raw: str) -> T: ...

    @abstractmethod
    def schema(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class IntParam(QueryParam[int]):
    name: str
    default: int
    lo: int
    hi: int

    def absent(self) -> int:
        return self.default

    def parse(self, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError as exc:
            raise self.refuse("an integer") from exc
        if not self.lo <= value <= self.hi:
            raise self.refuse(f"between {self.lo} and {self.hi}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi, "default": self.default}


@dataclass(frozen=True)
class FlagParam(QueryParam[bool]):
    """A flag as the SDK sends them (``true``/``false``, ``1``/``0``); absent means false."""

    name: str

    def absent(self) -> bool:
        return False

    def parse(self, raw: str) -> bool:
        value = raw.lower()
        if value in TRUE:
            return True
        if value in FALSE:
            return False
        raise self.refuse("true or false")

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean", "default": False}


@dataclass(frozen=True)
class ChoiceParam(QueryParam[str]):
    """One of ``choices``; absent or empty is ``default`` (which may be "", meaning none)."""

    name: str
    choices: Sequence[str]
    default: str = ""

    def absent(self) -> str:
        return self.default

    def parse(self, raw: str) -> str:
        if not raw:
            return self.default
        if raw not in self.choices:
            raise self.refuse("one of " + ", ".join(self.choices))
        return raw

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "enum": list(self.choices)}
        if self.default:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True)
class UuidParam(QueryParam[UUID | None]):
    name: str

    def absent(self) -> UUID | None:
        return None

    def parse(self, raw: str) -> UUID | None:
        try:
            return UUID(raw)
        except ValueError as exc:
            raise self.refuse(f"a UUID, got {raw!r}") from exc

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "uuid"}


@dataclass(frozen=True)
class TextParam(QueryParam[str | None]):
    name: str
    description: str

    def absent(self) -> str | None:
        return None

    def parse(self, raw: str) -> str | None:
        return raw or None

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "description": self.description}


@dataclass(frozen=True)
class XrayParam(QueryParam[bool | int]):
    """How deep a drawing shows subgraphs: a flag, or a depth of at least 1."""

    name: str = "xray"

    def absent(self) -> bool | int:
        return False

    def parse(self, raw: str) -> bool | int:
        if raw.lower() in TRUE[1:] or raw.lower() in FALSE[1:]:
            return raw.lower() in TRUE
        try:
            depth = int(raw)
        except ValueError as exc:
            raise self.refuse("true, false or a depth of at least 1") from exc
        if depth <= 0:
            raise self.refuse("true, false or a depth of at least 1")
        return depth

    def schema(self) -> dict[str, Any]:
        return {
            "oneOf": [{"type": "boolean"}, {"type": "integer", "minimum": 1}],
            "default": False,
        }


@dataclass(frozen=True)
class OptionalFlagParam(QueryParam[bool | None]):
    """A flag whose absence means "the server's default" rather than false."""

    name: str

    def absent(self) -> bool | None:
        return None

    def parse(self, raw: str) -> bool | None:
        return FlagParam(self.name).parse(raw)

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class ChoicesParam(QueryParam[frozenset[str]]):
    """Some of ``choices``, comma separated (as the SDK joins a list); absent is none."""

    name: str
    choices: Sequence[str]
    description: str

    def absent(self) -> frozenset[str]:
        return frozenset()

    def parse(self, raw: str) -> frozenset[str]:
        chosen = frozenset(part.strip() for part in raw.split(",") if part.strip())
        unknown = chosen - set(self.choices)
        if unknown:
            listed, got = ", ".join(self.choices), ", ".join(sorted(unknown))
            raise self.refuse(f"a comma-separated list of {listed}, got {got}")
        return chosen

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "description": self.description}
