"""Browser fixtures (a pytest plugin: `pytest_plugins = ["browser_fixtures"]`): Debian's Chromium through
Playwright, and a page factory that aborts and records every request leaving the loopback interface, every
uncaught page error and every Content-Security-Policy refusal (a CDN link or an inline script the CSP
blocks never reaches the network, but the page is just as broken); the test fails at teardown on any."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is required (make sysdeps)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(**context_options) -> a new page (1280×800 unless given) whose requests to anything but the
    loopback interface are aborted; at teardown none may have been attempted, no page error raised and nothing
    refused by the CSP."""
    outside, errors, contexts = [], [], []

    def route(r):
        host = urlparse(r.request.url).hostname
        if host in LOOPBACK:
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    def make(**options):
        options.setdefault("viewport", {"width": 1280, "height": 800})
        ctx = browser.new_context(**options)
        ctx.route("**/*", route)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Content Security Policy" in m.text
                else None)
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert outside == [], f"requests outside the loopback interface: {outside}"
    assert errors == [], f"errors in the page (uncaught, or refused by the CSP): {errors}"
