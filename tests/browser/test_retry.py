"""An operations lead retries a failed run from its page and watches it succeed on a real worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Run, StepRun
from orchestration.status import RunStatus
from tests.support import WebServer, WorkerCluster, drive, load_workflow

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

WORKFLOW = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: fails-first, kind: python, config: {callable: "tests.agents.basic:fails_first"}, retry: {attempts: 1}}
workflow:
  key: orders
  name: Orders
  owner: ops
  steps:
    - {key: read, agent: echo, input: {order: A-1}}
    - {key: charge, agent: fails-first, after: [read], input: '{{ steps.read.output }}'}
    - {key: ship, agent: echo, after: [charge], input: '{{ steps.charge.output }}'}
"""


def test_a_failed_run_is_retried_from_its_page_and_succeeds(
    transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(WORKFLOW)
    run = drive(transitions.start_run(workflow="orders", started_by=ops))
    assert run.status == RunStatus.FAILED
    with WebServer() as server, WorkerCluster(workers=1) as cluster:
        page = chromium.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(15_000)
        page.goto(f"{server.url}/login/")
        page.get_by_label("Username").fill("ops")
        page.get_by_label("Password").fill("ops-pass-1")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{server.url}/")
        page.goto(f"{server.url}/runs/{run.pk}/")
        status = page.locator(".run-summary .badge")
        expect(status).to_have_text("failed")
        page.get_by_text("Retry from the failure").click()
        page.screenshot(path=str(screenshots / "run-failed-actions.png"), full_page=True)
        page.get_by_label("Reason (optional)").first.fill("the card processor is back")
        page.get_by_role("button", name="Retry run").click()
        expect(page.locator("#run-live .notice")).to_have_text(f"Run {run.pk} retried from its failure.")
        expect(status).to_have_text("succeeded", timeout=30_000)
        expect(page.get_by_role("button", name="Retry run")).to_have_count(0)
        page.screenshot(path=str(screenshots / "run-retried.png"), full_page=True)
        page.close()
        log = cluster.log()
    run = Run.objects.get(pk=run.pk)
    assert run.status == RunStatus.SUCCEEDED, log
    attempts = dict(StepRun.objects.filter(run=run).values_list("step_key", "attempts"))
    assert attempts == {"read": 1, "charge": 2, "ship": 1}
