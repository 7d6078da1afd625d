"""Open pages change by themselves, pushed over their websocket, with polling switched off.

Every test runs a real daphne process (WebServer) with BATON_LIVE_POLL_SECONDS=0, so the only
way a page can change is a push (or the refetch of a socket that reconnects), and puts a mark on
`window`: if the mark is still there at the end, the page changed in place, never by a reload.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone
from django.utils.dateformat import format as date_format

from approvals import transitions as item_transitions
from approvals.models import Item
from orchestration import transitions
from orchestration.models import Run
from tests.support import WebServer, WorkerCluster, drive, load_workflow

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
"""

DIGEST = (
    AGENTS
    + """
workflow:
  key: digest
  name: Daily digest
  owner: ops
  inputs:
    topic: {type: string, required: true}
    sections: {type: list, default: [news, weather, sport]}
  steps:
    - {key: research, agent: echo, input: {topic: "{{ input.topic }}"}}
    - {key: summarise, agent: echo, after: [research], for_each: "{{ input.sections }}", input: {text: "{{ item }}"}}
    - {key: publish, agent: echo, after: [summarise], input: {parts: "{{ steps.summarise.output }}"}}
"""
)

CONTENT = (
    AGENTS
    + """
workflow:
  key: content
  name: Content pipeline
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: draft, agent: echo, input: {headline: "{{ input.topic }} tonight"}}
    - key: legal_review
      after: [draft]
      approval: {title: "Publish '{{ input.topic }}'?", approvers: {users: [approver]}}
    - {key: publish, agent: echo, after: [legal_review]}
"""
)

BUDGET = (
    AGENTS
    + """
workflow:
  key: budget
  name: Budget requests
  owner: ops
  inputs: {amount: {type: integer, required: true}}
  steps:
    - {key: estimate, agent: echo, input: {amount: "{{ input.amount }}"}}
    - key: sign_off
      after: [estimate]
      approval:
        title: "Approve a budget of ${{ input.amount }}?"
        approvers: {groups: [finance]}
        required: 2
    - {key: book, agent: echo, after: [sign_off]}
"""
)

PASSWORDS = {"ops": "ops-pass-1", "approver": "approver-pass-1", "admin": "admin-pass-1"}
# A push reaches the page within a second on an idle machine; the test machine is shared.
PUSHED = 15_000


@pytest.fixture
def server(transactional_db: Any) -> Iterator[WebServer]:
    """Daphne on the test database, with the pages' fallback polling switched off."""
    with WebServer(env={"BATON_LIVE_POLL_SECONDS": "0"}) as web:
        yield web


def signed_in(chromium: Any, server: WebServer, user: Any) -> Any:
    """A page of a new browser context (its own cookies), signed in through the login form."""
    from playwright.sync_api import expect

    page = chromium.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.set_default_timeout(PUSHED)
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill(user.get_username())
    page.get_by_label("Password").fill(PASSWORDS[user.get_username()])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    return page


