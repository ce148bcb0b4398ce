"""Driving the Agent Chat UI as a person does: its page for a server, its composer, its replies."""

from __future__ import annotations

from urllib.parse import urlencode

from playwright.sync_api import Page

COMPOSER = "Type your message..."
# Samples the offline model's reply ("Turn N. ...") once per animation frame, i.e. per paint,
# keeping each distinct text the page showed.
RECORD_PAINTS = r"""() => {
  window.__replies = [];
  const tick = () => {
    const found = document.body.innerText.match(/Turn \d+\.[^\n]*/g);
    const text = found ? found[found.length - 1] : "";
    const seen = window.__replies;
    if (seen.length === 0 || seen[seen.length - 1] !== text) seen.push(text);
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


def chat_url(ui: str, api: str, assistant_id: str = "agent", **more: str) -> str:
    """The UI's page talking to ``api`` (the UI reads both from its query string)."""
    return f"{ui}/?{urlencode({'apiUrl': api, 'assistantId': assistant_id, **more})}"


def send(page: Page, text: str) -> None:
    box = page.get_by_placeholder(COMPOSER)
    box.fill(text)
    box.press("Enter")


def record_paints(page: Page) -> None:
    page.evaluate(RECORD_PAINTS)


def painted_replies(page: Page) -> list[str]:
    replies: list[str] = page.evaluate("() => window.__replies")
    return replies
