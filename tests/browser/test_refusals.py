"""An action the server refuses says why in the page (issue 7, point 24): an approver whose item
was reassigned while their page was open presses Approve and reads the reason; a reload shows
the styled 403 with the same sentence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from approvals import transitions as decisions
from approvals.models import Item, ItemStatus
from orchestration import transitions
from tests.support import drive, load_workflow

pytestmark = [pytest.mark.browser]

LEGAL = """
agents:
  - {name: writer, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: article
  name: Article
  owner: ops
  steps:
    - {key: draft, agent: writer, input: {headline: Tide pools}}
    - key: legal_review
      after: [draft]
      approval:
        title: Publish the tide pools article?
        approvers: {groups: [legal]}
        deadline: 2h
    - {key: publish, agent: writer, after: [legal_review], input: {headline: Tide pools}}
"""

REASON = "This item was reassigned to carol by dave; it is no longer yours to decide."


def legal_item_and_dave(ops: Any, approver: Any) -> tuple[Item, Any]:
    """An approval waiting for group legal (approver, carol and dave), started by ops."""
    legal = Group.objects.create(name="legal")
    approver.groups.add(legal)
    users = get_user_model().objects
    users.create_user("carol", "carol@example.com", "carol-pass-1").groups.add(legal)
    dave = users.create_user("dave", "dave@example.com", "dave-pass-1")
    dave.groups.add(legal)
    load_workflow(LEGAL)
    run = drive(transitions.start_run(workflow="article", started_by=ops))
    return Item.objects.get(run=run), dave


def test_an_approver_whose_item_was_reassigned_meanwhile_is_told_why(
    web_server: Any, transactional_db: Any, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    item, dave = legal_item_and_dave(ops, approver)

    page = chromium.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(15_000)
    # This page does not follow changes (its live script is left out): it is the approver who
    # presses Approve before any push arrives (with one, the page tells them first: next test).
    page.route("**/static/js/live.js", lambda route: route.fulfill(body="", content_type="text/javascript"))
    page.goto(f"{web_server.url}/login/?next=/approvals/{item.pk}/")
    page.get_by_label("Username").fill("approver")
    page.get_by_label("Password").fill("approver-pass-1")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{web_server.url}/approvals/{item.pk}/")
    approve = page.get_by_role("button", name="Approve")
    expect(approve).to_be_visible()

    # While the page is open, dave hands the item to carol.
    decisions.reassign(item_id=item.pk, user=dave, to_user="carol", note="carol has the context")

    approve.click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text(REASON)
    expect(alert).to_be_visible()
    page.screenshot(path=str(screenshots / "refused-approve.png"))
    # Nothing was swapped away or half-done: the form is still there, the item still waits.
    expect(page.get_by_role("button", name="Approve")).to_be_enabled()
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING and not item.votes.exists()

    # Dismissed, it goes; a reload shows the product's 403 page with the same sentence.
    page.get_by_role("button", name="Dismiss this message").click()
    expect(alert).to_be_hidden()
    response = page.reload()
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="You may not open this")).to_be_visible()
    expect(page.locator("[data-refusal-reason]")).to_have_text(REASON)
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    page.screenshot(path=str(screenshots / "refused-403.png"))
    page.close()


def test_an_open_item_page_reassigned_elsewhere_says_so_at_once_and_offers_nothing(
    web_server: Any, transactional_db: Any, ops: Any, approver: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    item, dave = legal_item_and_dave(ops, approver)

    page = chromium.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{web_server.url}/login/?next=/approvals/{item.pk}/")
    page.get_by_label("Username").fill("approver")
    page.get_by_label("Password").fill("approver-pass-1")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{web_server.url}/approvals/{item.pk}/")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    expect(page.get_by_role("button", name="Approve")).to_be_visible()

    decisions.reassign(item_id=item.pk, user=dave, to_user="carol", note="carol has the context")

    # No click: the push makes the page refresh, the item is no longer the approver's to open,
    # and the page says why while what it showed stays, greyed and out of reach.
    expect(page.get_by_role("alert")).to_have_text(REASON)
    expect(page.locator("#item-live")).to_have_attribute("inert", "")
    expect(page.locator("#item-live")).to_have_class(re.compile(r"\blive-gone\b"))
    # Another part's refresh succeeding (the navigation count, told of the same change) leaves
    # the message alone.
    expect(page.locator(".nav__count")).to_have_attribute("data-count", "0")
    expect(page.get_by_role("alert")).to_be_visible()
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING and not item.votes.exists()
    page.close()
