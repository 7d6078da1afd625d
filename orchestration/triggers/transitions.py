"""Every change to triggers goes through here: keeping the rows in step with the published
version, firing due schedules, accepting or refusing a webhook delivery, sending an event to
the subscribed workflows, pausing.

Runs are started through `orchestration.transitions.start_run` inside this module's own
transaction, so a slot is marked fired exactly when its run exists: a crash between the two
rolls both back and the next tick fires the slot again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from orchestration import limits, templating
from orchestration import transitions as core
from orchestration.models import Run, Workflow, WorkflowVersion
from orchestration.triggers.models import (
    Firing,
    FiringOutcome,
    SeenSignature,
    Trigger,
    TriggerEvent,
    TriggerKind,
)

logger = logging.getLogger("baton.triggers")

BATCH = 100
# A slot this late is still "on time" (the ticker runs every BATON_TICK_SECONDS); older ones
# were missed while Baton was down and are governed by `catch_up`.
ON_TIME = timedelta(seconds=60)


# ---------------------------------------------------------------------------------------------
# Schedules


def zone_of(trigger: Trigger) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(trigger.timezone or settings.TIME_ZONE)


def next_slot(trigger: Trigger, after: datetime) -> datetime:
    """The first slot strictly after `after`, in UTC."""
    local = after.astimezone(zone_of(trigger))
    found: datetime = croniter(trigger.cron, local).get_next(datetime)
    return found.astimezone(UTC)


def due_slots(trigger: Trigger, now: datetime, *, keep: int) -> tuple[list[datetime], int]:
    """Slots from `next_fire_at` up to `now`, newest last: at most `keep` of them, and how many
    there were in all (counted up to a bound, so a trigger asleep for years costs nothing)."""
    assert trigger.next_fire_at is not None
    local = croniter(trigger.cron, now.astimezone(zone_of(trigger)) + timedelta(microseconds=1))
    slots: list[datetime] = []
    total = 0
    while total < 100_000:
        slot = local.get_prev(datetime).astimezone(UTC)
        if slot < trigger.next_fire_at:
            break
        total += 1
        if len(slots) < keep:
            slots.append(slot)
    return sorted(slots), total


def sync_version(version: WorkflowVersion, now: datetime | None = None) -> None:
    """Bring the workflow's Trigger rows in line with the version just published (called by
    `orchestration.definitions` inside the publishing transaction, so the two never disagree).

    A row that stays the same schedule (same position, expression and zone) keeps its next fire
    time and its paused flag; a new or changed schedule fires first at its next slot after now,
    never for slots before it was published.
    """
    _replace_rows(version, version.spec.get("triggers") or [], now or timezone.now())


def _replace_rows(version: WorkflowVersion, wanted: list[dict[str, Any]], now: datetime) -> None:
    old = {
        row.position: row
        for row in Trigger.objects.select_for_update().filter(workflow_id=version.workflow_id)
    }
    for position, spec in enumerate(wanted):
        kind: str = next(kind for kind in ("cron", "webhook", "event") if kind in spec)
        fields: dict[str, Any] = {
            "version": version,
            "kind": kind,
            "cron": spec.get("cron", ""),
            "timezone": spec.get("timezone", ""),
            "catch_up": spec.get("catch_up", 1),
            "event_name": spec.get("event", ""),
            "secret_env": (spec.get("webhook") or {}).get("secret_env", ""),
            "input": spec.get("input"),
        }
        row = old.pop(position, None)
        same_schedule = (
            row is not None
            and row.kind == kind
            and (row.cron, row.timezone) == (fields["cron"], fields["timezone"])
        )
        if row is None:
            row = Trigger(workflow_id=version.workflow_id, position=position)
        for name, value in fields.items():
            setattr(row, name, value)
        if kind == TriggerKind.CRON and not same_schedule:
            row.next_fire_at = next_slot(row, now)
        elif kind != TriggerKind.CRON:
            row.next_fire_at = None
        row.save()
    Trigger.objects.filter(pk__in=[row.pk for row in old.values()]).delete()


def fire_due(now: datetime | None = None) -> int:
    """Start the runs of every schedule whose slot has come; returns how many runs started."""
    now = now or timezone.now()
    started = 0
    due = Trigger.objects.filter(kind=TriggerKind.CRON, paused=False, next_fire_at__lte=now).values_list(
        "pk", flat=True
    )[:BATCH]
    for pk in list(due):
        try:
            started += _fire(pk, now)
        except (OperationalError, InterfaceError):
            raise  # the database is away: the ticker says so once
        except Exception:
            # One broken trigger must not hold the others back; it is tried again next tick.
            logger.exception("triggers: firing trigger %s failed", pk)
    return started


def _fire(pk: int, now: datetime) -> int:
    with transaction.atomic():
        # skip_locked: another worker's ticker is firing this one; it will move next_fire_at.
        trigger = (
            Trigger.objects.select_for_update(skip_locked=True)
            .select_related("workflow")
            .filter(pk=pk, paused=False, next_fire_at__lte=now)
            .first()
        )
        if trigger is None:
            return 0
        slots, total = due_slots(trigger, now, keep=trigger.catch_up + 2)
        on_time = [slot for slot in slots if now - slot <= ON_TIME]
        missed = total - len(on_time)
        caught_up = (
            [slot for slot in slots if slot not in on_time][-trigger.catch_up :] if trigger.catch_up else []
        )
        started = 0
        if missed > len(caught_up):
            first = trigger.next_fire_at
            Firing.objects.create(
                workflow=trigger.workflow,
                trigger=trigger,
                kind=TriggerKind.CRON,
                outcome=FiringOutcome.SKIPPED,
                detail=(
                    f"{missed - len(caught_up):,} slot(s) missed while Baton was down, from "
                    f"{first:%Y-%m-%d %H:%M} UTC; catch_up: {trigger.catch_up} started "
                    f"{len(caught_up)}"
                )[:500],
            )
        for slot in caught_up + on_time:
            started += _start_for_slot(trigger, slot)
        trigger.last_fired_at = now
        trigger.next_fire_at = next_slot(trigger, now)
        trigger.save(update_fields=["last_fired_at", "next_fire_at"])
    return started


def _start_for_slot(trigger: Trigger, slot: datetime) -> int:
    local = slot.astimezone(zone_of(trigger))
    try:
        with transaction.atomic():
            firing = Firing.objects.create(
                workflow=trigger.workflow,
                trigger=trigger,
                kind=TriggerKind.CRON,
                slot=slot,
                outcome=FiringOutcome.STARTED,
            )
    except IntegrityError:
        return 0  # fired already (by another ticker)
    try:
        with transaction.atomic():
            values = (
                templating.render(trigger.input, {"slot": local.isoformat()})
                if trigger.input is not None
                else None
            )
            run = core.start_run(workflow=trigger.workflow, input=values, trigger="cron")
    except (ValueError, LookupError, templating.TemplateError) as exc:
        firing.outcome, firing.detail = FiringOutcome.FAILED, str(exc)[:500]
        firing.save(update_fields=["outcome", "detail"])
        return 0
    firing.run = run
    firing.detail = f"slot {local:%Y-%m-%d %H:%M %Z}"
    firing.save(update_fields=["run", "detail"])
    return 1


def set_paused(*, trigger: Trigger, paused: bool, actor: Any = None, now: datetime | None = None) -> bool:
    """Pause or resume one trigger; a resumed schedule fires at its next slot, not the ones it
    slept through. Returns whether it changed (each change is a TriggerEvent)."""
    now = now or timezone.now()
    with transaction.atomic():
        row = Trigger.objects.select_for_update().get(pk=trigger.pk)
        changed = row.paused != paused
        row.paused = paused
        if changed and not paused and row.kind == TriggerKind.CRON:
            row.next_fire_at = next_slot(row, now)
        row.save(update_fields=["paused", "next_fire_at"])
        if changed:
            TriggerEvent.objects.create(
                workflow_id=row.workflow_id,
                trigger=row,
                kind=TriggerEvent.Kind.PAUSED if paused else TriggerEvent.Kind.RESUMED,
                actor=actor if getattr(actor, "is_authenticated", False) else None,
            )
    trigger.paused, trigger.next_fire_at = row.paused, row.next_fire_at
    return changed


def set_workflow_paused(*, workflow: Workflow, paused: bool, actor: Any = None) -> int:
    """Pause (or resume) every trigger of a workflow: a paused workflow starts no run by itself."""
    return sum(
        set_paused(trigger=row, paused=paused, actor=actor) for row in Trigger.objects.filter(workflow=workflow).order_by("position")
    )


def sweep(now: datetime) -> int:
    """The ticker's pass: due schedules fired, old replay records forgotten."""
    done = fire_due(now)
    SeenSignature.objects.filter(
        seen_at__lt=now - timedelta(seconds=settings.BATON_WEBHOOK_REPLAY_SECONDS)
    ).delete()
    return done


