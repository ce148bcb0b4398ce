"""The browser tier's own plumbing: Debian's Chromium starts headless and renders a local page."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import Screenshot

pytestmark = pytest.mark.browser


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<button onclick=\"this.textContent='clicked'\">press</button>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_page_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_chromium_runs_script_and_saves_a_screenshot(
    page: Page, local_page_url: str, screenshot: Screenshot
) -> None:
    page.goto(local_page_url)
    page.get_by_role("button").click()
    assert page.get_by_role("button").text_content() == "clicked"
    shot = screenshot(page, "clicked")
    assert shot.stat().st_size > 0
