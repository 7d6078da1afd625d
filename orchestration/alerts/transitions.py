"""Every change to alerts and their deliveries goes through here, each in one transaction that
appends an AlertEvent: firing, resolving, acknowledging, and each delivery's claim and outcome.

Firing is guarded by the partial unique constraint (one open alert per rule and subject), so
two tickers evaluating the same rule fire it once; resolving and acknowledging are
compare-and-set on the status. Task messages for new deliveries leave after commit.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone

from orchestration.alerts import conditions, queue, reads
from orchestration.alerts.conditions import Finding
from orchestration.alerts.models import (
    ALERT_OPEN,
    OPEN_Q,
    Alert,
    AlertEvent,
    AlertEventKind,
    AlertRule,
    AlertStatus,
    Channel,
    Delivery,
    DeliveryStatus,
)

logger = logging.getLogger("baton.alerts")

MAX_NOTE = 1000
# Retries of a failed delivery: about 30 s, 2 min, 8 min, 32 min apart (half of it random, so
# a receiver that was down is not hit by every alert at the same moment), then it gives up.
MAX_ATTEMPTS = 5
BACKOFF_BASE_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 3600.0


class AlertRefused(Exception):
    """An acknowledgement that cannot be made, with the words to show and an HTTP status."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# ---------------------------------------------------------------------------------------------
# Evaluation: the ticker's pass


def evaluate(now: datetime | None = None) -> int:
    """Every enabled rule's findings against its open alerts; returns how many alerts changed.
    One rule that fails is logged and the others go on; a lost database connection ends the
    pass (the ticker says so once)."""
    now = now or timezone.now()
    changed = 0
    for rule in AlertRule.objects.filter(enabled=True).order_by("pk"):
        try:
            changed += evaluate_rule(rule=rule, now=now)
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            logger.exception("alerts: evaluating rule %s (%s) failed", rule.pk, rule.name)
    # A rule switched off says nothing any more: what it had open is resolved.
    for pk in Alert.objects.filter(OPEN_Q, rule__enabled=False).values_list("pk", flat=True)[: conditions.LIMIT]:
        changed += int(resolve(alert_id=pk, now=now, reason="the rule was disabled"))
    return changed


def evaluate_rule(*, rule: AlertRule, now: datetime) -> int:
    found = conditions.findings(rule, now)
    if found is None:
        return 0
    wanted = {finding.subject: finding for finding in found}
    open_ = dict(Alert.objects.filter(OPEN_Q, rule=rule).values_list("subject", "pk"))
    changed = 0
    for subject, finding in wanted.items():
        if subject not in open_:
            changed += int(fire(rule=rule, finding=finding, now=now) is not None)
    for subject, pk in open_.items():
        if subject not in wanted:
            changed += int(resolve(alert_id=pk, now=now, reason="the condition cleared"))
    return changed


def _event(alert: Alert, kind: str, now: datetime, *, actor: Any = None, note: str = "", data: Any = None) -> None:
    AlertEvent.objects.create(alert=alert, kind=kind, actor=actor, note=note, data=data or {}, created_at=now)


