"""A workflow's page in a browser (diff v1 and v2, roll back to v1) and the runs list filtered to
the runs that wait on someone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Workflow
from tests.browser.test_actions import logged_in_page
from tests.support import drive, load_workflow

pytestmark = pytest.mark.browser

V1 = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: upper, kind: python, config: {callable: "tests.agents.basic:upper"}}
workflow:
  key: notes
  name: Release notes
  description: DESCRIPTION
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: draft, agent: echo, input: {text: "{{ input.topic }}"}}
    - key: review
      after: [draft]
      approval: {title: "Publish {{ input.topic }}?", approvers: {users: [approver]}}
    - {key: publish, agent: AGENT, after: [review]}
"""


def test_an_owner_diffs_v1_and_v2_then_rolls_back_to_v1(
    web_server: Any, transactional_db: Any, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(V1.replace("DESCRIPTION", "Drafts the notes.").replace("AGENT", "echo"))
    load_workflow(V1.replace("DESCRIPTION", "Drafts and publishes the notes.").replace("AGENT", "upper"))
    for topic in ("2.1", "2.2"):
        drive(transitions.start_run(workflow="notes", input={"topic": topic}, started_by=ops))
    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/workflows/")
    page.get_by_role("link", name="Release notes").click()
    expect(page.locator("h1")).to_have_text("Release notes")
    expect(page.locator('.node[data-step="review"]')).to_be_visible()

    page.locator('select[name="v_a"]').select_option("1")
    page.locator('select[name="v_b"]').select_option("2")
    expect(page.locator("[data-diff-summary]")).to_contain_text("v1 → v2: 2 lines differ")
    changed = page.locator('tr[data-kind="changed"]')
    expect(changed).to_have_count(2)
    expect(changed.nth(1)).to_contain_text("agent: echo")
    expect(changed.nth(1)).to_contain_text("agent: upper")
    page.screenshot(path=str(screenshots / "workflow-page.png"), full_page=True)

    page.get_by_role("button", name="Roll back to v1").click()
    expect(page.locator(".notice--success")).to_have_text("Published v3: rolled back to v1 by ops.")
    expect(page.locator('tr[data-version="3"]')).to_contain_text("rolled back to v1 by ops")
    page.close()
    versions = {v.number: v.spec for v in Workflow.objects.get(key="notes").versions.all()}
    assert versions[3] == versions[1] != versions[2]


def test_the_runs_list_filtered_to_waiting_shows_only_the_runs_waiting_on_someone(
    web_server: Any, transactional_db: Any, ops: Any, approver: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(V1.replace("DESCRIPTION", "x").replace("AGENT", "echo"))
    waiting = drive(transitions.start_run(workflow="notes", input={"topic": "waits"}, started_by=ops))
    queued = transitions.start_run(workflow="notes", input={"topic": "queued"}, started_by=ops)
    page = logged_in_page(chromium, web_server)
    page.goto(f"{web_server.url}/runs/")
    expect(page.locator(f'tr[data-run="{queued.pk}"]')).to_be_visible()
    page.locator('select[name="status"]').select_option("waiting")
    expect(page.locator(f'tr[data-run="{queued.pk}"]')).to_have_count(0)
    row = page.locator(f'tr[data-run="{waiting.pk}"]')
    expect(row).to_contain_text("waiting: approval by")
    expect(page).to_have_url(re.compile(r"/runs/\?status=waiting"))
    page.screenshot(path=str(screenshots / "runs-waiting.png"), full_page=True)
    page.close()
