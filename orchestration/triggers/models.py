"""What starts runs besides people: cron schedules, webhooks and named events.

A workflow's triggers are written in its file (`triggers:`) and published with its versions;
`Trigger` rows are this app's working copy of the latest published version's list, kept in step
inside the publishing transaction (`transitions.sync_version`, an `orchestration.definitions`
publish hook), with what a version cannot hold: the next fire time and whether it is paused.
`Firing` rows are the history: every schedule slot started, skipped or refused and every webhook
delivery or event start accepted or refused, with why; `TriggerEvent` rows say who paused or
resumed a trigger.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from orchestration.models import Run, Workflow, WorkflowVersion


class TriggerKind(models.TextChoices):
    CRON = "cron", "Schedule"
    WEBHOOK = "webhook", "Webhook"
    EVENT = "event", "Event"


class Trigger(models.Model):
    workflow = models.ForeignKey(Workflow, related_name="trigger_rows", on_delete=models.CASCADE)
    # The published version this row was read from; a newer version replaces the rows.
    version = models.ForeignKey(WorkflowVersion, related_name="+", on_delete=models.CASCADE)
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=10, choices=TriggerKind.choices)
    cron = models.CharField(max_length=200, blank=True)
    timezone = models.CharField(max_length=60, blank=True, help_text="Empty: the server's TIME_ZONE.")
    catch_up = models.PositiveSmallIntegerField(default=1)
    event_name = models.CharField(max_length=100, blank=True)
    # The name of the environment variable that holds the webhook's secret; never the secret.
    secret_env = models.CharField(max_length=100, blank=True)
    input = models.JSONField(null=True, blank=True)
    paused = models.BooleanField(
        default=False, help_text="A paused trigger starts nothing; its missed slots are skipped."
    )
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["workflow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "position"], name="trigger_position_unique")
        ]
        indexes = [models.Index(fields=["kind", "next_fire_at"], name="trigger_due_idx")]

    def __str__(self) -> str:
        return f"{self.workflow.key}: {self.describe()}"

    def describe(self) -> str:
        if self.kind == TriggerKind.CRON:
            return f"schedule {self.cron}" + (f" ({self.timezone})" if self.timezone else "")
        if self.kind == TriggerKind.WEBHOOK:
            return f"webhook POST /hooks/{self.workflow.key}"
        return f"event {self.event_name}"


class FiringOutcome(models.TextChoices):
    STARTED = "started", "Started a run"
    SKIPPED = "skipped", "Skipped"
    REFUSED = "refused", "Refused"
    FAILED = "failed", "Could not start"


class Firing(models.Model):
    """One cron slot or one webhook delivery, and what came of it (append-only)."""

    workflow = models.ForeignKey(Workflow, related_name="firings", on_delete=models.CASCADE)
    trigger = models.ForeignKey(
        Trigger, null=True, blank=True, related_name="firings", on_delete=models.SET_NULL
    )
    kind = models.CharField(max_length=10, choices=TriggerKind.choices)
    # A cron slot (in UTC); unique per trigger, so two tickers never fire one slot twice.
    slot = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=FiringOutcome.choices)
    detail = models.CharField(max_length=500, blank=True)
    run = models.OneToOneField(Run, null=True, blank=True, related_name="firing", on_delete=models.SET_NULL)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-id"]
        constraints = [models.UniqueConstraint(fields=["trigger", "slot"], name="firing_slot_once")]
        indexes = [models.Index(fields=["workflow", "-at"], name="firing_workflow_time_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.get_outcome_display().lower()} at {self.at:%Y-%m-%d %H:%M}"


class TriggerEvent(models.Model):
    """Who paused or resumed a trigger, and when (append-only)."""

    class Kind(models.TextChoices):
        PAUSED = "paused", "Paused"
        RESUMED = "resumed", "Resumed"

    workflow = models.ForeignKey(Workflow, related_name="trigger_events", on_delete=models.CASCADE)
    trigger = models.ForeignKey(Trigger, null=True, blank=True, related_name="events", on_delete=models.SET_NULL)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.trigger_id} at {self.at:%Y-%m-%d %H:%M}"


class SeenSignature(models.Model):
    """Webhook signatures already accepted: the same delivery sent again is refused as a replay."""

    signature = models.CharField(max_length=64, unique=True)
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.signature[:12]}… seen {self.seen_at:%Y-%m-%d %H:%M}"