def fire(*, rule: AlertRule, finding: Finding, now: datetime) -> Alert | None:
    """Open an alert for the finding and queue its notifications; None if one is open already."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    rule=rule,
                    subject=finding.subject,
                    severity=rule.severity,
                    title=finding.title[:300],
                    detail=finding.detail,
                    workflow_id=finding.workflow_id,
                    run_id=finding.run_id,
                    agent_id=finding.agent_id,
                    link=finding.link[:200],
                    fired_at=now,
                )
        except IntegrityError:
            return None  # fired already (by another ticker)
        _event(alert, AlertEventKind.FIRED, now, note=finding.detail[:MAX_NOTE], data=finding.data)
        _queue_deliveries(alert, about="fired", targets=_targets(rule, alert), now=now)
    return alert


def resolve(*, alert_id: int, now: datetime, reason: str) -> bool:
    """Close an open alert (its condition cleared); tell whoever was told it fired."""
    with transaction.atomic():
        won = Alert.objects.filter(OPEN_Q, pk=alert_id).update(status=AlertStatus.RESOLVED, resolved_at=now)
        if not won:
            return False
        alert = Alert.objects.get(pk=alert_id)
        _event(alert, AlertEventKind.RESOLVED, now, note=reason)
        told = list(
            Delivery.objects.filter(alert=alert, about="fired").order_by("pk").values_list("channel", "target")
        )
        _queue_deliveries(alert, about="resolved", targets=told, now=now)
    return True


def acknowledge(*, alert_id: int, user: Any, note: str = "", now: datetime | None = None) -> Alert:
    """Someone is on it: who, when and their note. The alert stays open until it resolves."""
    now = now or timezone.now()
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise AlertRefused(f"note: at most {MAX_NOTE} characters, not {len(note)}", status=422)
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(pk=alert_id).first()
        if alert is None or not reads.may_see(user, alert):
            raise AlertRefused("There is no such alert.", status=404)
        if not reads.may_acknowledge(user, alert):
            raise AlertRefused(
                "You may see this alert but not acknowledge it: that takes operator rights on its workflow.",
                status=403,
            )
        won = Alert.objects.filter(pk=alert_id, status=AlertStatus.FIRING).update(
            status=AlertStatus.ACKNOWLEDGED, acknowledged_at=now, acknowledged_by=user, acknowledge_note=note
        )
        if not won:
            alert.refresh_from_db()
            if alert.status == AlertStatus.ACKNOWLEDGED:
                who = alert.acknowledged_by.get_username() if alert.acknowledged_by else "someone"
                raise AlertRefused(f"Already acknowledged by {who} at {alert.acknowledged_at:%H:%M} UTC.")
            raise AlertRefused(f"This alert resolved at {alert.resolved_at:%H:%M} UTC: nothing to acknowledge.")
        alert.refresh_from_db()
        _event(alert, AlertEventKind.ACKNOWLEDGED, now, actor=user, note=note)
    return alert


# ---------------------------------------------------------------------------------------------
# Deliveries


def _targets(rule: AlertRule, alert: Alert) -> list[tuple[str, str]]:
    """Email addresses of the rule's users and groups' members who may see the alert (nobody
    learns by mail what the pages would not show them), then its webhook URLs."""
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    people = users.filter(Q(pk__in=rule.users.values("pk")) | Q(groups__in=rule.groups.values("pk"))).distinct()
    emails = sorted({user.email for user in people.order_by("pk") if reads.may_see(user, alert)})
    return [(Channel.EMAIL.value, email) for email in emails] + [(Channel.WEBHOOK.value, url) for url in rule.webhook_list]


def _queue_deliveries(alert: Alert, *, about: str, targets: list[tuple[str, str]], now: datetime) -> None:
    rows = Delivery.objects.bulk_create(
        [
            Delivery(
                alert=alert,
                about=about,
                channel=channel,
                target=target,
                next_attempt_at=now,
                queued_at=now,
                created_at=now,
            )
            for channel, target in targets
        ]
    )
    ids = [row.pk for row in rows]
    if not ids:  # bulk_create leaves pks unset on backends that cannot return them
        return
    transaction.on_commit(partial(queue.send, ids))


def due_deliveries(now: datetime, *, lost_after: float) -> list[int]:
    """Mark the deliveries whose (next) attempt is due and that have no message on its way, and
    return them for the caller to send after commit: a retry whose time came, or a message the
    broker lost (queued longer than `lost_after` ago and still not taken)."""
    due = Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now).filter(
        Q(queued_at__isnull=True)
        | Q(queued_at__lt=now - timedelta(seconds=lost_after))
        | Q(queued_at__lt=F("next_attempt_at"))
    )
    ids = list(due.order_by("next_attempt_at").values_list("pk", flat=True)[: conditions.LIMIT])
    if ids:
        Delivery.objects.filter(pk__in=ids, status=DeliveryStatus.PENDING).update(queued_at=now)
    return ids


def release_stuck(now: datetime, *, stuck_after: float) -> int:
    """Deliveries a worker took and never finished (it died mid-send) are tried again."""
    stuck = list(
        Delivery.objects.filter(
            status=DeliveryStatus.SENDING, claimed_at__lt=now - timedelta(seconds=stuck_after)
        ).values_list("pk", flat=True)[: conditions.LIMIT]
    )
    for pk in stuck:
        record_failure(delivery_id=pk, error="the worker sending it stopped before it finished", now=now, expected=DeliveryStatus.SENDING)
    return len(stuck)


def claim(*, delivery_id: int, now: datetime) -> Delivery | None:
    """Take a due delivery for sending (compare-and-set); None if it is not due or taken."""
    won = Delivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).update(status=DeliveryStatus.SENDING, claimed_at=now)
    if not won:
        return None
    return Delivery.objects.select_related("alert__rule").get(pk=delivery_id)


def record_sent(*, delivery_id: int, now: datetime) -> bool:
    with transaction.atomic():
        won = Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.SENDING).update(
            status=DeliveryStatus.SENT, sent_at=now, attempts=F("attempts") + 1, last_error=""
        )
        if not won:
            return False
        delivery = Delivery.objects.select_related("alert").get(pk=delivery_id)
        _event(
            delivery.alert,
            AlertEventKind.DELIVERED,
            now,
            note=f"{delivery.about} sent by {delivery.get_channel_display().lower()} to {delivery.shown_target}",
            data={"delivery": delivery.pk, "attempts": delivery.attempts},
        )
    return True


def backoff(attempts: int, *, retry_after: float | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones."""
    if retry_after is not None:
        return min(max(retry_after, 1.0), BACKOFF_MAX_SECONDS)
    ceiling = min(BACKOFF_BASE_SECONDS * 4 ** (attempts - 1), BACKOFF_MAX_SECONDS)
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


