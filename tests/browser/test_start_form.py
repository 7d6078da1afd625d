"""The start form in a browser: a list entered item by item with "Add another" and "Remove", a
refund under the minimum refused beside its field (the browser would stop it too; the server is
the authority), then the run started with what was typed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestration.models import Run
from tests.browser.test_actions import logged_in_page
from tests.support import load_workflow, wait_for

pytestmark = pytest.mark.browser

REFUNDS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: refunds
  name: Refunds
  owner: ops
  inputs:
    refund: {type: number, required: true, minimum: 0, title: Refund amount, description: In euros}
    tags: {type: list, title: Tags, items: {type: string}}
  steps:
    - {key: pay, agent: echo}
"""


def refresh_the_cards(page: Any) -> None:
    """Refresh the workflow cards as a live push would, and wait until the morph has settled."""
    page.evaluate(
        """() => new Promise(resolve => {
            const cards = document.getElementById("workflow-cards");
            cards.addEventListener("htmx:afterSettle", () => resolve(), {once: true});
            htmx.trigger(cards, "baton:refresh");
        })"""
    )


def test_an_operator_enters_a_list_item_by_item_sees_the_minimum_refused_then_starts_the_run(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(REFUNDS)
    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/workflows/")
    form = page.locator("#start-refunds")
    tags = form.get_by_role("group", name="Tags")

    expect(tags.locator("input")).to_have_count(1)  # the spare no-JavaScript slots are gone
    tags.get_by_label("Tags, item 1").fill("late")
    for number, text in ((2, "broken"), (3, "lost")):
        tags.get_by_role("button", name="Add another").click()
        added = tags.get_by_label(f"Tags, item {number}")
        expect(added).to_be_focused()
        refresh_the_cards(page)  # a live refresh keeps the new, focused field and its focus
        expect(added).to_be_focused()
        added.fill(text)
    tags.get_by_role("button", name="Remove").nth(1).click()  # "broken" goes, "lost" moves up
    refresh_the_cards(page)  # and does not put the removed one back
    expect(tags.get_by_label("Tags, item 2")).to_have_value("lost")
    expect(tags.locator("input")).to_have_count(2)

    amount = form.get_by_label("Refund amount")
    expect(amount).to_have_accessible_description("In euros")
    amount.fill("-5")
    assert amount.evaluate("input => input.validity.rangeUnderflow"), "the browser knows the minimum too"
    # As an old browser or a hand-made request would: the server must refuse it all the same.
    form.evaluate("form => { form.noValidate = true; }")
    form.get_by_role("button", name="Start run").click()

    error = page.locator("#input-refunds-refund-error")
    expect(error).to_have_text("refund: -5 is less than the minimum 0")
    expect(page.get_by_label("Refund amount")).to_have_value("-5")
    expect(page.get_by_label("Tags, item 1")).to_have_value("late")
    expect(page.get_by_label("Tags, item 2")).to_have_value("lost")
    expect(page.get_by_role("button", name="Add another")).to_be_visible()  # the swapped-in form works too
    expect(page.locator("#start-refunds input[name=tags]")).to_have_count(3)  # the two, one blank
    assert not Run.objects.exists()
    page.screenshot(path=str(screenshots / "start-form-refused.png"), full_page=True)

    page.get_by_label("Refund amount").fill("5")
    page.locator("#start-refunds").get_by_role("button", name="Start run").click()
    run = wait_for(lambda: Run.objects.first(), message="the run was not started")
    page.wait_for_url(f"{web_server.url}/runs/{run.pk}/")
    assert run.input == {"refund": 5, "tags": ["late", "lost"]}
