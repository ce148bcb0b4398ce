"""The deployment a replica serves, read from ``langgraph.json`` as the LangGraph CLI reads it.

Only ``graphs`` is required. Keys are honoured with the CLI's meaning where threadkeeper does
what they ask (``graphs``, ``env``, ``http.app``); keys that only shape an image build
(``dependencies``, ``python_version``, ...) are accepted and left to the build; keys of features
this server does not have yet (``auth``) are validated and then refused at start-up,
so a deployment never runs without something its config asks for. Anything else is a warning:
the CLI grows keys faster than any server, and a newer file should still start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG_ENV = "THREADKEEPER_CONFIG"
DEFAULT_CONFIG = Path("langgraph.json")

# Read by the image build (the CLI's Dockerfile generation); nothing to do at run time.
BUILD_KEYS = frozenset(
    {
        "dependencies",
        "python_version",
        "node_version",
        "pip_config_file",
        "pip_installer",
        "dockerfile_lines",
        "image_distro",
        "base_image",
        "keep_pkg_tools",
        "api_version",
    }
)


class PendingKey(StrEnum):
    """Keys whose features are not served yet: validated, then refused at start-up."""

    AUTH = "auth"


class DeploymentError(Exception):
    """A configuration that cannot be served; the message names the file and the key."""

    def __init__(self, path: Path | None, key: str | None, message: str) -> None:
        where = str(path) if path else "the built-in configuration"
        self.path, self.key = path, key
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConfig(BaseModel):
    # The CLI's http section has more keys (cors, disable_*, ...); only `app` is served.
    model_config = ConfigDict(extra="allow", frozen=True)

    app: str | None = Field(default=None, min_length=1)


class StoreIndex(_Strict):
    dims: int = Field(ge=1)
    embed: str = Field(min_length=1)
    fields: list[str] | None = None


class StoreTTL(_Strict):
    default_ttl: float | None = Field(default=None, gt=0)
    refresh_on_read: bool = True
    sweep_interval_minutes: int | None = Field(default=None, ge=1)


class StoreConfig(_Strict):
    index: StoreIndex | None = None
    ttl: StoreTTL | None = None


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    path: str | None = Field(default=None, min_length=1)


class ConfigFile(BaseModel):
    """The keys of ``langgraph.json`` this server reads, validated; others are collected."""

    model_config = ConfigDict(extra="allow", frozen=True)

    graphs: dict[str, str] = Field(min_length=1)
    env: str | dict[str, str] | None = None
    http: HttpConfig | None = None
    store: StoreConfig | None = None
    auth: AuthConfig | None = None


@dataclass(frozen=True)
class Deployment:
    """What one replica serves: graph specs by id, resolved against the config's folder."""

    graphs: Mapping[str, str]
    base_dir: Path
    path: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    http_app: str | None = None
    store: StoreConfig | None = None
    warnings: tuple[str, ...] = ()


# The demo, named by module: nothing of it is relative to a folder (least of all the one the
# process happens to start in).
BUILTIN = Deployment(
    graphs={"agent": "threadkeeper.service.agent.graph:graph"}, base_dir=Path(__file__).parent
)


def config_path(explicit: str | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """``--config``, else ``THREADKEEPER_CONFIG``, else ``./langgraph.json`` when it exists."""
    chosen = explicit or environ.get(CONFIG_ENV)
    if chosen:
        return Path(chosen)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load(path: Path | None) -> Deployment:
    """The deployment a config file describes; the built-in demo when there is none."""
    if path is None:
        return BUILTIN
    raw = _read(path)
    try:
        parsed = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or None
        raise DeploymentError(path, key, err["msg"]) from None
    _refuse_pending(path, parsed)
    base = path.resolve().parent
    return Deployment(
        graphs=dict(parsed.graphs),
        base_dir=base,
        path=path,
        env=_env(path, base, parsed.env),
        http_app=parsed.http.app if parsed.http else None,
        store=parsed.store,
        warnings=tuple(_unknown_key_warnings(parsed)),
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeploymentError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeploymentError(path, None, f"cannot be read: {exc}") from None
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise DeploymentError(path, None, f"is not valid JSON: {exc}") from None
    except _DuplicateKey as exc:
        raise DeploymentError(path, None, f"key {exc.args[0]!r} is given twice") from None
    if not isinstance(document, dict):
        raise DeploymentError(path, None, "must hold a JSON object")
    return document


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; a graph id given twice is a mistake.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _refuse_pending(path: Path, parsed: ConfigFile) -> None:
    for key in PendingKey:
        if getattr(parsed, key.value) is not None:
            raise DeploymentError(
                path, key.value, "is valid but not supported by this threadkeeper version yet"
            )


def _env(path: Path, base: Path, env: str | dict[str, str] | None) -> dict[str, str]:
    if env is None:
        return {}
    if isinstance(env, dict):
        return env
    from dotenv import dotenv_values

    env_file = base / env
    if not env_file.is_file():
        raise DeploymentError(path, "env", f"{env_file} does not exist")
    return {k: v for k, v in dotenv_values(env_file).items() if v is not None}


def _unknown_key_warnings(parsed: ConfigFile) -> list[str]:
    extra = parsed.model_extra or {}
    return [
        f"key {key!r} is not used by threadkeeper and is ignored"
        for key in sorted(extra)
        if key not in BUILD_KEYS
    ]


def apply_env(deployment: Deployment, environ: dict[str, str] | None = None) -> None:
    """Export the config's ``env`` without overriding what the process environment sets.

    The process environment wins so a Secret mounted by Kubernetes overrides a default that a
    developer's ``.env`` carries.
    """
    target = os.environ if environ is None else environ
    for key, value in deployment.env.items():
        target.setdefault(key, value)