@dataclass(frozen=True)
class Outcome:
    retried: bool
    next_attempt_at: datetime | None


def record_failure(
    *,
    delivery_id: int,
    error: str,
    now: datetime,
    permanent: bool = False,
    retry_after: float | None = None,
    expected: str = DeliveryStatus.SENDING,
) -> Outcome | None:
    """A failed attempt: retried with backoff until MAX_ATTEMPTS, or at once given up when the
    failure cannot pass (a refused URL, a 4xx answer). Either way the alert's page says so."""
    max_attempts = int(getattr(settings, "BATON_ALERT_DELIVERY_ATTEMPTS", MAX_ATTEMPTS))
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().select_related("alert").filter(pk=delivery_id, status=expected).first()
        if delivery is None:
            return None
        attempts = delivery.attempts + 1
        give_up = permanent or attempts >= max_attempts
        next_at = None if give_up else now + timedelta(seconds=backoff(attempts, retry_after=retry_after))
        Delivery.objects.filter(pk=delivery_id).update(
            status=DeliveryStatus.FAILED if give_up else DeliveryStatus.PENDING,
            attempts=attempts,
            last_error=error[:500],
            next_attempt_at=next_at or delivery.next_attempt_at,
            claimed_at=None,
        )
        _event(
            delivery.alert,
            AlertEventKind.DELIVERY_FAILED,
            now,
            note=(
                f"{delivery.about} by {delivery.get_channel_display().lower()} to {delivery.shown_target}: {error[:300]}"
                + ("; given up" if give_up else f"; retrying at {next_at:%H:%M:%S} UTC")
            ),
            data={"delivery": delivery.pk, "attempts": attempts, "gave_up": give_up},
        )
    return Outcome(not give_up, next_at)


__all__ = [
    "ALERT_OPEN",
    "AlertRefused",
    "acknowledge",
    "claim",
    "due_deliveries",
    "evaluate",
    "fire",
    "record_failure",
    "record_sent",
    "release_stuck",
    "resolve",
]
