"""The files a `.dockerignore` admits to a build context, as BuildKit sends them.

The image's cache key hashes exactly these files, so a change anywhere else in the tree
never rebuilds it. The rules follow moby/patternmatcher, which BuildKit uses: patterns are
relative to the context root (a leading `/` means the same), `*` and `?` stay within one
path segment, `**` spans any number of them, a leading `!` re-admits, the last matching
pattern wins, and a pattern that matches a directory matches everything under it.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILE = ".dockerignore"


@dataclass(frozen=True)
class _Pattern:
    text: str
    regex: re.Pattern[str]
    admits: bool


def _translate(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def parse(text: str) -> list[_Pattern]:
    """The patterns of a `.dockerignore`, in order; comments and blank lines dropped."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        admits = line.startswith("!")
        body = posixpath.normpath(line[1:].strip() if admits else line).lstrip("/")
        patterns.append(_Pattern(body, _translate(body), admits))
    return patterns


def _matches(pattern: _Pattern, relative: str) -> bool:
    """The path or one of its parent directories matches."""
    parts = relative.split("/")
    return any(pattern.regex.match("/".join(parts[:n])) for n in range(len(parts), 0, -1))


def excluded(patterns: list[_Pattern], relative: str) -> bool:
    verdict = False
    for pattern in patterns:
        if _matches(pattern, relative):
            verdict = not pattern.admits
    return verdict


def _may_readmit_under(patterns: list[_Pattern], directory: str) -> bool:
    """Whether some `!` pattern could admit a path below an excluded directory."""
    for pattern in patterns:
        if not pattern.admits:
            continue
        literal = re.split(r"[*?\[\\]", pattern.text, maxsplit=1)[0]
        if literal != pattern.text and not literal:
            return True  # starts with a wildcard: it could match anywhere
        if pattern.text.startswith(directory + "/") or literal.startswith(directory + "/"):
            return True
    return False


def admitted_files(root: Path) -> list[Path]:
    """Every file under `root` its `.dockerignore` lets into the context, sorted."""
    ignore = root / IGNORE_FILE
    patterns = parse(ignore.read_text()) if ignore.is_file() else []
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        base = Path(directory).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        subdirs[:] = sorted(
            name
            for name in subdirs
            if not excluded(patterns, prefix + name) or _may_readmit_under(patterns, prefix + name)
        )
        found.extend(
            Path(directory) / name for name in files if not excluded(patterns, prefix + name)
        )
    return sorted(found)
