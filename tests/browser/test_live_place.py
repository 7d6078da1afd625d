"""A pushed update keeps the reader's place: an opened fold, a text selection, the scroll position.

The page is served by a real daphne process with polling off, so only a push can change it;
the changes are made in this process through the same transitions a worker uses, and the
server hears of them from the event log (embedded) or Redis, as it would of a worker's.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import StepRun
from orchestration.tasks import execute_step
from tests.support import WebServer, load_workflow

pytestmark = [pytest.mark.browser]

LONG = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: long
  name: Long outputs
  owner: ops
  steps:
    - {key: first, agent: echo, input: {text: "{{ 'a long line of research notes ' * 40 }}"}}
""" + "".join(
    f"    - {{key: step{n}, agent: echo, after: [{'first' if n == 1 else f'step{n - 1}'}], input: {{n: {n}}}}}\n"
    for n in range(1, 13)
)


def test_an_update_keeps_an_opened_fold_a_selection_and_the_scroll_position(
    transactional_db: Any, ops: Any, chromium: Any
) -> None:
    from playwright.sync_api import expect

    load_workflow(LONG)
    run = transitions.start_run(workflow="long", started_by=ops)
    execute_step(StepRun.objects.get(run=run, step_key="first").pk)

    with WebServer(env={"BATON_LIVE_POLL_SECONDS": "0"}) as server:
        page = chromium.new_page(viewport={"width": 1200, "height": 700})
        page.set_default_timeout(15_000)
        server.sign_in(page, ops)
        page.goto(f"{server.url}/runs/{run.pk}/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

        fold = page.locator("#step-first details.fold")
        fold.locator("summary").click()
        expect(fold).to_have_attribute("open", "")
        # Select the run's name in the heading, then scroll down to the timeline.
        page.evaluate(
            """() => {
                const range = document.createRange();
                range.selectNodeContents(document.querySelector('.run-summary .facts dt'));
                const selection = window.getSelection();
                selection.removeAllRanges();
                selection.addRange(range);
                window.scrollTo(0, 400);
                window.batonTestMark = 'same page';
            }"""
        )
        selected = page.evaluate("() => window.getSelection().toString()")
        assert selected

        execute_step(StepRun.objects.get(run=run, step_key="step1").pk)

        expect(page.locator(".node[data-step='step1']")).to_have_attribute("data-status", "succeeded")
        expect(fold).to_have_attribute("open", "")
        assert page.evaluate("() => window.getSelection().toString()") == selected
        assert page.evaluate("() => window.scrollY") == 400
        assert page.evaluate("() => window.batonTestMark") == "same page"
        page.close()
