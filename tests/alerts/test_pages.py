"""The banner on every page, the alerts list and an alert's page, acknowledging (POST with
CSRF, htmx), who sees what, and the admin: rules by superusers with field errors, alerts read
only with their failed deliveries."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestration.alerts import reads
from orchestration.alerts.models import Alert, AlertRule, AlertStatus, RuleKind
from orchestration.models import Agent
from tests.alerts.conftest import deliver_all, evaluate, flow, history, open_alerts, rule, start
from tests.servers import Reply, ScriptedServer

pytestmark = pytest.mark.django_db

PICKY = "    - {key: check, agent: picky, input: '{{ input }}'}"


@pytest.fixture
def alert(ops: Any, clock: Any) -> Alert:
    flow(PICKY)
    rule(RuleKind.RUN_FAILED, severity="critical")
    start(input={"ok": False})
    evaluate()
    [found] = open_alerts()
    return found


def client_for(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def banner_of(html: str) -> str:
    found = re.search(r'<section id="alerts-banner".*?</section>', html, re.S)
    return found.group(0) if found else ""


def banner_for(user: Any) -> str:
    """The banner as a page fetches it once loaded."""
    response = client_for(user).get(reverse("dashboard:alerts_banner"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    return banner_of(response.content.decode())


SLOT = '<div id="alerts-banner" hx-get="/alerts/banner/" hx-trigger="load, every 60s" hx-swap="outerHTML"></div>'


def test_every_page_fetches_the_banner_which_shows_a_firing_alert_to_whoever_sees_its_workflow(
    alert: Alert, ops: Any, viewer: Any, outsider: Any
) -> None:
    for url in (reverse("dashboard:runs"), reverse("dashboard:workflows"), reverse("approvals:inbox"), reverse("dashboard:alerts")):
        assert SLOT in client_for(ops).get(url).content.decode(), url
    banner = banner_for(ops)
    assert alert.title in banner and "Acknowledge" in banner
    seen_by_viewer = banner_for(viewer)
    assert alert.title in seen_by_viewer and "Acknowledge" not in seen_by_viewer, "viewers change nothing"
    assert banner_for(outsider) == ""
    assert Client().get(reverse("dashboard:alerts_banner")).status_code == 302, "login required"
    assert Client().get(reverse("dashboard:alerts")).status_code == 302


def test_an_agents_alert_is_seen_by_superusers_and_the_rules_recipients_only(
    ops: Any, admin_user: Any, outsider: Any, viewer: Any, pager: Any, clock: Any
) -> None:
    flow(PICKY)
    picky = Agent.objects.get(name="picky")
    rule(RuleKind.FAILURE_RATE, agent=picky, failure_percent=10, min_count=1, groups=[pager])
    start(input={"ok": False})
    evaluate()
    [found] = open_alerts()
    assert reads.firing(admin_user).get() == found
    assert list(reads.firing(outsider)) == [found], "outsider is in the rule's pager group"
    assert reads.firing_count(viewer) == 0
    assert reads.firing_count() == 1, "machines (/metrics) count every alert"
    assert reads.firing_by_severity() == {"info": 0, "warning": 1, "critical": 0}


def test_acknowledging_from_the_banner_records_who_when_and_redraws_the_banner(alert: Alert, ops: Any) -> None:
    client = client_for(ops)
    response = client.post(
        reverse("dashboard:alert_acknowledge", args=[alert.pk]),
        {"part": "banner", "note": "looking into it"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "Alert acknowledged." in html and alert.title not in html
    alert.refresh_from_db()
    assert (alert.status, alert.acknowledged_by, alert.acknowledged_at, alert.acknowledge_note) == (
        AlertStatus.ACKNOWLEDGED,
        ops,
        timezone.now(),
        "looking into it",
    )
    assert history(alert) == ["fired", "acknowledged"]
    assert alert.events.get(kind="acknowledged").actor == ops
    assert banner_for(ops) == "", "acknowledged: off the banner"
    assert alert.title in client.get(reverse("dashboard:alerts")).content.decode(), "still on the list"


def test_an_acknowledged_alert_still_resolves_by_itself(alert: Alert, ops: Any) -> None:
    client_for(ops).post(reverse("dashboard:alert_acknowledge", args=[alert.pk]))
    start(input={"ok": True})
    evaluate()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    assert history(alert) == ["fired", "acknowledged", "resolved"]


def test_acknowledging_needs_a_csrf_token(alert: Alert, ops: Any) -> None:
    client = client_for(ops, csrf=True)
    assert client.post(reverse("dashboard:alert_acknowledge", args=[alert.pk])).status_code == 403
    page = client.get(reverse("dashboard:alert", args=[alert.pk])).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    response = client.post(reverse("dashboard:alert_acknowledge", args=[alert.pk]), {"csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.status == AlertStatus.ACKNOWLEDGED


def test_a_second_acknowledgement_says_who_came_first(alert: Alert, ops: Any, admin_user: Any) -> None:
    client_for(ops).post(reverse("dashboard:alert_acknowledge", args=[alert.pk]))
    response = client_for(admin_user).post(
        reverse("dashboard:alert_acknowledge", args=[alert.pk]), {"part": "list"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 409
    assert "Already acknowledged by ops at" in response.content.decode()


def test_a_viewer_may_not_acknowledge_and_an_outsider_finds_nothing(alert: Alert, viewer: Any, outsider: Any) -> None:
    url = reverse("dashboard:alert_acknowledge", args=[alert.pk])
    assert client_for(viewer).post(url).status_code == 403
    assert client_for(outsider).post(url).status_code == 404
    assert client_for(outsider).get(reverse("dashboard:alert", args=[alert.pk])).status_code == 403
    assert alert.title not in client_for(outsider).get(reverse("dashboard:alerts")).content.decode()
    alert.refresh_from_db()
    assert alert.status == AlertStatus.FIRING


def test_a_long_note_is_refused_naming_the_field(alert: Alert, ops: Any) -> None:
    response = client_for(ops).post(
        reverse("dashboard:alert_acknowledge", args=[alert.pk]), {"note": "x" * 1001}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert "note: at most 1000 characters" in response.content.decode()


def test_a_failed_delivery_shows_on_the_alert_list_the_alert_page_and_the_admin(
    ops: Any, admin_user: Any, clock: Any
) -> None:
    with ScriptedServer() as server:
        server.script("/hook/secret-token", Reply(500, {}))
        flow(PICKY)
        rule(RuleKind.RUN_FAILED, webhooks=f"{server.url}/hook/secret-token")
        start(input={"ok": False})
        evaluate()
        deliver_all()
    [found] = open_alerts()
    for url in (
        reverse("dashboard:alerts"),
        reverse("dashboard:alert", args=[found.pk]),
        reverse("admin:alerts_alert_change", args=[found.pk]),
    ):
        html = client_for(admin_user).get(url).content.decode()
        assert "webhook at 127.0.0.1" in html and "the webhook answered 500" in html, url
        assert "secret-token" not in html, "a webhook URL is a secret: only its host is shown"


def test_the_list_page_draws_in_a_fixed_number_of_queries(ops: Any, clock: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    flow(PICKY)
    rule(RuleKind.RUN_FAILED, users=[ops])
    client = client_for(ops)
    counts = []
    for runs in (1, 5):
        for _ in range(runs):
            start(input={"ok": False})
        evaluate()
        with CaptureQueriesContext(connection) as queries:
            assert client.get(reverse("dashboard:alerts")).status_code == 200
        counts.append(len(queries))
    assert len(open_alerts()) == 6
    assert counts[0] == counts[1] <= 20, counts


# --- the admin ---------------------------------------------------------------------------------


def rule_form(**fields: Any) -> dict[str, Any]:
    data = {
        "name": "slow runs",
        "kind": RuleKind.RUN_DURATION,
        "severity": "warning",
        "enabled": "on",
        "min_count": "5",
        "webhooks": "",
        "users": [],
        "groups": [],
    }
    data.update(fields)
    return data


def test_a_superuser_writes_a_rule_in_the_admin_and_bad_values_are_field_errors(admin_user: Any, ops: Any) -> None:
    client = client_for(admin_user)
    url = reverse("admin:alerts_alertrule_add")
    response = client.post(url, rule_form(threshold_seconds=""))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["threshold_seconds"] == ["Say how long a run may take, in seconds."]
    response = client.post(url, rule_form(threshold_seconds="3600", webhooks="ftp://x.example/hook\nhttp://10.0.0.1/hook"))
    errors = response.context["adminform"].form.errors
    assert errors["webhooks"] == [
        "ftp://x.example/hook: must be an http or https URL with a host; 10.0.0.1:80 is not on BATON_HTTP_ALLOWED_HOSTS"
    ]
    response = client.post(url, rule_form(kind=RuleKind.FAILURE_RATE, failure_percent="150", threshold_seconds="5"))
    errors = response.context["adminform"].form.errors
    assert errors["failure_percent"] == ["A percentage from 0 up to (not including) 100."]
    assert errors["threshold_seconds"] == ["Only duration, approval and schedule rules have a threshold."]
    response = client.post(url, rule_form(threshold_seconds="3600", webhooks="http://127.0.0.1:9/hook"))
    assert response.status_code == 302
    assert AlertRule.objects.get().threshold_seconds == 3600


def test_staff_who_are_not_superusers_see_no_rules_and_only_the_alerts_they_may_see(alert: Alert, ops: Any, viewer: Any) -> None:
    staff = get_user_model().objects.create_user("staffer", "staffer@example.com", "staffer-pass-1", is_staff=True)
    client = client_for(staff)
    assert client.get(reverse("admin:alerts_alertrule_changelist")).status_code == 403
    assert alert.title not in client.get(reverse("admin:alerts_alert_changelist")).content.decode()
    ops.is_staff = True
    ops.save()
    assert alert.title in client_for(ops).get(reverse("admin:alerts_alert_changelist")).content.decode()
    assert client_for(ops).get(reverse("admin:alerts_alertrule_changelist")).status_code == 403


def test_acknowledging_in_the_admin_goes_through_the_same_transition(alert: Alert, admin_user: Any) -> None:
    client_for(admin_user).post(
        reverse("admin:alerts_alert_changelist"), {"action": "acknowledge", "_selected_action": [alert.pk]}
    )
    alert.refresh_from_db()
    assert (alert.status, alert.acknowledged_by, alert.acknowledge_note) == (
        AlertStatus.ACKNOWLEDGED,
        admin_user,
        "acknowledged in the admin",
    )
