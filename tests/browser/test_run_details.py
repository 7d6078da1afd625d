"""The run page in a browser: a failed step's attempts and traceback open on a click, on a
60-step run with a 300-item map (screenshots in var/screenshots for a person to look at)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestration.models import Attempt, Run, StepRun
from orchestration.status import AttemptStatus, ErrorClass, RunStatus, StepStatus
from tests.browser.test_actions import logged_in_page
from tests.dashboard.big_runs import TRACEBACK, big_run, big_workflow

pytestmark = pytest.mark.browser


def test_a_failed_steps_traceback_opens_from_the_run_page(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    run = big_run(big_workflow(59), steps=59, attempts=3, items=300, events=450)
    last = StepRun.objects.get(run=run, step_key="s59")
    StepRun.objects.filter(pk=last.pk).update(status=StepStatus.FAILED, error="TimeoutError: upstream took too long", error_class=ErrorClass.TRANSIENT, output=None)
    Attempt.objects.filter(step_run=last, number=3).update(status=AttemptStatus.FAILED, error="TimeoutError: upstream took too long", traceback=TRACEBACK)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FAILED, error="step s59 failed: TimeoutError: upstream took too long")

    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/runs/{run.pk}/")
    page.screenshot(path=str(screenshots / "run-page-60-steps.png"), full_page=False)
    detail = page.locator(f"#step-detail-{last.pk}")
    detail.locator("summary").first.click()
    traceback = detail.locator(".traceback").last
    expect(traceback.locator("pre")).not_to_be_visible()
    traceback.locator("summary").click()
    expect(traceback.locator("pre")).to_be_visible()
    expect(traceback.locator("pre")).to_contain_text('raise TimeoutError("upstream took too long")')
    traceback.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "run-page-traceback.png"))

    page.goto(f"{web_server.url}/runs/{run.pk}/steps/fan/items/?status=failed")
    expect(page.locator(".items-progress")).to_contain_text("240 / 300 items")
    page.screenshot(path=str(screenshots / "run-items-failed.png"), full_page=True)
