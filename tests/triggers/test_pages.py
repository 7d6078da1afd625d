"""The workflow page says what starts its runs: the schedule with its next run, the webhook's
address and the name of its secret (never the secret); its owner also sees the last deliveries."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from orchestration.models import Workflow
from orchestration.triggers import transitions
from orchestration.triggers.models import Trigger
from tests.support import load_workflow

pytestmark = pytest.mark.django_db

BOTH = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: crm
  name: CRM sync
  owner: ops
  access: {viewers: [readers]}
  triggers:
    - cron: "0 9 * * 1-5"
      timezone: Europe/Paris
    - webhook: {secret_env: CRM_WEBHOOK_SECRET}
  steps:
    - {key: sync, agent: echo}
"""


@pytest.fixture
def crm(ops: Any, outsider: Any, monkeypatch: Any) -> Workflow:
    monkeypatch.setenv("CRM_WEBHOOK_SECRET", "very-secret-value")
    Group.objects.get_or_create(name="readers")[0].user_set.add(outsider)
    with time_machine.travel("2026-11-30 08:59Z", tick=False):
        load_workflow(BOTH)
    return Workflow.objects.get(key="crm")


def page(user: Any) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(reverse("dashboard:workflow", args=["crm"]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_page_shows_the_schedule_with_its_next_run_and_the_webhook_without_its_secret(
    crm: Workflow, ops: Any
) -> None:
    html = page(ops)
    assert "<code>0 9 * * 1-5</code>" in html
    assert "Europe/Paris" in html
    assert "Tue 1 Dec, 08:00" in html  # 09:00 in Paris, shown in the server's zone (UTC)
    assert "POST /hooks/crm" in html
    assert "CRM_WEBHOOK_SECRET" in html
    assert "very-secret-value" not in html


def test_a_paused_schedule_says_so(crm: Workflow, ops: Any) -> None:
    transitions.set_paused(trigger=Trigger.objects.get(kind="cron"), paused=True)
    assert "‖ paused" in page(ops)


def test_the_owner_sees_refused_deliveries_and_a_viewer_does_not(
    crm: Workflow, ops: Any, outsider: Any
) -> None:
    Client().post(
        "/hooks/crm",
        b"{}",
        content_type="application/json",
        HTTP_X_BATON_SIGNATURE="sha256=" + "0" * 64,
        HTTP_X_BATON_TIMESTAMP=str(int(time.time())),
    )
    body = b'{"ok": true}'
    signature = hmac.new(b"very-secret-value", body, hashlib.sha256).hexdigest()
    Client().post(
        "/hooks/crm",
        body,
        content_type="application/json",
        HTTP_X_BATON_SIGNATURE=signature,
        HTTP_X_BATON_TIMESTAMP=str(int(time.time())),
    )
    owner_view = page(ops)
    assert "the signature does not match the body" in owner_view
    assert 'data-firing="started"' in owner_view
    assert "the signature does not match" not in page(outsider)


def test_the_owner_pauses_the_workflows_triggers_and_then_it_starts_nothing(crm: Workflow, ops: Any) -> None:
    from orchestration.models import Run
    from orchestration.triggers.models import TriggerEvent

    client = Client()
    client.force_login(ops)
    response = client.post(reverse("dashboard:workflow_pause_triggers", args=["crm"]), {"paused": "yes"}, follow=True)
    assert "2 triggers paused." in response.content.decode()
    assert "Resume its triggers" in response.content.decode()
    assert set(Trigger.objects.values_list("paused", flat=True)) == {True}
    assert list(TriggerEvent.objects.values_list("kind", "actor__username")) == [("paused", "ops"), ("paused", "ops")]
    body = b'{"ok": 1}'
    signature = hmac.new(b"very-secret-value", body, hashlib.sha256).hexdigest()
    delivered = Client().post("/hooks/crm", body, content_type="application/json", HTTP_X_BATON_SIGNATURE=signature, HTTP_X_BATON_TIMESTAMP=str(int(time.time())))
    assert delivered.status_code == 409
    assert not Run.objects.exists()
    client.post(reverse("dashboard:workflow_pause_triggers", args=["crm"]), {"paused": "no"})
    assert set(Trigger.objects.values_list("paused", flat=True)) == {False}


def test_a_viewer_may_not_pause_the_triggers(crm: Workflow, outsider: Any) -> None:
    client = Client()
    client.force_login(outsider)
    assert client.post(reverse("dashboard:workflow_pause_triggers", args=["crm"]), {"paused": "yes"}).status_code == 403
    assert "Pause its triggers" not in page(outsider)
    assert set(Trigger.objects.values_list("paused", flat=True)) == {False}
