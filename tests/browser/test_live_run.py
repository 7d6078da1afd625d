"""An operations lead starts a run in a real browser and watches it finish on a real worker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.support import WebServer, WorkerCluster, drive, load_workflow

pytestmark = [pytest.mark.browser, pytest.mark.cluster]

WORKFLOW = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: upper, kind: python, config: {callable: "tests.agents.basic:upper"}}
  - {name: slow-upper, kind: python, config: {callable: "tests.browser.agents:slow_upper"}}
  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}}
workflow:
  key: digest
  name: Daily digest
  description: Researches a topic, summarises each section in parallel and publishes the digest.
  owner: ops
  inputs:
    topic: {type: string, required: true, description: What the digest is about}
    sections: {type: list, default: [news, weather, sport]}
    draft: {type: boolean, default: false}
  steps:
    - {key: research, agent: echo, input: {topic: "{{ input.topic }}"}}
    - {key: summarise, agent: slow-upper, after: [research], for_each: "{{ input.sections }}", input: {text: "{{ item }}"}}
    - {key: publish, agent: echo, after: [summarise], input: {topic: "{{ steps.research.output.topic }}", parts: "{{ steps.summarise.output }}"}}
"""

FAILING = """
workflow:
  key: triage
  name: Ticket triage
  owner: ops
  description: Reads a ticket and refuses it, to show what a failed run looks like.
  steps:
    - {key: read, agent: echo}
    - {key: decide, agent: refuse, after: [read]}
"""


def test_an_operations_lead_starts_a_run_and_watches_it_succeed(
    transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(WORKFLOW)
    load_workflow(FAILING)
    # A little history, so the runs and workflows pages show what they are for.
    drive(transitions.start_run(workflow="digest", input={"topic": "tides", "sections": ["news"]}, started_by=ops))
    drive(transitions.start_run(workflow="triage", input={"ticket": 42}, started_by=ops))
    transitions.cancel_run(run_id=transitions.start_run(workflow="digest", input={"topic": "owls"}).pk, actor=ops)

    # Daphne, as `make run` serves: the page follows the run over its socket. (Django's
    # web_server has no websockets, so the page would only poll, every 5 s.)
    with WebServer() as server, WorkerCluster(workers=2) as cluster:
        page = chromium.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(15_000)

        page.goto(f"{server.url}/login/")
        page.get_by_label("Username").fill("ops")
        page.get_by_label("Password").fill("ops-pass-1")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()

        page.get_by_role("navigation", name="Main").get_by_role("link", name="Workflows").click()
        card = page.locator("#workflow-digest")
        expect(card).to_contain_text("Daily digest")
        card.get_by_label("topic").fill("the northern lights")
        card.get_by_role("button", name="Start run").click()

        page.wait_for_url(re.compile(r"/runs/\d+/$"))
        status = page.locator(".run-summary .badge")
        expect(status).to_have_text("running")
        expect(page.locator('.node[data-step="summarise"]')).to_have_attribute("data-status", "running")
        # A mark on this document: if it is still there at the end, the page changed by
        # htmx swaps alone, never by a reload.
        page.evaluate("window.batonTestMark = 'same page'")
        page.screenshot(path=str(screenshots / "run-running.png"), full_page=True)
        expect(status).to_have_text("succeeded", timeout=30_000)
        assert page.evaluate("window.batonTestMark") == "same page"
        expect(page.locator('.node[data-step="summarise"]')).to_have_attribute("data-status", "succeeded")
        expect(page.locator("#step-summarise")).to_contain_text("3 / 3 items")
        run_url = page.url
        page.screenshot(path=str(screenshots / "run.png"), full_page=True)

        page.goto(f"{server.url}/runs/")
        expect(page.locator("#runs-table tbody tr")).to_have_count(4)
        page.screenshot(path=str(screenshots / "runs.png"), full_page=True)

        page.goto(f"{server.url}/workflows/")
        page.screenshot(path=str(screenshots / "workflows.png"), full_page=True)

        phone = chromium.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.context.add_cookies(page.context.cookies())
        phone.goto(run_url)
        expect(phone.locator(".run-summary .badge")).to_have_text("succeeded")
        phone.screenshot(path=str(screenshots / "run-phone.png"), full_page=True)
        phone.goto(f"{server.url}/runs/")
        phone.screenshot(path=str(screenshots / "runs-phone.png"), full_page=True)
        page.close()
        phone.close()
        log = cluster.log()

    run = Run.objects.get(pk=int(run_url.rstrip("/").rsplit("/", 1)[1]))
    assert run.status == RunStatus.SUCCEEDED, log
    assert run.input["topic"] == "the northern lights"
    assert run.started_by == ops
    assert run.trigger == "dashboard"
