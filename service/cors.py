"""Cross-origin calls from a browser app (a chat UI served on another origin).

The Agent Server answers any origin by default, so the Agent Chat UI on its own port talks to it
directly; threadkeeper does the same unless ``THREADKEEPER_CORS_ALLOW_ORIGINS`` narrows it.
Credentials (cookies) are never allowed: callers authenticate with headers, which a page on
another origin cannot borrow from the user.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

# What the SDKs read from responses: the run (Content-Location, for onRunCreated), where to
# rejoin a cut stream (Location), and the thread search's pages.
EXPOSED_HEADERS = ("Content-Location", "Location", "X-Pagination-Total", "X-Pagination-Next")


def origins(setting: str) -> list[str]:
    """``THREADKEEPER_CORS_ALLOW_ORIGINS`` as a list: comma separated, blanks dropped."""
    return [origin.strip() for origin in setting.split(",") if origin.strip()]


def cors_middleware(setting: str) -> list[Middleware]:
    """The CORS layer for these origins; none when the setting is empty."""
    allowed = origins(setting)
    if not allowed:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=allowed,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=list(EXPOSED_HEADERS),
            max_age=600,
        )
    ]
