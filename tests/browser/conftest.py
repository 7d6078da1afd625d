"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium, driven by Playwright.

Without Chromium the tests skip on a developer machine and fail in CI (CI=true), where the
Makefile installs it; a browser test that silently never runs protects nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import WebServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "var" / "screenshots"


@pytest.fixture
def chromium(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop on this thread, and Django refuses ORM calls
    # from a thread with a loop. The test thread only ever makes blocking calls, one at a time,
    # so the guard has nothing to protect here; Playwright's own Django guide does the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # Cheap hashes the server process can check too: people sign in at its login form.
    settings.PASSWORD_HASHERS = ["tests.support.ServerCheckablePasswordHasher"]


@pytest.fixture
def web_server(transactional_db: Any) -> Iterator[WebServer]:
    """The product's own server (daphne: pages and their live sockets), not Django's WSGI
    live_server, which has no websockets: pages tested there would only ever poll."""
    with WebServer() as server:
        yield server
