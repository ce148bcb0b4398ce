"""The agent's tools: arithmetic, the clock, and a deliberately slow lookup."""

from __future__ import annotations

import ast
import asyncio
import operator
from collections.abc import Callable
from datetime import UTC, datetime

from langchain_core.tools import BaseTool, tool
from langgraph.config import get_stream_writer
from langgraph.prebuilt import ToolRuntime

MAX_LOOKUP_SECONDS = 600.0

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> float:
    """Evaluate plain arithmetic without ``eval``: numbers, + - * / // % ** and parentheses."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            if isinstance(node.op, ast.Pow) and abs(walk(node.right)) > 64:
                raise ValueError("exponent too large")
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        raise ValueError(f"unsupported expression: {expression!r}")

    return walk(ast.parse(expression, mode="eval"))


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as ``(2 + 3) * 4``."""
    try:
        value = evaluate(expression)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError) as exc:
        return f"error: {exc}"
    return f"{expression} = {value:g}"


@tool
def current_time() -> str:
    """Return the current time in UTC, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@tool
async def slow_lookup(seconds: float, runtime: ToolRuntime) -> str:
    """Look something up slowly: waits ``seconds`` (at most 600) before answering."""
    seconds = max(0.0, min(float(seconds), MAX_LOOKUP_SECONDS))
    write = get_stream_writer()
    write({"tool": "slow_lookup", "status": "started", "seconds": seconds})
    # Progress halfway, for clients following the ``tools`` stream mode.
    await asyncio.sleep(seconds / 2)
    runtime.emit_output_delta({"progress": 0.5})
    await asyncio.sleep(seconds / 2)
    write({"tool": "slow_lookup", "status": "done", "seconds": seconds})
    return f"looked up slowly for {seconds:g}s"


TOOLS: list[BaseTool] = [calculator, current_time, slow_lookup]