def open_live(page: Any, url: str) -> None:
    """Open a page, wait until its socket is up, and mark the document."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    page.evaluate("window.batonTestMark = 'same page'")


def same_page(page: Any) -> bool:
    return bool(page.evaluate("window.batonTestMark") == "same page")


def waiting_item(workflow: str, input: dict[str, Any], ops: Any) -> Item:
    """A run driven in this process until its approval step waits; the item it waits on."""
    run = drive(transitions.start_run(workflow=workflow, input=input, started_by=ops))
    return Item.objects.get(run=run)


def item_decided_at(item: Item) -> str:
    """The decision's time as the page writes it in <time datetime> (Django's "c" format)."""
    item.refresh_from_db()
    assert item.decided_at is not None
    return date_format(timezone.localtime(item.decided_at), "c")


def test_a_started_runs_steps_turn_green_without_a_reload(
    server: WebServer, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(DIGEST)
    # Started before any worker runs: the page is open while every step is still to do.
    run = transitions.start_run(workflow="digest", input={"topic": "the northern lights"}, started_by=ops)
    page = signed_in(chromium, server, ops)
    open_live(page, f"{server.url}/runs/{run.pk}/")
    expect(page.locator('.node[data-step="publish"]')).not_to_have_attribute("data-status", "succeeded")

    with WorkerCluster(workers=2) as cluster:
        expect(page.locator(".run-summary .badge")).to_have_text("succeeded", timeout=30_000)
        log = cluster.log()

    for key in ("research", "summarise", "publish"):
        expect(page.locator(f'.node[data-step="{key}"]')).to_have_attribute("data-status", "succeeded")
        expect(page.locator(f"#step-{key} .step-status .badge")).to_have_text("succeeded")
    expect(page.locator("#step-summarise")).to_contain_text("3 / 3 items")
    assert same_page(page), "the run page was reloaded"
    assert Run.objects.get(pk=run.pk).status == "succeeded", log
    page.screenshot(path=str(screenshots / "live-run.png"), full_page=True)


def test_a_new_approval_appears_in_an_open_inbox_tab(
    server: WebServer, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(CONTENT)
    page = signed_in(chromium, server, approver)
    open_live(page, f"{server.url}/approvals/")
    count = page.locator(".nav__count")
    expect(count).to_have_attribute("data-count", "0")
    expect(page.locator("#inbox-list")).to_contain_text("Nothing is waiting for you")

    # Ops starts a run; it reaches the approval step (this process plays the worker).
    item = waiting_item("content", {"topic": "The northern lights"}, ops)

    row = page.locator(f"#item-row-{item.pk}")
    expect(row).to_contain_text("Publish 'The northern lights'?", timeout=PUSHED)
    expect(row.get_by_role("button", name="Approve")).to_be_enabled()
    expect(count).to_have_attribute("data-count", "1")
    expect(page.locator("#inbox-tabs .tabs__count").first).to_have_text("1")
    # The list's refreshes carry the tabs, never another copy of the page's heading.
    expect(page.get_by_role("heading", name="Approvals", level=1)).to_have_count(1)
    assert same_page(page), "the inbox was reloaded"
    page.screenshot(path=str(screenshots / "live-inbox.png"), full_page=True)


def test_deciding_in_one_tab_updates_the_other_tabs_item_page_and_nav_count(
    server: WebServer, ops: Any, approver: Any, admin_user: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(CONTENT)
    item = waiting_item("content", {"topic": "The northern lights"}, ops)
    url = f"{server.url}/approvals/{item.pk}/"
    # Tab B: an admin, who may decide anything, has the item open too.
    other = signed_in(chromium, server, admin_user)
    open_live(other, url)
    expect(other.get_by_role("button", name="Approve")).to_be_enabled()
    expect(other.locator(".nav__count")).to_have_attribute("data-count", "1")

    # Tab A: the approver approves.
    page = signed_in(chromium, server, approver)
    page.goto(url)
    page.get_by_role("button", name="Approve").click()
    # The action's answer says "You approved this."; the push that follows may already have
    # redrawn the panel with its outcome line. Either says it is done.
    expect(page.locator("#item-panel")).to_contain_text(re.compile(r"You approved this\.|approved\s+by approver"))

    live = other.locator("#item-live")
    expect(live).to_have_attribute("data-status", "approved", timeout=PUSHED)
    outcome = other.locator("#item-panel .outcome__line")
    expect(outcome).to_contain_text("approved")
    expect(outcome).to_contain_text("by approver")
    expect(outcome.locator("time")).to_have_attribute("datetime", item_decided_at(item))
    expect(other.get_by_role("button", name="Approve")).to_have_count(0)
    expect(other.get_by_role("button", name="Reject")).to_have_count(0)
    expect(other.locator(".nav__count")).to_have_attribute("data-count", "0")
    assert same_page(other), "the other tab was reloaded"
    other.screenshot(path=str(screenshots / "live-item-decided-elsewhere.png"), full_page=True)


def test_focus_and_a_half_typed_comment_survive_an_update_of_the_item_page(
    server: WebServer, ops: Any, approver: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    finance = Group.objects.create(name="finance")
    carol = get_user_model().objects.create_user("carol", "carol@example.com", "carol-pass-1")
    finance.user_set.add(approver, carol)
    load_workflow(BUDGET)
    item = waiting_item("budget", {"amount": 48000}, ops)
    page = signed_in(chromium, server, approver)
    open_live(page, f"{server.url}/approvals/{item.pk}/")
    panel = page.locator("#item-panel")
    expect(panel).to_contain_text("0 so far")

    comment = page.locator("#decision-comment")
    comment.click()
    comment.press_sequentially("The figures add up, but")

    # Carol votes elsewhere (as her own browser would, through the one transition).
    item_transitions.vote(item_id=item.pk, user=carol, decision="approve", comment="Fine by me")

    expect(panel).to_contain_text("1 so far", timeout=PUSHED)
    expect(page.locator(".item-votes")).to_contain_text("carol")
    assert page.evaluate("document.activeElement.id") == "decision-comment"
    expect(comment).to_have_value("The figures add up, but")
    # Typing goes on where it stopped: the caret stayed in the box.
    page.keyboard.type(" the travel line is high.")
    expect(comment).to_have_value("The figures add up, but the travel line is high.")
    assert same_page(page), "the item page was reloaded"


def test_a_killed_socket_shows_reconnecting_and_the_page_catches_up_after(
    server: WebServer, ops: Any, approver: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    load_workflow(CONTENT)
    item = waiting_item("content", {"topic": "Owls"}, ops)
    page = signed_in(chromium, server, ops)
    open_live(page, f"{server.url}/runs/{item.run_id}/")
    badge = page.locator(".run-summary .badge")
    expect(badge).to_have_text("running")

    server.kill()
    status = page.locator("#live-status")
    expect(status).to_have_attribute("data-state", "reconnecting")
    expect(status).to_contain_text("reconnecting")
    # Changed while no web process runs: no push can ever tell the page of it.
    transitions.cancel_run(run_id=item.run_id, actor=ops)
    server.start()

    # The socket comes back (after its back-off) and the page refetches its parts.
    expect(status).to_have_attribute("data-state", "live", timeout=30_000)
    expect(badge).to_have_text("cancelled", timeout=PUSHED)
    expect(page.locator('.node[data-step="legal_review"]')).to_have_attribute("data-status", "cancelled")
    assert same_page(page), "the run page was reloaded"
