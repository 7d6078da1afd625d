"""The overview in a real browser: the demo's history fills it (and it says so), it follows a
new run by itself, and it fits a phone. Takes docs/screenshots/overview.png for the README."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from orchestration import transitions
from orchestration.alerts import reads as alerts_reads
from orchestration.alerts import sweep
from tests.support import ROOT, WebServer

pytestmark = [pytest.mark.browser]


@pytest.fixture
def demo(transactional_db: Any) -> None:
    call_command("load_demo", quiet=True, history=True)
    # One pass of the alert rules, as the worker's ticker makes: the demo's rules find what the
    # history holds (its rollout drifts, its latest failures).
    sweep.forget_last_evaluation()
    sweep.sweep(timezone.now())


def test_a_first_visit_shows_the_demo_history_and_the_page_follows_a_new_run(demo: None, chromium: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    with WebServer() as server:
        page = chromium.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(15_000)
        page.goto(f"{server.url}/login/")
        page.get_by_label("Username").fill("ops")
        page.get_by_label("Password").fill("ops-demo")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{server.url}/")
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

        # The generated month says what it is, and the figures are not empty.
        expect(page.locator("[data-demo]")).to_contain_text("Demo data")
        rate = page.locator('[data-tile="success_rate"] .tile__value')
        expect(rate).to_have_text(re.compile(r"^\d+(\.\d)?%$"))
        finished = page.locator('[data-tile="success_rate"] .tile__detail').inner_text()
        assert int(finished.split(" of ")[1].split()[0]) > 20, finished
        expect(page.locator('[data-tile="duration"] .tile__value')).to_contain_text("p50")
        firing = alerts_reads.firing_count(None)
        assert firing > 0, "the demo's history sets off some of its alert rules"
        expect(page.locator('[data-tile="alerts"] .tile__value')).to_have_text(str(firing))
        banner = page.get_by_role("region", name="Firing alerts")
        expect(banner.get_by_role("button", name=re.compile("^Acknowledge: ")).first).to_be_visible()
        bars = page.locator('[data-chart="hourly"] g.overview-bar')
        expect(bars).to_have_count(24)
        assert page.locator('[data-chart="hourly"] rect.overview-bar--succeeded').count() > 0
        assert page.locator('[data-chart="durations"] circle.trend__point').count() >= 6
        expect(page.locator(".overview__latest tbody tr")).to_have_count(10)
        # The numbers behind a chart, as text.
        page.locator('[data-chart="durations"] summary').click()
        expect(page.locator('[data-chart="durations"] table tbody tr')).to_have_count(7)
        page.locator('[data-chart="durations"] summary').click()

        page.evaluate("window.scrollTo(0, 0)")  # the sticky header stays on top in a full-page shot
        page.screenshot(path=str(screenshots / "overview.png"), full_page=True)
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshots / "overview.png", docs / "overview.png")

        # Acknowledged from the banner on the overview: it is recorded, and it still counts as
        # firing (its condition holds) until it resolves by itself.
        first = banner.get_by_role("button", name=re.compile("^Acknowledge: ")).first
        title = (first.get_attribute("aria-label") or first.inner_text()).removeprefix("Acknowledge: ")
        first.click()
        expect(banner).to_contain_text("Alert acknowledged.")
        acknowledged = [a for a in alerts_reads.firing(None) if a.acknowledged_by is not None]
        assert [(a.title, a.acknowledged_by.get_username()) for a in acknowledged] == [(title, "ops")]
        expect(page.locator('[data-tile="alerts"] .tile__value')).to_have_text(str(firing))

        # A run started elsewhere shows up by itself (the live push), with no reload.
        page.evaluate("window.batonTestMark = 'same page'")
        running = page.locator('[data-tile="running"] .tile__value')
        before = int(running.inner_text())
        run = transitions.start_run(workflow="daily-operations-report", input={})
        expect(running).to_have_text(str(before + 1))
        expect(page.locator(f'.overview__latest tr[data-run="{run.pk}"]')).to_be_visible()
        assert page.evaluate("window.batonTestMark") == "same page"

        phone = chromium.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.context.add_cookies(page.context.cookies())
        phone.goto(f"{server.url}/")
        expect(phone.get_by_role("heading", name="Overview")).to_be_visible()
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the overview is {width} px wide on a 390 px phone"
        phone.screenshot(path=str(screenshots / "overview-phone.png"), full_page=True)
        phone.close()
        page.close()
