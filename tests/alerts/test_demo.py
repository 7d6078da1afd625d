"""The demo has one alert rule of each kind, telling ops; loading it again keeps them."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from orchestration.alerts.models import AlertRule, RuleKind

pytestmark = pytest.mark.django_db


def test_the_demo_loads_one_rule_of_each_kind_and_keeps_them_when_loaded_again() -> None:
    out = io.StringIO()
    call_command("load_demo", stdout=out)
    assert "created alert rules: A run failed" in out.getvalue()
    assert sorted(AlertRule.objects.values_list("kind", flat=True)) == sorted(RuleKind.values)
    assert all(rule.users.filter(username="ops").exists() for rule in AlertRule.objects.all())
    AlertRule.objects.filter(name="A run failed").update(severity="info")
    again = io.StringIO()
    call_command("load_demo", stdout=again)
    assert "kept alert rules: A run failed" in again.getvalue()
    assert AlertRule.objects.get(name="A run failed").severity == "info"
    assert AlertRule.objects.count() == len(RuleKind.values)


def test_the_alerts_doc_names_every_kind_of_rule_and_every_setting() -> None:
    from tests.support import ROOT

    doc = (ROOT / "docs" / "alerts.md").read_text()
    missing = [kind for kind in RuleKind.values if f"`{kind}`" not in doc]
    assert not missing, f"docs/alerts.md does not describe {missing}"
    for setting in ("BATON_ALERT_SECONDS", "BATON_ALERT_DELIVERY_ATTEMPTS", "BATON_ALERT_WEBHOOK_TIMEOUT_SECONDS"):
        assert f"`{setting}`" in doc, setting

