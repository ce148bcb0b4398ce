"""RFC 9457 problem responses, the only shape errors take on the wire.

Bodies also carry ``detail`` (the Agent Server and langgraph-sdk read it for the message).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from threadkeeper.service import errors

PROBLEM_TYPE_BASE = "https://threadkeeper.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise to answer with a problem response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or HTTPStatus(status).phrase.lower().replace(" ", "-")
        self.headers = headers
        self.extra = extra or {}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_response(problem: Problem) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + problem.kind,
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
        **problem.extra,
    }
    return ProblemResponse(body, status_code=problem.status, headers=problem.headers)


def not_found(what: str, ident: object) -> Problem:
    return Problem(404, f"{what} with ID {ident} not found", kind="not-found")


def invalid(exc: ValidationError) -> Problem:
    """422 with pydantic's errors, minus the echoed input (it may be large or secret)."""
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid input"}
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return Problem(422, f"{where}: {first['msg']}", kind="invalid-input", extra={"errors": errors})


def from_domain(exc: errors.DomainError) -> Problem:
    """The problem response a domain error answers with."""
    match exc:
        case errors.NotFound():
            return Problem(404, exc.detail, kind="not-found")
        case errors.InvalidInput():
            return Problem(422, exc.detail, kind="invalid-input")
        case errors.Conflict():
            return Problem(409, exc.detail, kind=exc.kind)
        case errors.StatePruned():
            return Problem(
                410,
                exc.detail,
                kind="state-pruned",
                extra={"run_id": str(exc.run_id), "run_status": exc.run_status},
            )
    return Problem(500, "internal error", kind="internal-error")
