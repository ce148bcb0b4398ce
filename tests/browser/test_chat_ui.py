"""The Agent Chat UI (examples/chat-ui) against a real threadkeeper process, in Chromium.

Nothing is mocked: the UI is LangChain's, built by ``next build`` and driving the server through
``@langchain/langgraph-sdk``'s ``useStream``; the server runs the offline model on Postgres.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Request, expect

from tests.browser.conftest import Screenshot
from tests.browser.ui import chat_url, painted_replies, record_paints, send
from tests.support.auth_proxy import AuthProxy
from tests.support.balancer import Balancer
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.browser

QUESTION = "what is 12 + 30?"
REPLY = (
    f'Turn 1. You first said: "{QUESTION}". You just said: "{QUESTION}". '
    "Tool results: 12 + 30 = 42."
)
REFUND_AGENT = Path(__file__).resolve().parents[2] / "examples" / "refund-agent"
# The reply's tokens come 30 ms apart, so it takes about a second to arrive in full.
TOKEN_MS = "30"


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        database_url, tmp_path, "threadkeeper", THREADKEEPER_OFFLINE_TOKEN_MS=TOKEN_MS
    ) as proc:
        yield proc.start()


def test_the_reply_streams_in_with_its_tool_call(
    page: Page, chat_ui: str, service: ServiceProcess, screenshot: Screenshot
) -> None:
    page.goto(chat_url(chat_ui, service.url))
    record_paints(page)
    send(page, QUESTION)

    expect(page.get_by_text(REPLY)).to_be_visible(timeout=30_000)
    expect(_tool_call(page)).to_be_visible()
    expect(page.locator("td", has_text="12 + 30")).to_be_visible()
    expect(page.get_by_text("Tool Result: calculator")).to_be_visible()
    screenshot(page, "streamed-reply")

    painted = [text for text in painted_replies(page) if text]
    assert painted[-1] == REPLY
    partial = painted[:-1]
    assert len(partial) >= 2, f"the reply appeared in {len(painted)} paint(s): {painted}"
    assert all(REPLY.startswith(text.rstrip()) for text in partial), partial


def test_a_reload_brings_the_thread_back_from_the_server(
    page: Page, browser: Browser, chat_ui: str, service: ServiceProcess, screenshot: Screenshot
) -> None:
    # The thread list open, as the UI keeps it in its URL.
    page.goto(chat_url(chat_ui, service.url, chatHistoryOpen="true"))
    send(page, QUESTION)
    expect(page.get_by_text(REPLY)).to_be_visible(timeout=30_000)
    assert "threadId=" in page.url

    page.reload()
    _expect_thread_shown(page)
    screenshot(page, "after-reload")

    # A browser with nothing stored at all: only the server can have kept the conversation.
    other = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        fresh = other.new_page()
        fresh.goto(page.url)
        _expect_thread_shown(fresh)
        screenshot(fresh, "fresh-browser")
    finally:
        other.close()


def _expect_thread_shown(page: Page) -> None:
    expect(page.get_by_text(REPLY)).to_be_visible(timeout=30_000)
    expect(_human_messages(page)).to_have_text([QUESTION])
    expect(_tool_call(page)).to_be_visible()
    history = page.locator("button", has_text=QUESTION)
    expect(history).to_have_count(1)
    expect(history).to_be_in_viewport()


def _tool_call(page: Page) -> Locator:
    """The UI's card for the model's call: the tool's name, then the call's id."""
    return page.get_by_role("heading", name=re.compile(r"^calculator\s*call_"))


@pytest.fixture
def refund_service(database_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    """examples/refund-agent served as a user deploys it (its langgraph.json, its package)."""
    with ServiceProcess(
        database_url,
        tmp_path,
        "refund-agent",
        THREADKEEPER_CONFIG=str(REFUND_AGENT / "langgraph.json"),
        PYTHONPATH=str(REFUND_AGENT / "src"),
    ) as proc:
        yield proc.start()


def test_a_person_approves_the_interrupt_and_the_run_goes_on(
    page: Page, chat_ui: str, refund_service: ServiceProcess, screenshot: Screenshot
) -> None:
    page.goto(chat_url(chat_ui, refund_service.url, assistant_id="refunds"))
    send(page, "please refund order 20")

    approve = page.get_by_role("button", name="Approve", exact=True)
    expect(approve).to_be_visible(timeout=30_000)
    # The UI's review card: the action, its arguments, the reviewer's choices.
    expect(page.get_by_text("refund", exact=True)).to_be_visible()
    expect(page.get_by_text("Amount", exact=True)).to_be_visible()
    expect(page.get_by_text("Reject", exact=True)).to_be_visible()
    expect(page.get_by_text("Refunded 200.00.")).to_have_count(0)
    screenshot(page, "interrupted")

    approve.click()
    expect(page.get_by_text("Refunded 200.00.")).to_be_visible(timeout=30_000)
    expect(approve).to_have_count(0)
    screenshot(page, "approved")
    thread_id = parse_qs(urlparse(page.url).query)["threadId"][0]
    state = httpx.get(f"{refund_service.url}/threads/{thread_id}/state", timeout=10).json()
    assert state["values"]["approved"] is True
    assert state["next"] == []


def test_through_the_auth_proxy_a_user_never_sees_anothers_threads(
    browser: Browser,
    chat_ui: str,
    replicas: Callable[..., ServiceProcess],
    output_dir: Path,
    screenshot: Screenshot,
) -> None:
    """Two replicas (header auth) behind the balancer, behind an auth proxy that knows each
    user by the API key their UI sends."""
    pair = [replicas(name, THREADKEEPER_AUTH="header").start() for name in ("a", "b")]
    balancer = Balancer([r.port for r in pair])
    balancer.start()
    proxy = AuthProxy(balancer.url, {"key-ada": "ada", "key-bob": "bob"}).start()
    people = [_signed_in(browser, key) for key in ("key-ada", "key-bob")]
    try:
        ada, bob = (person.new_page() for person in people)
        ada.goto(chat_url(chat_ui, proxy.url, chatHistoryOpen="true"))
        send(ada, "ada's secret plan")
        expect(ada.get_by_text('You first said: "ada\'s secret plan"')).to_be_visible(
            timeout=30_000
        )
        expect(ada.locator("button", has_text="ada's secret plan")).to_have_count(1)
        screenshot(ada, "ada")

        # Bob's thread list, and Ada's thread opened by its URL: nothing of hers.
        bob.goto(chat_url(chat_ui, proxy.url, chatHistoryOpen="true"))
        send(bob, "bob's question")
        expect(bob.get_by_text('You first said: "bob\'s question"')).to_be_visible(timeout=30_000)
        expect(bob.locator("button", has_text="bob's question")).to_have_count(1)
        expect(bob.get_by_text("ada's secret plan")).to_have_count(0)
        bob.goto(ada.url)
        expect(bob.locator("button", has_text="bob's question")).to_have_count(1)
        # The server answered Bob's UI as for a thread that does not exist.
        expect(bob.get_by_text("HTTP 404")).to_be_visible(timeout=30_000)
        expect(bob.get_by_text("ada's secret plan")).to_have_count(0)
        screenshot(bob, "bob-on-adas-thread-url")

        ada_thread = parse_qs(urlparse(ada.url).query)["threadId"][0]
        as_bob = httpx.get(f"{proxy.url}/threads/{ada_thread}", headers={"X-Api-Key": "key-bob"})
        assert as_bob.status_code == 404
        forged = httpx.get(
            f"{proxy.url}/threads/{ada_thread}",
            headers={"X-Api-Key": "key-bob", "X-Forwarded-User": "ada"},
        )
        assert forged.status_code == 404
        assert httpx.get(f"{proxy.url}/threads/{ada_thread}").status_code == 401
    finally:
        for person in people:
            person.close()
        proxy.stop()
        balancer.stop()


def _signed_in(browser: Browser, api_key: str) -> BrowserContext:
    """A person's own browser, with the API key entered in the UI (kept in its localStorage)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"window.localStorage.setItem('lg:chat:apiKey', {api_key!r})")
    return context


