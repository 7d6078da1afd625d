"""An approver signs in from an email link, works through the inbox and sees the runs continue."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals.models import Item
from orchestration import transitions
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.support import ROOT, WorkerCluster, drive, load_workflow

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

AGENTS = """
agents:
  - {name: writer, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: publisher, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: payments, kind: python, risk: high, description: Moves money, config: {callable: "tests.agents.basic:echo"}}
"""

WORKFLOWS = [
    AGENTS
    + """
workflow:
  key: content
  name: Content pipeline
  owner: ops
  access: {viewers: [support]}
  inputs: {topic: {type: string, required: true}}
  steps:
    - key: draft
      agent: writer
      input: {headline: "{{ input.topic }}: what to expect tonight", summary: "A 900-word explainer on {{ input.topic }}, with viewing tips and a map."}
    - key: legal_review
      after: [draft]
      approval:
        title: "Publish '{{ input.topic }}'?"
        details: "{{ steps.draft.output.summary }}"
        approvers: {users: [approver]}
        deadline: 48h
    - {key: publish, agent: publisher, after: [legal_review], input: {headline: "{{ steps.draft.output.headline }}"}}
""",
    AGENTS
    + """
workflow:
  key: budget
  name: Budget requests
  owner: ops
  access: {viewers: [support]}
  inputs: {amount: {type: integer, required: true}}
  steps:
    - {key: estimate, agent: writer, input: {amount: "{{ input.amount }}", team: marketing}}
    - key: sign_off
      after: [estimate]
      approval:
        title: "Approve the Q3 marketing budget of ${{ input.amount }}?"
        details: "Marketing asks for ${{ input.amount }} for the autumn campaign."
        approvers: {users: [approver, carol]}
        required: 2
        deadline: 20h
    - {key: book, agent: publisher, after: [sign_off]}
""",
    AGENTS
    + """
workflow:
  key: refunds
  name: Refunds
  owner: ops
  inputs: {customer: {type: string, required: true}, amount: {type: number, required: true}}
  steps:
    - {key: lookup, agent: writer, input: {customer: "{{ input.customer }}", order: "A-20931"}}
    - key: refund
      agent: payments
      after: [lookup]
      input: {customer: "{{ input.customer }}", amount: "{{ input.amount }}", currency: EUR, order: "{{ steps.lookup.output.order }}"}
      gate: {title: "Refund €{{ input.amount }} to {{ input.customer }}?", approvers: {users: [approver]}, deadline: 4h}
""",
    AGENTS
    + """
workflow:
  key: onboarding
  name: Customer onboarding
  owner: ops
  inputs: {customer: {type: string, required: true}}
  steps:
    - {key: check, agent: writer, input: {customer: "{{ input.customer }}", address_valid: false}}
    - key: fix_address
      after: [check]
      manual:
        title: "Correct {{ input.customer }}'s address"
        instructions: The postal service returned the welcome pack. Call the customer and fix the address.
        assignees: {groups: [support]}
        form: {street: {type: string, required: true}, verified: {type: boolean}}
        deadline: 8h
""",
    AGENTS
    + """
workflow:
  key: incident
  name: Incident notices
  owner: ops
  steps:
    - {key: draft, agent: writer, input: {customers: 312}}
    - key: send_ok
      after: [draft]
      approval:
        title: Send the incident notice to 312 customers?
        details: The outage is over; the notice explains what happened and the credit they get.
        approvers: {groups: [support]}
        deadline: 45m
    - {key: send, agent: publisher, after: [send_ok]}
