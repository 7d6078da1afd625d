"""Sending one delivery: an email through Django's mail, or a webhook through the same
SSRF-safe outbound client the agents use (orchestration/outbound.py: allowed hosts only,
internal addresses refused unless listed, no redirects), with a short timeout.

Runs in a django-q2 worker (orchestration/alerts/queue.py says why not in the ticker). The
outcome is recorded by orchestration/alerts/transitions.py: sent, or failed with the reason
and retried with backoff; a refused URL or a 4xx answer is not retried (it would fail the same
way). The webhook body is Slack-compatible: `{"text": "..."}`, so a Slack, Mattermost or Teams
incoming webhook shows it as is. A webhook URL is treated as a secret (Slack's carry their
token in the path): errors and pages name only its host.
"""

from __future__ import annotations

import logging
from typing import TypedDict

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from orchestration import outbound
from orchestration.alerts import transitions
from orchestration.alerts.models import Alert, Channel, Delivery

logger = logging.getLogger("baton.alerts")

WEBHOOK_TIMEOUT_SECONDS = 10.0
# An answer worth retrying: the receiver is busy or briefly down. Any other 4xx will not pass.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})


class WebhookBody(TypedDict):
    text: str


def base_url() -> str:
    return str(getattr(settings, "BATON_BASE_URL", "http://127.0.0.1:8000")).rstrip("/")


def alert_url(alert: Alert) -> str:
    return f"{base_url()}/alerts/{alert.pk}/"


def headline(alert: Alert, about: str) -> str:
    if about == "resolved":
        return f"[resolved] {alert.title}"
    return f"[{alert.get_severity_display().lower()}] {alert.title}"


def text_of(alert: Alert, about: str) -> str:
    lines = [headline(alert, about)]
    if alert.detail and about == "fired":
        lines.append(alert.detail)
    lines.append(f"Rule: {alert.rule.name}")
    if alert.link:
        lines.append(f"{base_url()}{alert.link}")
    lines.append(f"Alert: {alert_url(alert)}")
    return "\n".join(lines)


def webhook_body(alert: Alert, about: str) -> WebhookBody:
    return {"text": text_of(alert, about)}


def send(delivery_id: int) -> None:
    now = timezone.now()
    delivery = transitions.claim(delivery_id=delivery_id, now=now)
    if delivery is None:
        return  # not due, sent already, or another worker has it
    try:
        if delivery.channel == Channel.EMAIL:
            _send_email(delivery)
        else:
            _send_webhook(delivery)
    except _Failed as failed:
        logger.warning("alerts: delivery %s to %s failed: %s", delivery.pk, delivery.shown_target, failed.message)
        transitions.record_failure(
            delivery_id=delivery.pk,
            error=failed.message,
            now=timezone.now(),
            permanent=failed.permanent,
            retry_after=failed.retry_after,
        )
        return
    except Exception as exc:
        logger.exception("alerts: delivery %s to %s failed", delivery.pk, delivery.shown_target)
        transitions.record_failure(delivery_id=delivery.pk, error=f"{type(exc).__name__}: {exc}"[:300], now=timezone.now())
        return
    transitions.record_sent(delivery_id=delivery.pk, now=timezone.now())


class _Failed(Exception):
    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after


def _send_email(delivery: Delivery) -> None:
    alert = delivery.alert
    try:
        send_mail(
            subject=f"Baton alert: {headline(alert, delivery.about)}"[:200],
            message=text_of(alert, delivery.about),
            from_email=None,
            recipient_list=[delivery.target],
        )
    except OSError as exc:  # smtplib's errors are OSErrors: the server is down or refused
        raise _Failed(f"the mail server: {type(exc).__name__}: {exc}"[:300]) from None


def _send_webhook(delivery: Delivery) -> None:
    timeout = float(getattr(settings, "BATON_ALERT_WEBHOOK_TIMEOUT_SECONDS", WEBHOOK_TIMEOUT_SECONDS))
    try:
        answer = outbound.request(
            "POST", delivery.target, json_body=webhook_body(delivery.alert, delivery.about), timeout=timeout
        )
    except outbound.OutboundRefused as exc:
        # The message may quote the host, never the path (it says host, port and address).
        raise _Failed(f"refused: {exc}", permanent=True) from None
    except (outbound.OutboundTimeout, outbound.OutboundUnavailable, outbound.OutboundTooLarge) as exc:
        raise _Failed(str(exc)) from None
    if 200 <= answer.status < 300:
        return
    retry_after = _retry_after(answer.headers.get("retry-after"))
    permanent = 400 <= answer.status < 500 and answer.status not in RETRYABLE_4XX
    raise _Failed(
        f"the webhook answered {answer.status}: {answer.excerpt(200)}", permanent=permanent, retry_after=retry_after
    )


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
