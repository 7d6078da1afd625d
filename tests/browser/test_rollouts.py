"""The demo's rollout in a real browser: charts and the gate table; a promotion refused while
a criterion fails, then made anyway with a written reason; one with every criterion passing;
the weekly review printed on A4."""

from __future__ import annotations

import random
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from orchestration.management.commands.load_demo import HISTORY_WORKFLOW
from orchestration.models import Workflow
from orchestration.rollouts import history
from orchestration.rollouts import transitions as rollouts
from orchestration.rollouts.models import Metric, Rollout, Stage
from orchestration.status import RunStatus
from tests.support import WebServer

pytestmark = [pytest.mark.browser]

PASSING = "content-pipeline"


def quick(day: date, index: int, rng: random.Random) -> history.RunPlan:
    return history.RunPlan(status=RunStatus.SUCCEEDED, start=60.0 * index, duration=45.0)


def sign_in(page: Any, server: WebServer) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("ops-demo")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


@pytest.fixture
def demo(transactional_db: Any) -> None:
    call_command("load_demo", quiet=True, history=True)
    # A second rollout whose numbers pass: quick successful runs, and the criteria that do not
    # apply to a workflow without approvals turned off by its owner.
    workflow = Workflow.objects.get(key=PASSING)
    rollout = rollouts.start_rollout(workflow=workflow, owner=workflow.owner, actor=workflow.owner)
    history.make_history(workflow=workflow, days=8, runs_per_day=5, outcomes=quick)
    for criterion in rollout.criteria.filter(metric=Metric.APPROVAL_WAIT):
        rollouts.change_criterion(criterion=criterion, actor=workflow.owner, enabled=False)


def test_the_demo_rollout_shows_charts_and_the_gate_and_promotes_only_by_override_while_failing(
    demo: None, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    with WebServer() as server:
        page = chromium.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(15_000)
        sign_in(page, server)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Rollouts").click()
        page.get_by_role("link", name="Article release with legal review").click()

        expect(page.locator(".gate-table tbody tr")).to_have_count(8)
        charts = page.locator("figure.trend svg")
        expect(charts.first).to_be_visible()
        assert charts.count() == 8
        assert page.locator('figure.trend[data-metric="success_rate"] circle.trend__point').count() >= 25
        expect(page.locator('figure.trend[data-metric="success_rate"] .trend__target')).to_have_count(1)
        expect(page.get_by_text("Demo data")).to_be_visible()
        page.screenshot(path=str(screenshots / "rollout.png"), full_page=True)

        # Something fails (the demo's last week is worse): the button is off and says why.
        failing = page.locator('.gate-table tr[data-passed="false"]')
        assert failing.count() >= 1
        expect(page.get_by_role("button", name="Promote to Standardize")).to_be_disabled()
        expect(page.locator(".gate-actions")).to_contain_text("waits")

        page.get_by_text("Promote anyway", exact=True).click()
        page.get_by_label("Why promote while criteria fail?").fill("The approvals are slow only because of the holiday")
        page.get_by_role("button", name="Promote anyway to Standardize").click()
        expect(page.locator(".page-head .stage")).to_contain_text("Standardize")
        expect(page.locator(".notice--success")).to_contain_text("by override")
        history_card = page.locator(".rollout-history")
        expect(history_card).to_contain_text("Promoted by override")
        expect(history_card).to_contain_text("only because of the holiday")
    assert Rollout.objects.get(workflow__key=HISTORY_WORKFLOW).stage == Stage.STANDARDIZE


def test_a_rollout_whose_criteria_pass_is_promoted_with_one_click(demo: None, chromium: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    with WebServer() as server:
        page = chromium.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(15_000)
        sign_in(page, server)
        page.goto(f"{server.url}/rollouts/{PASSING}/")
        expect(page.locator(".gate .card__title")).to_contain_text("passes")
        page.get_by_role("button", name="Promote to Standardize").click()
        expect(page.locator(".page-head .stage")).to_contain_text("Standardize")
        expect(page.locator(".rollout-history")).to_contain_text("Promoted")
    assert Rollout.objects.get(workflow__key=PASSING).stage == Stage.STANDARDIZE


def pdf_pages_and_title(data: bytes) -> tuple[int, str]:
    """How many pages a PDF has and its document title (Chromium writes it in UTF-16)."""
    pages = len(re.findall(rb"/Type\s*/Page[^s]", data))
    match = re.search(rb"/Title\s*(<[0-9A-Fa-f]+>|\((?:[^\\)]|\\.)*\))", data)
    raw = match.group(1) if match else b"()"
    if raw.startswith(b"<"):
        title = bytes.fromhex(raw[1:-1].decode()).decode("utf-16")
    else:
        title = raw[1:-1].decode("latin-1")
    return pages, title


def test_the_weekly_review_prints_on_a_few_a4_pages_without_navigation(demo: None, chromium: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    with WebServer() as server:
        page = chromium.new_page(viewport={"width": 1360, "height": 900})
        sign_in(page, server)
        page.goto(f"{server.url}/rollouts/{HISTORY_WORKFLOW}/review/")
        expect(page.locator(".failures-table tbody tr").first).to_be_visible()
        page.emulate_media(media="print")
        expect(page.locator(".topbar")).to_be_hidden()
        expect(page.locator("nav.pager")).to_be_hidden()
        expect(page.get_by_role("heading", name="What changed")).to_be_visible()
        page.screenshot(path=str(screenshots / "weekly-review-print.png"), full_page=True)
        data = page.pdf(format="A4")
    (screenshots / "weekly-review.pdf").write_bytes(data)
    pages, title = pdf_pages_and_title(data)
    assert 1 <= pages <= 3
    assert "Article release with legal review" in title
