"""Decoding a request's JSON body, refusing what could not be stored or served back.

One place for the rules, so no route meets a value Postgres, the checkpoint serializer or the
response encoder would fail on halfway through a request.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from threadkeeper.service.problems import Problem

# Deeper than any real message or metadata; far below where recursive encoders give up.
MAX_DEPTH = 100
# What msgpack (the checkpoint serializer) and orjson can hold: signed or unsigned 64 bits.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
# Postgres text and jsonb cannot hold NUL; a lone surrogate has no UTF-8 encoding at all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def decode(raw: bytes) -> Any:
    """The body's JSON value; a ``Problem`` says what is wrong with one that is refused."""
    try:
        value = json.loads(
            raw, parse_constant=_no_constant, parse_float=_finite, parse_int=_in_range
        )
    except ValueError as exc:  # also bad UTF-8, and integers too long to convert
        raise Problem(400, f"malformed JSON: {exc}", kind="malformed-json") from exc
    except RecursionError as exc:
        raise _too_deep() from exc
    check(value)
    return value


def check(value: Any) -> None:
    """Refuse unstorable text and nesting deeper than MAX_DEPTH anywhere in ``value``."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
            continue
        if not isinstance(item, dict | list):
            continue
        if len(where) >= MAX_DEPTH:
            raise _too_deep()
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, (*where, key))
                stack.append((child, (*where, key)))
        else:
            stack.extend((child, (*where, i)) for i, child in enumerate(item))


def check_text(value: str, name: str) -> None:
    """The same rule for a path or query parameter."""
    _check_text(value, (name,))


def unstorable(text: str) -> str | None:
    """What in ``text`` Postgres could not store, named for an error message; None if nothing."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "a NUL character (\\u0000)"
    return f"a lone surrogate (\\u{ord(char):04x})"


def _check_text(text: str, where: tuple[str | int, ...]) -> None:
    what = unstorable(text)
    if what is not None:
        place = ".".join(str(p) for p in where) or "body"
        raise Problem(422, f"{place}: text must not contain {what}", kind="invalid-input")


def _no_constant(name: str) -> Any:
    raise Problem(400, f"malformed JSON: {name} is not a JSON number", kind="malformed-json")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Problem(400, f"malformed JSON: {text} is out of range", kind="malformed-json")
    return value


def _in_range(text: str) -> int:
    value = int(text)
    if not MIN_INT <= value <= MAX_INT:
        raise Problem(422, f"{text} does not fit in 64 bits", kind="invalid-input")
    return value


def _too_deep() -> Problem:
    return Problem(
        422, f"the body is nested too deeply (at most {MAX_DEPTH} levels)", kind="invalid-input"
    )