""",
]


def backdate(item: Item, hours: float) -> None:
    """Make an item look as if it had waited a while, so the time bars show something."""
    Item.objects.filter(pk=item.pk).update(created_at=timezone.now() - timedelta(hours=hours))


def test_an_approver_signs_in_approves_one_item_rejects_another_and_the_runs_go_on(
    web_server: Any, transactional_db: Any, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from django.contrib.auth import get_user_model
    from playwright.sync_api import expect

    approver.groups.add(Group.objects.get_or_create(name="support")[0])
    get_user_model().objects.create_user("carol", "carol@example.com", "carol-pass-1")
    for text in WORKFLOWS:
        load_workflow(text)
    article = drive(transitions.start_run(workflow="content", input={"topic": "The northern lights"}, started_by=ops))
    budget = drive(transitions.start_run(workflow="budget", input={"amount": 48000}, started_by=ops))
    drive(transitions.start_run(workflow="refunds", input={"customer": "ACME Corp", "amount": 1240}, started_by=ops))
    drive(transitions.start_run(workflow="onboarding", input={"customer": "Jane Doe"}, started_by=ops))
    drive(transitions.start_run(workflow="incident", started_by=ops))
    publish = Item.objects.get(run=article)
    sign_off = Item.objects.get(run=budget)
    backdate(publish, 30)
    backdate(sign_off, 14)
    backdate(Item.objects.get(kind="manual"), 2)
    backdate(Item.objects.get(run__workflow__key="incident"), 3)
    assert Item.objects.filter(status="pending").count() == 5

    with WorkerCluster(workers=2) as cluster:
        page = chromium.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(15_000)

        # An email link: signing in lands straight back on the page it pointed at.
        page.goto(f"{web_server.url}/approvals/")
        page.wait_for_url(f"{web_server.url}/login/?next=/approvals/")
        page.get_by_label("Username").fill("approver")
        page.get_by_label("Password").fill("approver-pass-1")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{web_server.url}/approvals/")
        expect(page.get_by_role("heading", name="Approvals")).to_be_visible()
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.locator(".nav__count")).to_have_text("5")
        rows = page.locator("#inbox-list tbody tr")
        expect(rows).to_have_count(5)
        # Nearest deadline first: the incident notice (45 minutes) leads, the article (48h) ends.
        expect(rows.first).to_contain_text("Send the incident notice")
        expect(rows.last).to_contain_text("Publish 'The northern lights'?")
        page.screenshot(path=str(screenshots / "inbox.png"), full_page=True)
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshots / "inbox.png", docs / "inbox.png")

        phone = chromium.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.set_default_timeout(15_000)
        phone.context.add_cookies(page.context.cookies())
        phone.goto(f"{web_server.url}/approvals/")
        expect(phone.locator("#inbox-list tbody tr")).to_have_count(5)
        phone.screenshot(path=str(screenshots / "inbox-phone.png"), full_page=True)

        # The gate: the page shows the exact action the high-risk agent is about to take.
        refund = Item.objects.get(kind="gate")
        page.goto(f"{web_server.url}/approvals/{refund.pk}/")
        expect(page.locator(".item-what")).to_contain_text("The exact action about to run")
        expect(page.locator(".item-what")).to_contain_text("A-20931")
        expect(page.locator('.node[data-step="refund"]')).to_have_attribute("data-status", "waiting")
        page.screenshot(path=str(screenshots / "approval-gate.png"), full_page=True)
        phone.goto(f"{web_server.url}/approvals/{refund.pk}/")
        phone.screenshot(path=str(screenshots / "approval-gate-phone.png"), full_page=True)

        # Approve one on its page: the outcome replaces the buttons and focus moves on.
        page.goto(f"{web_server.url}/approvals/{publish.pk}/")
        expect(page.locator(".leading")).to_contain_text("A 900-word explainer")
        page.get_by_role("button", name="Approve").click()
        panel = page.locator("#item-panel")
        expect(panel.locator(".outcome")).to_contain_text("approved")
        expect(panel.locator(".outcome")).to_contain_text("by approver")
        expect(page.get_by_role("button", name="Approve")).to_have_count(0)
        expect(page.locator(".next-item")).to_be_focused()
        page.screenshot(path=str(screenshots / "approval-decided.png"), full_page=True)

        # Reject another from its inbox row: first without a comment (refused, nothing
        # changes), then with one. The row updates in place and focus moves to the next row.
        page.goto(f"{web_server.url}/approvals/")
        row = page.locator(f"#item-row-{sign_off.pk}")
        row.get_by_role("button", name="Reject").click()
        expect(row.locator(".field__error")).to_have_text("Say why you reject it.")
        row.get_by_label("Comment").fill("Over the quarter's limit; ask again in October.")
        row.get_by_role("button", name="Reject").click()
        expect(row).to_have_attribute("data-status", "rejected")
        expect(row.locator(".row-outcome")).to_contain_text("by approver")
        # Focus moves after htmx settles the swap: wait for it rather than reading it at once.
        page.wait_for_function(
            "(decided) => { const tr = document.activeElement && document.activeElement.closest('tr');"
            " return !!(tr && tr.id && tr.id !== decided); }",
            arg=f"item-row-{sign_off.pk}",
        )
        focused = page.evaluate("document.activeElement.closest('tr') && document.activeElement.closest('tr').id")
        assert focused and focused != f"item-row-{sign_off.pk}", focused
        expect(page.locator(f"#{focused} [data-focus]")).to_be_focused()

        # The runs go on: the approved article is published, the rejected budget fails.
        page.goto(f"{web_server.url}/runs/{article.pk}/")
        expect(page.locator(".run-summary .badge")).to_have_text("succeeded", timeout=30_000)
        expect(page.locator('.node[data-step="publish"]')).to_have_attribute("data-status", "succeeded")
        page.goto(f"{web_server.url}/runs/{budget.pk}/")
        expect(page.locator(".run-summary .badge")).to_have_text("failed", timeout=30_000)
        expect(page.locator("#run-live")).to_contain_text("Over the quarter's limit")

        # The item page tells the story too, and the inbox holds three items now.
        page.goto(f"{web_server.url}/approvals/{sign_off.pk}/")
        expect(page.locator(".item-history")).to_contain_text("Voted")
        expect(page.locator(".outcome__comment")).to_have_text("Over the quarter's limit; ask again in October.")
        page.goto(f"{web_server.url}/approvals/")
        expect(page.locator("#inbox-list tbody tr")).to_have_count(3)
        expect(nav.locator(".nav__count")).to_have_text("3")
        page.goto(f"{web_server.url}/approvals/decided/")
        expect(page.locator("#decided-table tbody tr")).to_have_count(2)
        page.screenshot(path=str(screenshots / "approvals-decided.png"), full_page=True)
        phone.close()
        page.close()
        log = cluster.log()

    assert Run.objects.get(pk=article.pk).status == RunStatus.SUCCEEDED, log
    assert Run.objects.get(pk=budget.pk).status == RunStatus.FAILED, log


TASKS = (
    AGENTS
    + """
  - {name: picky, kind: python, config: {callable: "tests.approvals.test_views_item:picky"}}
