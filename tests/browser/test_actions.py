"""Browser behaviour that needs no worker: cancelling with a confirmation, an expired session."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.support import load_workflow

pytestmark = pytest.mark.browser

WORKFLOW = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: waiting
  name: Waiting flow
  owner: ops
  steps:
    - {key: first, agent: echo}
    - {key: second, agent: echo, after: [first]}
"""


def logged_in_page(chromium: Any, web_server: Any) -> Any:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{web_server.url}/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("ops-pass-1")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{web_server.url}/")
    return page


def test_cancel_asks_first_then_the_page_shows_the_run_cancelled(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    load_workflow(WORKFLOW)
    # No worker runs here: the first step stays queued, so the run waits to be cancelled.
    run = transitions.start_run(workflow="waiting")
    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/runs/{run.pk}/")
    expect(page.locator(".run-summary .badge")).to_have_text("running")

    questions: list[str] = []

    def answer(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".run-summary .badge")).to_have_text("cancelled")
    expect(page.locator("#run-live .notice")).to_have_text(f"Run {run.pk} cancelled.")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    expect(page.locator('.node[data-step="first"]')).to_have_attribute("data-status", "cancelled")
    page.close()

    assert questions == [f"Cancel run #{run.pk}? Steps in flight are stopped and their results discarded."]
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED


def test_a_poll_after_the_session_ends_takes_the_whole_page_to_the_login_form(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    page = logged_in_page(chromium, web_server)
    page.context.clear_cookies()
    # The next refresh of the overview (as a push asks for it) is answered by the login page.
    try:
        page.evaluate("() => htmx.trigger(document.getElementById('overview'), 'baton:refresh')")
    except Exception as exc:
        # A refresh the page sent on its own (a push, the fallback polling) got there first and
        # is already taking the page to the login form: what is asserted below.
        if "Execution context was destroyed" not in str(exc):
            raise
    # Where the page ends up, not the navigation event: on a loaded machine a second refresh
    # (the socket's fallback polling) can be sent to the login form too, and its navigation
    # aborts the first one, which wait_for_url reports as a failure.
    expect(page).to_have_url(f"{web_server.url}/login/?next=/", timeout=10_000)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#overview")).to_have_count(0)
    page.close()
