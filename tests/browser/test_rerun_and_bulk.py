"""An operations lead reruns a finished run with edited input and watches the new run succeed on a
real worker, and cancels two of the runs a filtered runs list shows, confirming how many first."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.browser.test_actions import logged_in_page
from tests.support import WebServer, WorkerCluster, drive, load_workflow

pytestmark = pytest.mark.browser

WORKFLOW = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: orders
  name: Orders
  owner: ops
  inputs: {order: {type: string, required: true}}
  steps:
    - {key: read, agent: echo, input: {order: "{{ input.order }}"}}
"""

OTHER = WORKFLOW.replace("key: orders", "key: refunds").replace("name: Orders", "name: Refunds")


@pytest.mark.cluster
def test_a_run_is_rerun_with_edited_input_and_the_new_run_succeeds(
    transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(WORKFLOW)
    first = drive(transitions.start_run(workflow="orders", input={"order": "A-1"}, started_by=ops))
    assert first.status == RunStatus.SUCCEEDED
    with WebServer() as server, WorkerCluster(workers=1) as cluster:
        page = logged_in_page(chromium, server)
        page.goto(f"{server.url}/runs/{first.pk}/")
        page.get_by_text("Rerun as a new run").click()
        page.get_by_label("Input (JSON; edit it or leave it as it was)").fill('{"order": "A-2"}')
        page.get_by_role("button", name="Rerun", exact=True).click()
        page.wait_for_url(re.compile(rf"/runs/(?!{first.pk}/)\d+/$"))
        again = Run.objects.get(rerun_of=first)
        assert page.url.endswith(f"/runs/{again.pk}/")
        expect(page.get_by_text(f"Rerun of run #{first.pk}")).to_be_visible()
        expect(page.locator(".run-summary .badge")).to_have_text("succeeded", timeout=30_000)
        page.screenshot(path=str(screenshots / "run-rerun.png"), full_page=True)
        page.goto(f"{server.url}/runs/{first.pk}/")
        expect(page.get_by_role("link", name=f"run #{again.pk}")).to_be_visible()
        page.close()
        log = cluster.log()
    again.refresh_from_db()
    assert again.status == RunStatus.SUCCEEDED, log
    assert again.input == {"order": "A-2"}
    assert again.steps.get(step_key="read").output == {"order": "A-2"}
    first.refresh_from_db()
    assert first.input == {"order": "A-1"}


def test_two_ticked_runs_of_a_filtered_list_are_cancelled_after_a_confirmation_that_counts_them(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(WORKFLOW)
    load_workflow(OTHER)
    orders = [transitions.start_run(workflow="orders", input={"order": f"A-{n}"}, started_by=ops) for n in range(3)]
    refund = transitions.start_run(workflow="refunds", input={"order": "R-1"}, started_by=ops)
    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/runs/?workflow=orders")
    expect(page.locator(f'tr[data-run="{refund.pk}"]')).to_have_count(0)
    for run in orders[:2]:
        page.get_by_label(f"Select run #{run.pk}").check()
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Cancel 2 running runs?")
    page.get_by_label("Reason (optional)").fill("duplicate orders")
    page.get_by_role("button", name="Cancel 2 running runs").click()
    expect(page.get_by_text("2 runs cancelled.")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/runs/\?workflow=orders"))
    page.screenshot(path=str(screenshots / "runs-bulk-cancelled.png"), full_page=True)
    page.close()
    statuses = {run.pk: Run.objects.get(pk=run.pk).status for run in [*orders, refund]}
    assert statuses == {
        orders[0].pk: RunStatus.CANCELLED,
        orders[1].pk: RunStatus.CANCELLED,
        orders[2].pk: RunStatus.RUNNING,
        refund.pk: RunStatus.RUNNING,
    }
