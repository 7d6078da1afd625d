"""Webhooks: POST /hooks/<key> starts a run when the body's HMAC-SHA256 with the secret is in
X-Baton-Signature and X-Baton-Timestamp is recent; anything else is refused, says why, starts
nothing, and is listed among the workflow's deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from orchestration.models import Run
from orchestration.triggers import transitions
from orchestration.triggers.models import Firing, FiringOutcome, Trigger
from tests.support import load_workflow

pytestmark = pytest.mark.django_db

SECRET = "s3cret-for-tests-only"

CRM = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: crm
  name: CRM sync
  owner: ops
  inputs: {customer: {type: string, required: true}}
  triggers:
    - webhook: {secret_env: CRM_WEBHOOK_SECRET}
      input: {customer: "{{ body.customer_id }}"}
  steps:
    - {key: sync, agent: echo, input: {customer: "{{ input.customer }}"}}
"""


@pytest.fixture
def crm(ops: Any, monkeypatch: Any) -> Trigger:
    monkeypatch.setenv("CRM_WEBHOOK_SECRET", SECRET)
    load_workflow(CRM)
    return Trigger.objects.get(workflow__key="crm")


def deliver(
    body: bytes, *, signature: str | None = None, timestamp: float | None = None, key: str = "crm"
) -> Any:
    headers = {
        "HTTP_X_BATON_SIGNATURE": signature
        if signature is not None
        else "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        "HTTP_X_BATON_TIMESTAMP": str(int(timestamp if timestamp is not None else time.time())),
    }
    return Client().post(f"/hooks/{key}", body, content_type="application/json", **headers)


def refusals() -> list[str]:
    return list(Firing.objects.filter(outcome=FiringOutcome.REFUSED).values_list("detail", flat=True))


def test_a_signed_delivery_starts_a_run_with_the_input_rendered_from_the_body(crm: Trigger) -> None:
    response = deliver(json.dumps({"customer_id": "C-42"}).encode())
    assert response.status_code == 202, response.content
    run = Run.objects.get(pk=response.json()["run"])
    assert (run.trigger, run.input) == ("webhook", {"customer": "C-42"})
    assert Firing.objects.get(run=run).trigger == crm


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        ("sha256=" + "0" * 64, "the signature does not match the body"),
        ("", "the X-Baton-Signature header is missing"),
        (
            "sha256=" + hmac.new(b"another secret", b'{"customer_id": "C-42"}', hashlib.sha256).hexdigest(),
            "does not match",
        ),
    ],
)
def test_a_bad_or_missing_signature_gets_401_and_starts_nothing(
    crm: Trigger, signature: str, reason: str
) -> None:
    response = deliver(b'{"customer_id": "C-42"}', signature=signature)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert reason in response.json()["detail"]
    assert not Run.objects.exists()
    assert any(reason in detail for detail in refusals())


def test_the_same_delivery_sent_again_is_refused_as_a_replay(crm: Trigger) -> None:
    body = b'{"customer_id": "C-42"}'
    assert deliver(body).status_code == 202
    again = deliver(body)
    assert again.status_code == 401
    assert again.json()["error"] == "replayed"
    assert Run.objects.count() == 1


def test_an_old_or_future_timestamp_is_refused(crm: Trigger) -> None:
    body = b'{"customer_id": "C-42"}'
    assert deliver(body, timestamp=time.time() - 301).status_code == 401
    assert deliver(body, timestamp=time.time() + 3600).status_code == 401
    assert deliver(body, timestamp=0).json()["detail"].startswith("the timestamp is")
    assert not Run.objects.exists()


def test_a_body_over_the_limit_gets_413_unread(crm: Trigger, settings: Any) -> None:
    settings.BATON_WEBHOOK_MAX_BYTES = 2048
    response = deliver(json.dumps({"customer_id": "C" * 4000}).encode())
    assert response.status_code == 413
    assert "at most 2,048" in response.json()["detail"]
    assert not Run.objects.exists()


def test_a_body_that_does_not_fit_the_inputs_gets_422_naming_the_field(crm: Trigger) -> None:
    response = deliver(b'{"customer_id": 42}')
    assert response.status_code == 422
    assert "customer" in response.json()["detail"]
    assert not Run.objects.exists()
    assert Firing.objects.get().outcome == FiringOutcome.FAILED


def test_a_body_that_is_not_json_gets_400(crm: Trigger) -> None:
    response = deliver(b"customer=C-42")
    assert response.status_code == 400
    assert not Run.objects.exists()


def test_without_the_secret_on_the_server_nothing_is_accepted(crm: Trigger, monkeypatch: Any) -> None:
    monkeypatch.delenv("CRM_WEBHOOK_SECRET")
    response = deliver(b'{"customer_id": "C-42"}')
    assert response.status_code == 503
    assert "CRM_WEBHOOK_SECRET" in response.json()["detail"]
    assert SECRET not in response.content.decode()


def test_a_workflow_without_a_webhook_and_a_get_are_refused(crm: Trigger) -> None:
    assert deliver(b"{}", key="nope").status_code == 404
    assert Client().get("/hooks/crm").status_code == 405


def test_a_paused_webhook_starts_nothing(crm: Trigger) -> None:
    transitions.set_paused(trigger=crm, paused=True)
    assert deliver(b'{"customer_id": "C-42"}').status_code == 409
    assert not Run.objects.exists()


def test_replay_records_are_forgotten_after_the_replay_window(crm: Trigger, settings: Any) -> None:
    assert deliver(b'{"customer_id": "C-1"}').status_code == 202
    transitions.sweep(timezone.now() + timedelta(seconds=settings.BATON_WEBHOOK_REPLAY_SECONDS + 1))
    from orchestration.triggers.models import SeenSignature

    assert not SeenSignature.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_tickers_firing_one_slot_at_once_start_one_run(ops: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks are a PostgreSQL matter: SQLite has one writer at a time")
    from tests.triggers.test_cron import DIGEST

    load_workflow(DIGEST.replace("CRON", "* * * * *").replace("CATCH_UP", "1"))
    trigger = Trigger.objects.get()
    now = trigger.next_fire_at + timedelta(seconds=1)
    barrier = threading.Barrier(2)
    started: list[int] = []

    def tick() -> None:
        try:
            barrier.wait()
            started.append(transitions.fire_due(now))
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(started) == [0, 1]
    assert Run.objects.filter(trigger="cron").count() == 1


def test_a_slot_fired_already_is_never_fired_again_even_without_the_lock(ops: Any) -> None:
    from tests.triggers.test_cron import DIGEST

    load_workflow(DIGEST.replace("CRON", "* * * * *").replace("CATCH_UP", "1"))
    trigger = Trigger.objects.get()
    slot = trigger.next_fire_at
    assert transitions._start_for_slot(trigger, slot) == 1
    assert transitions._start_for_slot(trigger, slot) == 0
    assert Run.objects.filter(trigger="cron").count() == 1