# ---------------------------------------------------------------------------------------------
# Webhooks


@dataclass
class Delivery:
    """What a webhook delivery came to: the HTTP status, an error code and words, the run."""

    status: int
    error: str = ""
    detail: str = ""
    run: Run | None = None


def _refuse(workflow: Workflow, trigger: Trigger | None, status: int, error: str, detail: str) -> Delivery:
    Firing.objects.create(
        workflow=workflow,
        trigger=trigger,
        kind=TriggerKind.WEBHOOK,
        outcome=FiringOutcome.REFUSED,
        detail=detail[:500],
    )
    return Delivery(status, error, detail)


def signature_of(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def accept_webhook(
    *, key: str, body: bytes, signature: str, timestamp: str, now: datetime | None = None
) -> Delivery:
    """Check one delivery to POST /hooks/<key> and start its run; every outcome is recorded
    (except for a workflow that has no webhook at all: nothing to record it on)."""
    now = now or timezone.now()
    trigger = (
        Trigger.objects.select_related("workflow").filter(workflow__key=key, kind=TriggerKind.WEBHOOK).first()
    )
    if trigger is None:
        return Delivery(404, "not_found", f"workflow {key!r} has no webhook trigger")
    workflow = trigger.workflow
    if trigger.paused:
        return _refuse(workflow, trigger, 409, "paused", "the webhook trigger is paused")
    secret = os.environ.get(trigger.secret_env, "")
    if not secret:
        return _refuse(
            workflow, trigger, 503, "not_configured", f"the server has no secret in {trigger.secret_env}"
        )
    given = signature.strip().removeprefix("sha256=")
    if not given:
        return _refuse(workflow, trigger, 401, "unauthorized", "the X-Baton-Signature header is missing")
    if not hmac.compare_digest(given.lower(), signature_of(secret, body)):
        return _refuse(workflow, trigger, 401, "unauthorized", "the signature does not match the body")
    try:
        sent_at = datetime.fromtimestamp(int(timestamp.strip()), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return _refuse(
            workflow,
            trigger,
            401,
            "unauthorized",
            "the X-Baton-Timestamp header is missing or not a Unix time",
        )
    if abs((now - sent_at).total_seconds()) > settings.BATON_WEBHOOK_TOLERANCE_SECONDS:
        return _refuse(
            workflow,
            trigger,
            401,
            "unauthorized",
            f"the timestamp is {abs((now - sent_at).total_seconds()):,.0f} s from the server's clock; "
            f"at most {settings.BATON_WEBHOOK_TOLERANCE_SECONDS} s is accepted",
        )
    try:
        payload = limits.load_json(body.decode("utf-8"), field="body")
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        return _refuse(workflow, trigger, 400, "invalid_body", f"the body is not JSON ({type(exc).__name__})")
    with transaction.atomic():
        try:
            with transaction.atomic():
                SeenSignature.objects.create(signature=given.lower(), seen_at=now)
        except IntegrityError:
            return _refuse(
                workflow,
                trigger,
                401,
                "replayed",
                "this delivery was accepted before (same signature): a replay",
            )
        try:
            with transaction.atomic():
                values = (
                    templating.render(trigger.input, {"body": payload})
                    if trigger.input is not None
                    else payload
                )
                run = core.start_run(workflow=workflow, input=values, trigger="webhook")
        except (ValueError, LookupError, templating.TemplateError) as exc:
            Firing.objects.create(
                workflow=workflow,
                trigger=trigger,
                kind=TriggerKind.WEBHOOK,
                outcome=FiringOutcome.FAILED,
                detail=str(exc)[:500],
            )
            return Delivery(422, "invalid_input", str(exc))
        Firing.objects.create(
            workflow=workflow,
            trigger=trigger,
            kind=TriggerKind.WEBHOOK,
            outcome=FiringOutcome.STARTED,
            run=run,
        )
    return Delivery(202, run=run)


# ---------------------------------------------------------------------------------------------
# Events


@dataclass
class EventOutcome:
    """What POST /api/events did: the event row, the runs it started (run, workflow key), the
    steps it resumed (run id, step key), the workflows whose input it did not fit (key, why),
    and whether it was kept for a step not waiting yet."""

    event: Any
    started: list[tuple[Run, str]]
    resumed: list[tuple[int, str]]
    failed: list[tuple[str, str]]
    kept: bool


def send_event(*, name: str, key: str = "", payload: Any = None, actor: Any = None) -> EventOutcome:
    """Resume the steps waiting for the event and start the workflows subscribed to it, each
    only where `actor` may operate the workflow (others are left as if nothing came)."""
    from orchestration import access

    delivered = core.deliver_event(
        name=name,
        key=key,
        payload=payload,
        actor=actor,
        may_resume=lambda run: access.can_operate_run(actor, run),
    )
    started: list[tuple[Run, str]] = []
    failed: list[tuple[str, str]] = []
    context = {"event": {"name": name, "key": key, "payload": payload}}
    subscribed = Trigger.objects.filter(kind=TriggerKind.EVENT, event_name=name, paused=False).select_related(
        "workflow"
    )
    for trigger in subscribed.order_by("workflow__key", "position")[:BATCH]:
        workflow = trigger.workflow
        if not access.can_operate(actor, workflow):
            continue
        try:
            with transaction.atomic():
                values = templating.render(trigger.input, context) if trigger.input is not None else payload
                run = core.start_run(workflow=workflow, input=values, started_by=actor, trigger="event")
                Firing.objects.create(
                    workflow=workflow,
                    trigger=trigger,
                    kind=TriggerKind.EVENT,
                    outcome=FiringOutcome.STARTED,
                    run=run,
                    detail=f"event {name}" + (f" key {key}" if key else ""),
                )
        except (ValueError, LookupError, templating.TemplateError) as exc:
            Firing.objects.create(
                workflow=workflow,
                trigger=trigger,
                kind=TriggerKind.EVENT,
                outcome=FiringOutcome.FAILED,
                detail=str(exc)[:500],
            )
            failed.append((workflow.key, str(exc)))
            continue
        started.append((run, workflow.key))
    return EventOutcome(delivered.event, started, delivered.resumed, failed, delivered.kept)