workflow:
  key: onboarding
  name: Customer onboarding
  owner: ops
  on_failure: escalate
  inputs: {customer: {type: string, required: true}}
  steps:
    - {key: check, agent: writer, input: {customer: "{{ input.customer }}", address_valid: false}}
    - key: fix_address
      after: [check]
      manual:
        title: "Correct {{ input.customer }}'s address"
        instructions: The postal service returned the welcome pack. Call the customer and fix the address.
        assignees: {users: [approver]}
        form:
          street: {type: string, required: true, description: Street and house number}
          postcode: {type: string, required: true}
          floor: {type: integer}
          verified: {type: boolean, description: The customer confirmed it on the phone}
        deadline: 8h
    - {key: welcome, agent: picky, after: [fix_address], input: {street: "{{ steps.fix_address.output.street }}"}}
"""
)


def sign_in(chromium: Any, web_server: Any, username: str, password: str, *, phone: bool = False) -> Any:
    size = {"width": 390, "height": 844} if phone else {"width": 1360, "height": 900}
    page = chromium.new_page(viewport=size, device_scale_factor=2 if phone else 1)
    page.set_default_timeout(15_000)
    page.goto(f"{web_server.url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{web_server.url}/")
    return page


def test_a_task_form_explains_its_errors_in_place_and_an_owner_resolves_the_failure_after_it(
    web_server: Any, transactional_db: Any, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(TASKS)
    # The approver starts it: ops, the owner, handles its exception later, which the run's
    # starter could not (the self-approval rule covers exception items).
    run = drive(transitions.start_run(workflow="onboarding", input={"customer": "Jane Doe"}, started_by=approver))
    task = Item.objects.get(run=run, kind="manual")

    page = sign_in(chromium, web_server, "approver", "approver-pass-1")
    page.goto(f"{web_server.url}/approvals/{task.pk}/")
    page.evaluate("window.batonTestMark = 'same page'")
    page.get_by_label("floor").fill("2.5")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator(".form-error")).to_contain_text("The task was not submitted.")
    expect(page.locator('[data-field="street"]')).to_have_text("Required.")
    expect(page.locator('[data-field="floor"]')).to_have_text("Enter a whole number.")
    expect(page.get_by_label("floor")).to_have_value("2.5")
    page.screenshot(path=str(screenshots / "approval-task-errors.png"), full_page=True)
    phone = sign_in(chromium, web_server, "approver", "approver-pass-1", phone=True)
    phone.goto(f"{web_server.url}/approvals/{task.pk}/")
    phone.screenshot(path=str(screenshots / "approval-task-phone.png"), full_page=True)
    phone.close()

    page.get_by_label("street").fill("1 Harbour Road")
    page.get_by_label("postcode").fill("AB1 2CD")
    page.get_by_label("floor").fill("3")
    page.get_by_label("verified").check()
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#item-panel .outcome")).to_contain_text("submitted")
    expect(page.locator("#item-panel .outcome")).to_contain_text("1 Harbour Road")
    assert page.evaluate("window.batonTestMark") == "same page"
    page.close()
    task.refresh_from_db()
    assert task.submitted == {"street": "1 Harbour Road", "postcode": "AB1 2CD", "floor": 3, "verified": True}

    # No worker here: the next step runs in-process, fails for good and waits for its owner.
    drive(run)
    failure = Item.objects.get(run=run, kind="exception")
    owner = sign_in(chromium, web_server, "ops", "ops-pass-1")
    owner.goto(f"{web_server.url}/approvals/")
    expect(owner.get_by_role("link", name="Exceptions")).to_contain_text("1")
    owner.get_by_role("link", name="Exceptions").click()
    owner.locator(f"#item-row-{failure.pk}").get_by_role("link", name="Resolve").click()
    expect(owner.locator(".item-what")).to_contain_text("the input is not ok")
    owner.screenshot(path=str(screenshots / "approval-exception.png"), full_page=True)
    owner.get_by_label("Output later steps will see").fill('{"sent": ')
    owner.get_by_role("button", name="Skip with this output").click()
    expect(owner.locator("#item-panel")).to_contain_text("Not valid JSON")
    owner.get_by_label("Output later steps will see").fill('{"sent": "by hand"}')
    owner.get_by_role("button", name="Skip with this output").click()
    expect(owner.locator("#item-panel .outcome")).to_contain_text("resolved")
    owner.close()
    assert drive(run).status == RunStatus.SUCCEEDED
