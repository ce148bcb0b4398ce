"""Headless Debian Chromium driven by Playwright, and a place for each test's screenshots."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.browser import chat_ui as chat_ui_app

# The machine's network is closed: without these, Chromium keeps trying to reach Google's hosts
# and the refused connections slow every page.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
OUTPUT_ROOT = Path(__file__).resolve().parents[2] / "test-output"

Screenshot = Callable[[Page, str], Path]


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is missing: run `bash tests/browser/ensure-chromium.sh` (root)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module (Playwright gives it a fresh, empty profile).

    Not per session: Playwright's sync API keeps an event loop running on this thread while it
    is open, and every asyncio test after it in the session would fail to start its own.
    """
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=list(CHROMIUM_FLAGS)
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context (no cookies, no storage) and its page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """test-output/<test>/: kept after the run, for screenshots a person looks at."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
    folder = OUTPUT_ROOT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def screenshot(output_dir: Path) -> Screenshot:
    """Save a full-page screenshot of `page` as <output_dir>/<name>.png and return its path."""

    def take(page: Page, name: str) -> Path:
        path = output_dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture(scope="session")
def chat_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Agent Chat UI (examples/chat-ui), built once, served for the session; its URL."""
    with chat_ui_app.serving(tmp_path_factory.mktemp("chat-ui")) as url:
        yield url
