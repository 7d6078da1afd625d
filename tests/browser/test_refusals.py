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
from orchestration.status import RunStatus
from tests.support import WebServer, drive, load_workflow

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


# The run page's actions go through the same one mechanism: the refusal is the styled 403 page,
# and static/js/baton.js shows its marked sentence instead of swapping it in.
OPEN_RUN = """
agents:
  - {name: writer, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: notes
  name: Release notes
  owner: ops
  access: {operators: [editors]}
  steps:
    - {key: draft, agent: writer, input: {headline: Tide pools}}
    - key: review
      after: [draft]
      approval: {title: 'Publish the notes?', approvers: {users: [approver]}, deadline: 2h}
"""
NOT_AN_OPERATOR = (
    "You may see this run but not change it: ask its workflow's owner to add you to an operator group."
)
STALE = (
    "This page is out of date (you may have signed in again in another tab), so Baton did not act on it."
    " Reload the page and try again; nothing was changed."
)


def run_page(chromium: Any, web_server: Any, run_id: int, username: str, password: str) -> Any:
    """The run page, signed in at the login form, not following changes (see the first test)."""
    # A context of its own, so that a test may open a second tab in it.
    page = chromium.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    page.route("**/static/js/live.js", lambda route: route.fulfill(body="", content_type="text/javascript"))
    page.goto(f"{web_server.url}/login/?next=/runs/{run_id}/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{web_server.url}/runs/{run_id}/")
    page.on("dialog", lambda dialog: dialog.accept())  # "Cancel run #…?"
    return page


def test_an_operator_taken_off_the_workflow_meanwhile_is_told_why_cancel_was_refused(
    web_server: Any, transactional_db: Any, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    editors = Group.objects.create(name="editors")
    erin = get_user_model().objects.create_user("erin", "erin@example.com", "erin-pass-1")
    erin.groups.add(editors)
    Group.objects.create(name="readers")
    load_workflow(OPEN_RUN.replace("operators: [editors]", "operators: [editors], viewers: [readers]"))
    erin.groups.add(Group.objects.get(name="readers"))
    run = drive(transitions.start_run(workflow="notes", started_by=ops))
    page = run_page(chromium, web_server, run.pk, "erin", "erin-pass-1")
    cancel = page.get_by_role("button", name="Cancel run")
    expect(cancel).to_be_visible()

    # While the page is open, erin leaves the operators (she stays a reader).
    erin.groups.remove(editors)

    cancel.click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text(NOT_AN_OPERATOR)
    expect(alert).to_be_in_viewport()
    page.screenshot(path=str(screenshots / "refused-cancel.png"))
    # The 403 page was not swapped into the run's part: the run page is whole, the run open.
    expect(page.locator("#run-live .run-summary")).to_be_visible()
    expect(page.locator("#run-live .error-page")).to_have_count(0)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.finished_at is None
    page.context.close()


def test_a_page_left_open_across_a_new_sign_in_says_to_reload_and_changes_nothing(
    web_server: Any, transactional_db: Any, ops: Any, approver: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    Group.objects.create(name="editors")
    load_workflow(OPEN_RUN)
    run = drive(transitions.start_run(workflow="notes", started_by=ops))
    page = run_page(chromium, web_server, run.pk, "ops", "ops-pass-1")
    expect(page.get_by_role("button", name="Cancel run")).to_be_visible()

    # In another tab ops signs out and in again: a new CSRF token, which the open page lacks.
    other = page.context.new_page()
    other.goto(f"{web_server.url}/")
    other.get_by_role("button", name="Log out").click()
    other.goto(f"{web_server.url}/login/")
    other.get_by_label("Username").fill("ops")
    other.get_by_label("Password").fill("ops-pass-1")
    other.get_by_role("button", name="Sign in").click()
    other.wait_for_url(f"{web_server.url}/")
    other.close()

    page.get_by_role("button", name="Cancel run").click()
    expect(page.get_by_role("alert")).to_have_text(STALE)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING

    # As it says: after a reload the same button works.
    page.reload()
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".run-summary .badge")).to_have_text("cancelled")
    page.context.close()


def test_a_request_too_large_for_the_server_says_how_large_it_may_be(
    transactional_db: Any, ops: Any, approver: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    Group.objects.create(name="editors")
    load_workflow(OPEN_RUN)
    run = drive(transitions.start_run(workflow="notes", started_by=ops))
    # The request-size refusal is one bare paragraph, not a page: baton.js shows its text.
    with WebServer(env={"BATON_MAX_REQUEST_BYTES": "4096"}) as server:
        page = run_page(chromium, server, run.pk, "ops", "ops-pass-1")
        page.get_by_label("Reason (optional)").fill("because " * 600)
        page.get_by_role("button", name="Cancel run").click()
        expect(page.get_by_role("alert")).to_have_text(
            re.compile(
                r"^The request body is [\d,]+ bytes; at most 4,096 are accepted \(BATON_MAX_REQUEST_BYTES\)\.$"
            )
        )
        expect(page.get_by_role("button", name="Cancel run")).to_be_visible()
        page.context.close()
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
