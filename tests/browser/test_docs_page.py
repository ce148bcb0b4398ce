"""The interactive API page at ``/docs`` (Swagger UI from a package, no CDN) in headless Chromium,
against a real service process: it renders every operation of /openapi.json and executes one."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Request, expect

from tests.browser.conftest import Screenshot
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.browser


def _operations(url: str) -> int:
    doc = httpx.get(f"{url}/openapi.json").json()
    return sum(len(methods) for methods in doc["paths"].values())


def test_docs_page_lists_every_operation_and_tries_get_ok(
    page: Page, replicas: Callable[..., ServiceProcess], screenshot: Screenshot
) -> None:
    service = replicas("docs").start()
    service_host = urlsplit(service.url).netloc
    # Everything the page loads comes from the service itself: no CDN, no other host.
    elsewhere: list[str] = []

    def note(request: Request) -> None:
        if urlsplit(request.url).netloc != service_host and not request.url.startswith("data:"):
            elsewhere.append(request.url)

    page.on("request", note)

    page.goto(f"{service.url}/docs")

    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible(timeout=30_000)
    assert operations.count() == _operations(service.url)
    screenshot(page, "operations")

    ok = page.locator("#operations-default-ok_get")
    ok.locator(".opblock-summary").click()
    ok.get_by_role("button", name="Try it out").click()
    ok.get_by_role("button", name="Execute").click()
    response = ok.locator(".live-responses-table .response")
    expect(response.locator(".response-col_status")).to_have_text("200", timeout=30_000)
    expect(response.locator(".microlight").first).to_contain_text('"ok": true')
    screenshot(page, "get-ok-executed")
    assert elsewhere == []
