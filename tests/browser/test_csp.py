"""The Content-Security-Policy: every main page passes it in Chromium, and htmx still works.

A violation shows up twice in the browser: as a `securitypolicyviolation` event in the page and
as a console error. Both are collected on every page, including after htmx swaps parts in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from approvals.models import Item
from orchestration import transitions
from tests.support import drive, load_workflow

pytestmark = pytest.mark.browser

WORKFLOW = """
agents:
  - {name: writer, kind: simulated, max_concurrency: 3, config: {output: {headline: "Tides tonight"}, delay: 0, failure_rate: 0}}
workflow:
  key: article
  name: Article
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: draft, agent: writer, input: {topic: "{{ input.topic }}"}}
    - key: legal_review
      after: [draft]
      approval: {title: "Publish {{ input.topic }}?", approvers: {users: [approver]}, deadline: 48h}
    - {key: publish, agent: writer, after: [legal_review]}
"""

# Recorded before any page script runs, on every document the page loads.
LISTEN = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"}: ${e.sample}`);
});
"""


class Browser:
    """One signed-in page that remembers every CSP complaint it saw."""

    def __init__(self, chromium: Any, web_server: Any, username: str, password: str) -> None:
        self.base = web_server.url
        self.page = chromium.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(15_000)
        self.page.add_init_script(LISTEN)
        self.complaints: list[str] = []
        self.page.on("console", self._console)
        response = self.open(reverse("login"))
        assert "default-src 'self'" in response.headers["content-security-policy"]
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(f"{self.base}/**")
        self.collect()

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.complaints.append(f"console: {message.text}")

    def open(self, path: str) -> Any:
        self.collect()
        response = self.page.goto(f"{self.base}{path}")
        assert response is not None and response.status == 200, (path, response and response.status)
        self.page.wait_for_load_state("load")
        return response

    def collect(self) -> None:
        if self.page.url.startswith(self.base):
            url = self.page.url
            seen = self.page.evaluate("window.__cspViolations || []")
            self.complaints.extend(f"{url}: {text}" for text in seen)
            self.page.evaluate("window.__cspViolations = []")

    def close(self) -> list[str]:
        self.collect()
        self.page.close()
        return self.complaints


@pytest.fixture
def waiting_item(transactional_db: Any, ops: Any, approver: Any) -> Item:
    load_workflow(WORKFLOW)
    run = drive(transitions.start_run(workflow="article", input={"topic": "tide pools"}, started_by=ops))
    item = Item.objects.get(run=run)
    # Half of the time allowed is used up, so the deadline bar has a width to draw.
    Item.objects.filter(pk=item.pk).update(created_at=timezone.now() - timedelta(hours=24))
    return item


def test_the_main_pages_raise_no_csp_violation_and_htmx_still_swaps(
    web_server: Any, chromium: Any, admin_user: Any, waiting_item: Item
) -> None:
    from playwright.sync_api import expect

    run = waiting_item.run
    browser = Browser(chromium, web_server, "admin", "admin-pass-1")
    page = browser.page

    browser.open(reverse("dashboard:runs"))
    bar = page.locator(f'tr[data-run="{run.pk}"] .progress > span')
    # The width comes from data-width through baton.js, not from a style attribute.
    expect(bar).to_have_attribute("style", "width: 33%;")
    assert bar.evaluate("e => e.getBoundingClientRect().width") > 0
    # htmx: the nav count is fetched on load and swapped in (the served one carries data-count).
    expect(page.locator(".nav__count[data-count]")).to_have_count(1)

    browser.open(reverse("dashboard:run", args=[run.pk]))
    graph = page.locator("svg.graph")
    expect(graph).to_have_attribute("style", "min-width: " + graph.get_attribute("data-min-width") + "px;")
    # The live part refreshes itself (here as a push would make it): a morph happens, and what
    # it brings in passes too.
    with page.expect_response(lambda r: r.url.endswith(f"/runs/{run.pk}/") and r.request.headers.get("hx-request") == "true"):
        page.evaluate("() => htmx.trigger(document.getElementById('run-live'), 'baton:refresh')")
    page.wait_for_timeout(300)
    expect(page.locator("svg.graph")).to_have_attribute("style", graph.get_attribute("style") or "")

    browser.open(reverse("dashboard:agents"))
    expect(page.locator("#agent-writer .progress--slots > span")).to_have_attribute("style", "width: 0%;")
    browser.open(reverse("dashboard:workflows"))
    browser.open(reverse("approvals:inbox"))

    browser.open(reverse("approvals:item", args=[waiting_item.pk]))
    outlined = page.locator('.item-graph .node[data-step="legal_review"] rect')
    assert outlined.evaluate("e => getComputedStyle(e).strokeWidth") == "3px"
    clock = page.locator(".clock__bar > span").first
    used = clock.get_attribute("data-width")
    assert used is not None and int(used) > 0
    expect(clock).to_have_attribute("style", f"width: {used}%;")
    complaints = browser.close()
    assert complaints == [], "\n".join(complaints)


def test_an_approver_decides_through_htmx_under_the_policy(
    web_server: Any, chromium: Any, waiting_item: Item
) -> None:
    from playwright.sync_api import expect

    browser = Browser(chromium, web_server, "approver", "approver-pass-1")
    page = browser.page
    browser.open(reverse("approvals:inbox"))
    expect(page.locator(".nav__count")).to_have_text("1")
    browser.open(reverse("approvals:item", args=[waiting_item.pk]))
    page.evaluate("window.batonTestMark = 'same page'")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#item-panel .outcome")).to_contain_text("approved")
    assert page.evaluate("window.batonTestMark") == "same page", "htmx swapped the panel in place"
    complaints = browser.close()
    assert complaints == [], "\n".join(complaints)
    waiting_item.refresh_from_db()
    assert waiting_item.status == "approved"


def test_the_admin_pages_raise_no_csp_violation(web_server: Any, chromium: Any, admin_user: Any, waiting_item: Item) -> None:
    browser = Browser(chromium, web_server, "admin", "admin-pass-1")
    workflow = waiting_item.run.workflow
    for path in (
        reverse("admin:index"),
        reverse("admin:orchestration_workflow_changelist"),
        reverse("admin:orchestration_workflow_change", args=[workflow.pk]),
        reverse("admin:orchestration_agent_changelist"),
        reverse("admin:orchestration_run_changelist"),
    ):
        browser.open(path)
    complaints = browser.close()
    assert complaints == [], "\n".join(complaints)
