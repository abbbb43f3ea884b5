"""Pages rendered in a real browser: Debian's Chromium, headless, driven by playwright.

playwright's own browser download cannot work on these machines, so the system
browser is used (``apt-get install chromium``; `.ci/run` installs it). A missing
browser or playwright is an error naming the fix, never a skip: a page test that does
not run proves nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


class BrowserMissing(RuntimeError):
    pass


def require_browser():
    """playwright's sync API, once both it and Debian's Chromium are there."""
    if not os.access(CHROMIUM, os.X_OK):
        raise BrowserMissing(f"{CHROMIUM} is missing: apt-get install -y chromium (`.ci/run` does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise BrowserMissing(f"playwright is not installed ({exc}): pip install -e '.[dev]'") from None
    return sync_playwright


@dataclass
class RenderedDocs:
    """What a person sees on ``/docs``: the page text, the operations listed (method and
    path), the OpenAPI version badge, and every request the page tried to send off
    this machine (blocked)."""

    text: str
    operations: list[tuple[str, str]]
    badges: list[str]
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def render_swagger_docs(url: str, screenshot: Path | None = None, timeout_ms: int = 30_000) -> RenderedDocs:
    """Open Swagger UI at ``url`` with every non-loopback request blocked, wait until it
    rendered the operations or its error, and read the result; optionally save a PNG."""
    sync_playwright = require_browser()
    blocked: list[str] = []
    console_errors: list[str] = []

    def offline(route):
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:  # a CDN or any other host: the page must not need it
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.route("**/*", offline)
            page.goto(url, wait_until="load", timeout=timeout_ms)
            # Either outcome ends the wait: operations rendered, or Swagger UI's error (an
            # unreadable OpenAPI version is a .version-pragma box).
            page.wait_for_selector(".opblock, .version-pragma, .errors-wrapper, .loading-container .errors",
                                   timeout=timeout_ms)
            page.wait_for_load_state("networkidle", timeout=timeout_ms)
            operations = page.eval_on_selector_all(
                ".opblock", "blocks => blocks.map(b => ["
                "(b.querySelector('.opblock-summary-method') || {}).textContent || '',"
                "(b.querySelector('.opblock-summary-path') || {}).getAttribute"
                " ? b.querySelector('.opblock-summary-path').getAttribute('data-path') : ''])")
            badges = page.eval_on_selector_all(".info .version-stamp, .info small pre, .info .version",
                                               "els => els.map(e => e.textContent.trim())")
            text = page.inner_text("body")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return RenderedDocs(text=text, operations=[(m.strip().upper(), p) for m, p in operations],
                        badges=badges, blocked=blocked, console_errors=console_errors)


def render_served_docs(registry_root: Path, workdir: Path, screenshot: Path | None = None) -> RenderedDocs:
    """Start ``churn-assets serve`` over ``registry_root`` (its log in ``workdir``), wait
    for the model, render its ``/docs``, and stop the server (which must stop on SIGTERM)."""
    from churn_assets_tests.serving_support import ServerProcess, http_json, wait_for

    server = ServerProcess(registry_root, workdir / "server.log", workers=1)
    try:
        server.wait_healthy()
        wait_for(lambda: http_json(server.port, "GET", "/ready")[0] == 200, what="the model loaded")
        page = render_swagger_docs(f"http://127.0.0.1:{server.port}/docs", screenshot=screenshot)
    finally:
        graceful = server.stop()
    assert graceful, "the server did not stop on SIGTERM"
    return page
