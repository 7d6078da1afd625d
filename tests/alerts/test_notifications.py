"""Notifications: an email to each of the rule's recipients who may see the alert, a
Slack-compatible JSON body to each webhook (a real local HTTP server), through the agents'
SSRF-safe outbound client; failures retried with backoff, then given up, and shown on the alert."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from orchestration.alerts import deliveries, transitions
from orchestration.alerts.models import AlertRule, Delivery, DeliveryStatus, RuleKind
from tests.alerts.conftest import deliver_all, evaluate, flow, open_alerts, rule, start
from tests.servers import Reply, ScriptedServer, refusing_port

pytestmark = pytest.mark.django_db

PICKY = "    - {key: check, agent: picky, input: '{{ input }}'}"


def failing_run_alert(ops: Any, **fields: Any) -> tuple[AlertRule, Any]:
    flow(PICKY)
    made = rule(RuleKind.RUN_FAILED, severity="critical", **fields)
    run = start(input={"ok": False})
    evaluate()
    return made, run


def test_the_webhook_receiver_gets_a_slack_compatible_json_body(ops: Any, receiver: ScriptedServer, clock: Any) -> None:
    receiver.script("/hook/T000/B000/secret", Reply(200, {"ok": True}))
    _, run = failing_run_alert(ops, webhooks=f"{receiver.url}/hook/T000/B000/secret")
    assert deliver_all() == 1
    [seen] = receiver.seen("/hook/T000/B000/secret")
    assert seen.method == "POST" and seen.headers["content-type"] == "application/json"
    [alert] = open_alerts()
    assert seen.body == {
        "text": (
            f"[critical] Run {run.pk} of Flow wf failed\n"
            "Step 'check' (agent picky) failed: PermanentError: the input is not ok\n"
            "Rule: run_failed rule\n"
            f"http://baton.example/runs/{run.pk}/\n"
            f"Alert: http://baton.example/alerts/{alert.pk}/"
        )
    }
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.shown_target) == (DeliveryStatus.SENT, 1, "webhook at 127.0.0.1")
    assert alert.events.filter(kind="delivered").count() == 1


def test_email_goes_to_the_rules_users_and_group_members_who_may_see_the_alert(
    ops: Any, viewer: Any, outsider: Any, pager: Any, clock: Any
) -> None:
    failing_run_alert(ops, users=[viewer], groups=[pager])
    assert deliver_all() == 2
    # outsider is in the pager group but may not see the workflow: no mail tells them about it.
    assert sorted(m.to[0] for m in mail.outbox) == ["ops@example.com", "viewer@example.com"]
    message = mail.outbox[0]
    assert message.subject.startswith("Baton alert: [critical] Run ")
    assert "the input is not ok" in message.body and "http://baton.example/alerts/" in message.body


def test_a_resolved_alert_tells_whoever_was_told_it_fired(ops: Any, receiver: ScriptedServer, clock: Any) -> None:
    receiver.script("/hook", Reply(200, {}))
    failing_run_alert(ops, users=[ops], webhooks=f"{receiver.url}/hook")
    deliver_all()
    mail.outbox.clear()
    start(input={"ok": True})
    evaluate()
    assert deliver_all() == 2
    assert [m.subject for m in mail.outbox] == [mail.outbox[0].subject]
    assert mail.outbox[0].subject.startswith("Baton alert: [resolved] Run ")
    assert receiver.seen("/hook")[-1].body["text"].startswith("[resolved] Run ")


def test_a_failing_webhook_is_retried_with_backoff_then_given_up_and_the_alert_says_so(
    ops: Any, receiver: ScriptedServer, clock: Any, settings: Any
) -> None:
    settings.BATON_ALERT_DELIVERY_ATTEMPTS = 3
    receiver.script("/hook", Reply(503, {"error": "down"}))
    failing_run_alert(ops, webhooks=f"{receiver.url}/hook")
    deliver_all()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.PENDING, 1)
    assert delivery.last_error.startswith("the webhook answered 503")
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 15 <= wait <= 30, "the first retry comes after 15-30 s"
    assert deliver_all() == 0, "not before its time"
    clock.move_to(delivery.next_attempt_at)
    evaluate()  # the ticker's pass sends the retry's task message
    deliver_all()
    delivery.refresh_from_db()
    assert delivery.attempts == 2
    assert 60 <= (delivery.next_attempt_at - timezone.now()).total_seconds() <= 120, "then after 1-2 min"
    clock.move_to(delivery.next_attempt_at)
    deliver_all()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
    assert len(receiver.seen("/hook")) == 3
    [alert] = open_alerts()
    notes = list(alert.events.filter(kind="delivery_failed").order_by("id").values_list("note", flat=True))
    assert len(notes) == 3 and notes[-1].endswith("; given up")


def test_a_webhook_that_answers_429_is_retried_after_its_retry_after(ops: Any, receiver: ScriptedServer, clock: Any) -> None:
    receiver.script("/hook", Reply(429, {}, headers={"Retry-After": "120"}), Reply(200, {}))
    failing_run_alert(ops, webhooks=f"{receiver.url}/hook")
    deliver_all()
    delivery = Delivery.objects.get()
    assert delivery.next_attempt_at == timezone.now() + timedelta(seconds=120)
    clock.shift(120)
    deliver_all()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


def test_a_webhook_that_refuses_the_body_is_not_retried(ops: Any, receiver: ScriptedServer, clock: Any) -> None:
    receiver.script("/hook", Reply(404, {"error": "no such hook"}))
    failing_run_alert(ops, webhooks=f"{receiver.url}/hook")
    deliver_all()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
    assert delivery.last_error.startswith("the webhook answered 404")


def test_a_webhook_on_an_address_the_outbound_client_refuses_is_never_called(ops: Any, clock: Any, settings: Any) -> None:
    with ScriptedServer() as server:
        failing_run_alert(ops, webhooks=f"{server.url}/hook")
        settings.BATON_HTTP_ALLOWED_HOSTS = "hooks.example.com"  # 127.0.0.1 is no longer allowed
        deliver_all()
        assert server.seen("/hook") == []
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error == "refused: host '127.0.0.1' is not on BATON_HTTP_ALLOWED_HOSTS"


def test_an_unreachable_webhook_is_retried_and_never_holds_the_ticker(ops: Any, clock: Any) -> None:
    with refusing_port() as url:
        failing_run_alert(ops, webhooks=f"{url}/hook")
        # The ticker's pass only wrote rows and task messages; the send happens in a worker.
        assert Delivery.objects.get().attempts == 0
        deliver_all()
    delivery = Delivery.objects.get()
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 1
    assert "cannot reach 127.0.0.1" in delivery.last_error


def test_a_delivery_claimed_twice_is_sent_once(ops: Any, receiver: ScriptedServer, clock: Any) -> None:
    receiver.script("/hook", Reply(200, {}))
    failing_run_alert(ops, webhooks=f"{receiver.url}/hook")
    delivery = Delivery.objects.get()
    deliveries.send(delivery.pk)
    deliveries.send(delivery.pk)  # the same task message delivered twice
    assert len(receiver.seen("/hook")) == 1


def test_a_delivery_whose_worker_died_is_tried_again(ops: Any, receiver: ScriptedServer, clock: Any) -> None:
    receiver.script("/hook", Reply(200, {}))
    failing_run_alert(ops, webhooks=f"{receiver.url}/hook")
    delivery = Delivery.objects.get()
    assert transitions.claim(delivery_id=delivery.pk, now=timezone.now()) is not None  # and the worker dies
    clock.shift(121)
    evaluate()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 1
    clock.move_to(delivery.next_attempt_at)
    deliver_all()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


def test_new_deliveries_leave_as_task_messages_after_commit(
    ops: Any, clock: Any, django_capture_on_commit_callbacks: Any, monkeypatch: Any
) -> None:
    from orchestration.alerts import queue

    sent: list[list[int]] = []
    monkeypatch.setattr(queue, "send", sent.append)
    flow(PICKY)
    start(input={"ok": False})
    rule(RuleKind.RUN_FAILED, users=[ops])
    with django_capture_on_commit_callbacks(execute=True):
        evaluate()
    assert sent == [[Delivery.objects.get().pk]]
