"""A run that chose at run time, in a browser: the parent's page lists its mapped child runs with
their status, and the items page says which agent each item used and which items a redo round
kept (screenshots in var/screenshots for a person to look at)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.browser.test_actions import logged_in_page
from tests.engine.test_choices import REVIEWED, flow
from tests.support import drive

pytestmark = pytest.mark.browser


def test_the_run_page_shows_the_child_runs_and_the_items_page_the_agents_and_kept_items(
    web_server: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    access = "  owner: ops\n  access: {operators: [operations]}\n  output: '{{ steps.go.output }}'"
    flow("    - {key: go, agent: echo, input: {part: '{{ input.part }}'}}", key="part-worker", extra=access)
    flow(
        REVIEWED.replace("REDO", "[churn]")
        + "    - {key: deep, workflow: part-worker, for_each: '[1, 2, 3]', input: {part: '{{ item }}'}}\n",
        extra="  owner: ops\n  access: {operators: [operations]}",
    )
    run = drive(transitions.start_run(workflow="wf", started_by=ops))
    assert run.status == RunStatus.SUCCEEDED, run.error
    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/runs/{run.pk}/")
    children = page.locator("#step-deep .mapped-children li")
    expect(children).to_have_count(3)
    expect(children.first).to_contain_text("succeeded")
    first_child = Run.objects.filter(parent_step__run=run).order_by("parent_step__map_index").first()
    assert first_child is not None
    expect(children.first.get_by_role("link")).to_have_attribute("href", f"/runs/{first_child.pk}/")
    expect(page.locator("#step-work")).to_contain_text("chosen per item from accounting, crm, product")
    page.screenshot(path=str(screenshots / "run-page-choices.png"), full_page=True)
    page.goto(f"{web_server.url}/runs/{run.pk}/steps/work/items/?round=2")
    expect(page.locator(".item-row")).to_have_count(4)
    expect(page.locator("#item-1")).to_contain_text("crm")
    expect(page.locator("#item-0")).to_contain_text("kept from round 1")
    page.screenshot(path=str(screenshots / "run-items-redo.png"), full_page=True)