def test_the_stream_survives_its_replica_being_killed(
    page: Page, chat_ui: str, replicas: Callable[..., ServiceProcess], screenshot: Screenshot
) -> None:
    """SIGKILL the replica that runs the turn and streams it, mid-reply: the UI reconnects
    through the balancer to the other replica, which takes the run over when its lease ends."""
    slow = {"THREADKEEPER_OFFLINE_TOKEN_MS": "150", "THREADKEEPER_LEASE_SECONDS": "3"}
    first, second = (replicas(name, **slow).start() for name in ("first", "second"))
    # Every connection goes to the first replica while it listens, then to the second.
    balancer = Balancer([first.port, second.port])
    balancer.start()
    try:
        rejoins: list[Request] = []
        page.on(
            "request",
            lambda r: rejoins.append(r) if r.method == "GET" and "/stream" in r.url else None,
        )
        page.goto(chat_url(chat_ui, balancer.url))
        record_paints(page)
        send(page, QUESTION)
        page.wait_for_function("() => window.__replies.some((text) => text.length > 0)")
        (run,) = _runs(first, page)
        assert run["replica"] == first.name, "the turn should run where it was sent"
        first.kill()
        shown_at_kill = painted_replies(page)[-1]
        assert 0 < len(shown_at_kill) < len(REPLY), "the reply ended before the kill"
        screenshot(page, "cut")

        expect(page.get_by_text(REPLY)).to_be_visible(timeout=60_000)
        screenshot(page, "resumed")
        painted = [text for text in painted_replies(page) if text]
        assert painted[-1] == REPLY
        assert all(REPLY.startswith(text.rstrip()) for text in painted), painted
        expect(page.get_by_text("Turn 1.")).to_have_count(1)
        expect(_human_messages(page)).to_have_text([QUESTION])
        expect(_tool_call(page)).to_have_count(1)
        # The SDK rejoined the run's stream where it was cut, as the first replica named it.
        assert rejoins, "the UI never rejoined the stream"
        assert all(r.url.endswith("/stream") or "/stream?" in r.url for r in rejoins)
        assert any(r.headers.get("last-event-id") for r in rejoins)
        (done,) = _runs(second, page)
        assert (done["status"], done["replica"], done["attempt"]) == ("success", second.name, 2)
    finally:
        balancer.stop()


def _runs(replica: ServiceProcess, page: Page) -> list[dict[str, object]]:
    """The runs of the thread the page shows, as a replica has them."""
    thread_id = parse_qs(urlparse(page.url).query)["threadId"][0]
    runs: list[dict[str, object]] = httpx.get(
        f"{replica.url}/threads/{thread_id}/runs", timeout=10
    ).json()
    return runs


def _human_messages(page: Page) -> Locator:
    """The person's messages as the conversation shows them (bubbles on the right)."""
    return page.locator("p.bg-muted.ml-auto")
