"""The run page in a browser: a failed step's attempts, traceback and log lines open on a click,
on a 60-step run with a 300-item map and on a run whose real agent failed (screenshots in
var/screenshots for a person to look at)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Attempt, Run, StepRun
from orchestration.status import AttemptStatus, ErrorClass, RunStatus, StepStatus
from tests.browser.test_actions import logged_in_page
from tests.dashboard.big_runs import TRACEBACK, big_run, big_workflow
from tests.support import drive, load_workflow

pytestmark = pytest.mark.browser

HERE = "tests.browser.test_run_details"


def log_lines(started: datetime) -> list[dict[str, str]]:
    """Two lines as the worker stores them, 1.25 s and 75 s after the attempt started."""
    return [
        {"at": (started + timedelta(seconds=1.25)).isoformat(), "level": "INFO", "source": "shop.orders", "text": "asking upstream for order A-7"},
        {"at": (started + timedelta(seconds=75)).isoformat(), "level": "PRINT", "source": "stdout", "text": "<script>alert('x')</script> still waiting"},
    ]

CHECKOUT = f"""
agents:
  - {{name: charge, kind: python, config: {{callable: "{HERE}:charge_card"}}, retry: {{attempts: 1}}}}
workflow:
  key: checkout
  name: Checkout
  owner: ops
  steps:
    - {{key: charge, agent: charge, input: {{order: A-7}}}}
"""


def charge_card(payload: Any, context: Any) -> Any:
    logging.getLogger("shop.payments").info("charging order %s", payload["order"])
    print("<b>card declined</b> by the processor")
    raise ConnectionError("the card processor hung up")


def test_a_failed_steps_traceback_opens_from_the_run_page(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    run = big_run(big_workflow(59), steps=59, attempts=3, items=300, events=450)
    last = StepRun.objects.get(run=run, step_key="s59")
    StepRun.objects.filter(pk=last.pk).update(status=StepStatus.FAILED, error="TimeoutError: upstream took too long", error_class=ErrorClass.TRANSIENT, output=None)
    third = Attempt.objects.get(step_run=last, number=3)
    Attempt.objects.filter(pk=third.pk).update(status=AttemptStatus.FAILED, error="TimeoutError: upstream took too long", traceback=TRACEBACK, log=log_lines(third.started_at))
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
    log = detail.locator(".attempt-log").last
    expect(log.locator("summary")).to_have_text("2 log lines")
    expect(log.locator(".log-lines")).not_to_be_visible()
    log.locator("summary").click()
    expect(log.locator(".log-line").nth(0).locator("time")).to_have_text("+1.25 s")
    expect(log.locator(".log-line").nth(1).locator("time")).to_have_text("+1 min 15 s")
    expect(log.locator(".log-line").nth(1)).to_contain_text("<script>alert('x')</script> still waiting")
    traceback.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "run-page-traceback.png"))

    page.goto(f"{web_server.url}/runs/{run.pk}/steps/fan/items/?status=failed")
    expect(page.locator(".items-progress")).to_contain_text("240 / 300 items")
    page.screenshot(path=str(screenshots / "run-items-failed.png"), full_page=True)


def test_a_failed_steps_traceback_and_the_log_lines_its_agent_wrote_open_from_the_run_page(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, screenshots: Path, settings: Any
) -> None:
    from playwright.sync_api import expect

    settings.BATON_PYTHON_AGENTS = [*settings.BATON_PYTHON_AGENTS, HERE]
    load_workflow(CHECKOUT)
    run = drive(transitions.start_run(workflow="checkout", started_by=ops))
    assert run.status == RunStatus.FAILED
    step = StepRun.objects.get(run=run, step_key="charge")

    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/runs/{run.pk}/")
    detail = page.locator(f"#step-detail-{step.pk}")
    detail.locator("summary").first.click()
    detail.locator(".traceback summary").click()
    expect(detail.locator(".traceback pre")).to_contain_text("ConnectionError: the card processor hung up")
    log = detail.locator(".attempt-log")
    expect(log.locator("summary")).to_have_text("2 log lines")
    log.locator("summary").click()
    lines = log.locator(".log-line")
    expect(lines.nth(0)).to_contain_text("info")
    expect(lines.nth(0)).to_contain_text("shop.payments")
    expect(lines.nth(0)).to_contain_text("charging order A-7")
    # What the agent printed is text on the page, its markup shown, not obeyed.
    expect(lines.nth(1)).to_contain_text("<b>card declined</b> by the processor")
    expect(log.locator("b")).to_have_count(0)
    log.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "run-page-log-lines.png"))


def test_an_opened_step_follows_the_run_and_keeps_the_folds_the_reader_opened(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, settings: Any
) -> None:
    from playwright.sync_api import expect

    settings.BATON_PYTHON_AGENTS = [*settings.BATON_PYTHON_AGENTS, HERE]
    load_workflow(CHECKOUT)
    run = drive(transitions.start_run(workflow="checkout", started_by=ops))
    step = StepRun.objects.get(run=run, step_key="charge")

    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/runs/{run.pk}/")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    detail = page.locator(f"#step-detail-{step.pk}")
    expect(detail.locator(".attempt")).to_have_count(0)  # nothing is read before the step is opened
    detail.locator("summary").first.click()
    expect(detail.locator(".attempt")).to_have_count(1)
    detail.locator(".traceback summary").click()
    expect(detail.locator(".traceback pre")).to_be_visible()

    # Someone retries the run elsewhere; its step fails again with a second attempt.
    drive(transitions.retry_run(run_id=run.pk, actor=ops, reason="card processor back"))
    expect(detail.locator(".attempt")).to_have_count(2)
    expect(detail.locator(".traceback pre").first).to_be_visible()  # the fold opened before stays open
    expect(detail.locator("summary").first).to_contain_text("2 attempts")
