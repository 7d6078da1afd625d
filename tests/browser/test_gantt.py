"""The run page's Gantt timeline in a real browser: its segments on a played run (and the
README's screenshot of it), at phone width, and following a run on a real worker live."""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from approvals import transitions as approvals
from approvals.models import Item
from orchestration import transitions
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.dashboard.gantt_demo import launch_run
from tests.support import ROOT, WebServer, WorkerCluster, load_workflow, wait_for

pytestmark = pytest.mark.browser

# What the page's live push is given to arrive (the push is quick; the machine may be busy).
PUSHED = 20_000


def signed_in(chromium: Any, server: WebServer, user: Any, *, width: int = 1280, height: int = 900) -> Any:
    page = chromium.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(15_000)
    server.sign_in(page, user)
    return page


def row(page: Any, key: str) -> Any:
    return page.locator(f'.gantt__row[data-step="{key}"]')


def test_the_timeline_shows_the_retry_the_approval_wait_and_the_throttled_step_of_a_run(
    web_server: WebServer, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    run = launch_run(ops, approver, start=timezone.now() - timedelta(minutes=7))
    assert run.status == RunStatus.SUCCEEDED, run.error
    page = signed_in(chromium, web_server, ops)
    page.goto(f"{web_server.url}/runs/{run.pk}/")
    gantt = page.locator("#gantt")
    expect(gantt.get_by_role("heading", name="Steps over time")).to_be_visible()
    expect(page.locator(".gantt__row")).to_have_count(6)

    draft = row(page, "draft")
    expect(draft.locator(".seg--attempt.seg--failed")).to_have_count(1)
    expect(draft.locator(".seg--attempt.seg--failed .seg__mark")).to_have_text("✕")
    expect(draft.locator(".seg--backoff")).to_have_count(1)
    expect(draft.locator(".seg--attempt.seg--succeeded")).to_have_count(1)
    expect(draft.locator(".seg--attempt.seg--failed title")).to_have_text(
        "draft: attempt 1 of agent writer on worker w1, 6.4 s, failed: TimeoutError: the model took longer than 6s"
    )
    expect(row(page, "legal_review").locator(".seg--waiting")).to_have_count(1)
    expect(row(page, "legal_review").locator(".seg--waiting title")).to_contain_text("1 min 35 s")
    expect(row(page, "translate_de").locator(".seg--throttled title")).to_contain_text(
        "waiting for a slot, 9 s"
    )
    expect(row(page, "translate_fr").locator(".seg--throttled")).to_have_count(0)
    expect(row(page, "sections").locator(".seg--span title")).to_contain_text("3 items: 3 succeeded")
    expect(page.locator(".gantt__end--succeeded")).to_have_count(6)
    # The axis reads in minutes, and the numbers are there as text for whoever wants them.
    expect(page.locator(".gantt__tick-label").filter(has_text=re.compile(r"^2 min$"))).to_have_count(1)
    page.get_by_text("The timeline as a table").click()
    expect(page.locator('.gantt-table tr[data-kind="backoff"]')).to_contain_text("20 s")

    # The waiting segment is hatched and the throttled one dotted: shapes, not only colours.
    assert page.locator(".seg--waiting .seg__pattern").get_attribute("fill") == "url(#gantt-hatch)"
    assert page.locator(".seg--throttled .seg__pattern").get_attribute("fill") == "url(#gantt-dots)"
    page.get_by_text("The timeline as a table").click()
    page.screenshot(path=str(screenshots / "run-gantt.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 1100})
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshots / "run.png"))
    docs = ROOT / "docs" / "screenshots"
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshots / "run.png", docs / "run.png")

    # At phone width the timeline scrolls inside its box; the page itself does not.
    phone = signed_in(chromium, web_server, ops, width=390, height=844)
    phone.goto(f"{web_server.url}/runs/{run.pk}/")
    box = phone.locator(".gantt-scroll")
    expect(box).to_be_visible()
    assert box.evaluate("el => el.scrollWidth > el.clientWidth"), (
        "the timeline fits a phone without scrolling?"
    )
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
    # The step names stay in view while the bars scroll under them.
    box.evaluate("el => { el.scrollLeft = 400; }")
    label = row(phone, "draft").locator(".gantt__label")
    assert label.evaluate("el => el.getBoundingClientRect().left") >= box.evaluate(
        "el => el.getBoundingClientRect().left"
    )
    phone.locator("#gantt").screenshot(path=str(screenshots / "run-gantt-phone.png"))


WORKFLOW = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: flaky, kind: python, config: {callable: "tests.agents.basic:flaky"}, retry: {attempts: 3, backoff: 1s, jitter: false}}
workflow:
  key: notice
  name: Customer notice
  owner: ops
  steps:
    - {key: draft, agent: flaky, input: {succeed_on: 2}}
    - key: sign_off
      after: [draft]
      approval: {title: "Send the notice?", approvers: {users: [approver]}, deadline: 1h}
    - {key: send, agent: echo, after: [sign_off], input: {to: everyone}}
"""


@pytest.mark.cluster
def test_on_a_real_worker_the_timeline_shows_the_retry_then_follows_the_approval_live(
    web_server: WebServer, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(WORKFLOW)
    with WorkerCluster(workers=1) as cluster:
        run = transitions.start_run(workflow="notice", started_by=ops)
        item = wait_for(
            lambda: Item.objects.filter(run=run).first(), timeout=60, message=f"the approval\n{cluster.log()}"
        )
        page = signed_in(chromium, web_server, ops)
        page.goto(f"{web_server.url}/runs/{run.pk}/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=PUSHED)
        draft = row(page, "draft")
        expect(draft.locator(".seg--attempt.seg--failed")).to_have_count(1)
        expect(draft.locator(".seg--attempt.seg--failed title")).to_contain_text(
            "failed: ConnectionError: temporary outage on attempt 1"
        )
        expect(draft.locator(".seg--backoff")).to_have_count(1)
        expect(draft.locator(".seg--attempt.seg--succeeded")).to_have_count(1)
        waiting = row(page, "sign_off").locator(".seg--waiting")
        expect(waiting).to_have_class("seg seg--waiting seg--open")
        expect(row(page, "send")).to_have_attribute("data-status", "notstarted")
        expect(page.locator(".gantt__now")).not_to_have_count(0)

        approvals.vote(item_id=item.pk, user=approver, decision="approve")

        # Pushed, not reloaded: the wait closes with a tick and the last step runs on the worker.
        expect(row(page, "send")).to_have_attribute("data-status", "succeeded", timeout=PUSHED)
        expect(row(page, "sign_off").locator(".gantt__end--succeeded")).to_have_count(1)
        expect(waiting).to_have_class("seg seg--waiting")
        expect(row(page, "send").locator(".seg--attempt.seg--succeeded")).to_have_count(1)
        expect(page.locator(".gantt__now")).to_have_count(0)
        page.screenshot(path=str(screenshots / "run-gantt-live.png"), full_page=True)
    assert Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
