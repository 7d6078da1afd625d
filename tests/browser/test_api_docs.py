"""/api/docs in Chromium: Swagger UI from django-ninja's bundled files draws every area's
operations and raises no Content-Security-Policy violation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.test_csp import Browser

pytestmark = pytest.mark.browser


def test_the_api_docs_draw_the_operations_under_the_policy(
    web_server: Any, chromium: Any, admin_user: Any
) -> None:
    from playwright.sync_api import expect

    browser = Browser(chromium, web_server, "admin", "admin-pass-1")
    page = browser.page
    browser.open("/api/docs")
    for tag in ("workflows", "runs", "approvals", "events", "rollouts"):
        expect(page.locator(f'.opblock-tag[data-tag="{tag}"]')).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/api/workflows/{key}/runs").first).to_be_visible()
    complaints = browser.close()
    assert complaints == [], "\n".join(complaints)
