"""Benchmark 14: what a person waits for in the Agent Chat UI: Enter to the first token.

One replica, the offline model at 0 ms latency, the Agent Chat UI of examples/chat-ui (built
once, ``next start``) in headless Debian Chromium. One conversation of ``TURNS`` turns, one
after another: for each, the time from the Enter key (a capture listener on the page, at the
keydown) to the first paint showing the reply's first token (a MutationObserver sees the text,
the next animation frame is the paint). Everything in between is in the figure: the UI's
``useStream`` submit, the run's creation, queueing and claim, the graph's first model call, the
event's write and the SSE hop, React's render. Turn 1 also creates the thread.
"""

from __future__ import annotations

import os
import shutil
import statistics
from contextlib import ExitStack
from typing import Any

from playwright.async_api import Page, async_playwright

from tests.browser import chat_ui
from tests.browser.conftest import CHROMIUM_FLAGS
from tests.browser.ui import COMPOSER, chat_url
from tests.perf import servers
from tests.perf.bench_streaming import logs_on_failure
from tests.perf.harness import Bench, Row, alone

NAME = "14. chat UI: Enter to first token"
GOAL_MS = 150.0
TURN_TIMEOUT_MS = 30_000
# Marks the keydown and the paint of the first token of the reply "Turn <n>. ...".
PROBE = r"""() => {
  window.__enterAt = null;
  window.__firstAt = null;
  window.__turn = 0;
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && window.__enterAt === null) window.__enterAt = performance.now();
  }, true);
  new MutationObserver(() => {
    if (window.__enterAt === null || window.__firstAt !== null) return;
    if (!document.body.textContent.includes(`Turn ${window.__turn}.`)) return;
    window.__firstAt = -1;
    requestAnimationFrame(() => { window.__firstAt = performance.now(); });
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
}"""


# Enter to the end of the run's stream response (Resource Timing): the server's and the
# network's share; the rest of the wait is the page's own work (useStream, React, markdown).
STREAM_DONE = r"""() => {
  const runs = performance.getEntriesByType("resource").filter(
    (e) => e.name.includes("/runs/stream") && e.startTime >= window.__enterAt);
  return runs.length ? runs[0].responseEnd - window.__enterAt : null;
}"""


async def one_turn(page: Page, n: int) -> tuple[float, float | None]:
    """Milliseconds from Enter to the first painted token of turn ``n``'s reply, and from Enter
    to the end of its stream's response."""
    await page.evaluate("() => performance.clearResourceTimings()")
    await page.evaluate(
        f"() => {{ window.__turn = {n}; window.__enterAt = null; window.__firstAt = null; }}"
    )
    text = f"message number {n}"
    box = page.get_by_placeholder(COMPOSER)
    await box.fill(text)
    await box.press("Enter")
    await page.wait_for_function("() => window.__firstAt > 0", timeout=TURN_TIMEOUT_MS)
    waited: float = await page.evaluate("() => window.__firstAt - window.__enterAt")
    # The whole reply, and the run's end (the UI takes no message while it streams).
    await page.get_by_text(f'You just said: "{text}".').wait_for(timeout=TURN_TIMEOUT_MS)
    await page.get_by_role("button", name="Cancel").wait_for(
        state="detached", timeout=TURN_TIMEOUT_MS
    )
    streamed: float | None = await page.evaluate(STREAM_DONE)
    return waited, streamed


async def run(bench: Bench) -> list[Row]:
    turns = bench.size(20, 5)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("chromium is missing: bash tests/browser/ensure-chromium.sh (root)")
    load_before = os.getloadavg()
    samples: list[float] = []
    stream_done: list[float] = []
    with ExitStack() as stack:
        db_url = stack.enter_context(bench.database())
        server = stack.enter_context(servers.ours(db_url, bench.work, name="a"))
        stack.enter_context(logs_on_failure(server))
        server.start()
        ui = stack.enter_context(chat_ui.serving(bench.work))
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=chromium, headless=True, args=list(CHROMIUM_FLAGS)
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(chat_url(ui, server.url))
                await page.evaluate(PROBE)
                for n in range(1, turns + 1):
                    waited, streamed = await one_turn(page, n)
                    samples.append(waited)
                    if streamed is not None:
                        stream_done.append(streamed)
            finally:
                await browser.close()
    first, rest = samples[0], samples[1:]
    details: dict[str, Any] = {
        "turns": turns,
        "first_turn_ms": round(first, 1),
        "later_turns_median_ms": round(statistics.median(rest), 1) if rest else None,
        "samples_ms": [round(x, 1) for x in samples],
        "enter_to_stream_end_median_ms": (
            round(statistics.median(stream_done), 1) if stream_done else None
        ),
        "load_average": [
            [round(x, 2) for x in load_before],
            [round(x, 2) for x in os.getloadavg()],
        ],
    }
    return [
        alone(
            NAME,
            "Enter to first painted token, offline model 0 ms",
            "ms",
            samples,
            goal=f"median < {GOAL_MS:.0f} ms",
            goal_check=lambda median: median < GOAL_MS,
            details=details,
        )
    ]
