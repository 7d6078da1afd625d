"""A firing alert shows as a banner on every page; acknowledging it from the banner, on any
page, records who did and takes it off the banner without leaving the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.alerts import transitions as alerts
from orchestration.alerts.models import Alert, AlertRule, AlertStatus, RuleKind
from orchestration.status import RunStatus
from tests.support import drive, load_workflow

pytestmark = [pytest.mark.browser]

REFUND = """
agents:
  - {name: picky, kind: python, config: {callable: "tests.approvals.conftest:picky"}, retry: {attempts: 1}}
workflow:
  key: refund
  name: Refund
  owner: ops
  steps:
    - {key: check, agent: picky, input: {ok: false}}
"""


def test_a_firing_alert_banner_is_acknowledged_from_the_banner_on_any_page(
    web_server: Any, transactional_db: Any, ops: Any, chromium: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    load_workflow(REFUND)
    AlertRule.objects.create(name="Failed runs", kind=RuleKind.RUN_FAILED, severity="critical")
    run = drive(transitions.start_run(workflow="refund"))
    assert run.status == RunStatus.FAILED
    alerts.evaluate()
    alert = Alert.objects.get()

    page = chromium.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{web_server.url}/login/?next=/workflows/")
    page.get_by_label("Username").fill("ops")
    page.get_by_label("Password").fill("ops-pass-1")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{web_server.url}/workflows/")

    banner = page.get_by_role("region", name="Firing alerts")
    expect(banner).to_contain_text(f"Run {run.pk} of Refund failed")
    expect(banner).to_contain_text("Critical")
    page.screenshot(path=str(screenshots / "alert-banner.png"))
    banner.get_by_role("button", name=f"Acknowledge: Run {run.pk} of Refund failed").click()
    expect(banner).to_contain_text("Alert acknowledged.")
    expect(banner).not_to_contain_text(f"Run {run.pk} of Refund failed")
    assert page.url == f"{web_server.url}/workflows/", "the page stays where it was"
    alert.refresh_from_db()
    assert (alert.status, alert.acknowledged_by) == (AlertStatus.ACKNOWLEDGED, ops)

    page.get_by_role("link", name="Alerts", exact=True).click()
    page.wait_for_url(f"{web_server.url}/alerts/")
    expect(page.locator(f"#alert-{alert.pk}")).to_contain_text("acknowledged by ops")
    expect(page.get_by_role("region", name="Firing alerts")).to_have_count(0)
    page.close()
