"""Alerts: rules people write in the admin, the alerts the ticker fires from them, their audit
and the notifications they send.

Models are declarative. An `AlertRule` is configuration (edited in Django admin by superusers;
`clean` names the field of every bad value). An `Alert` is one rule's finding about one subject
(a run, a workflow, an agent, an inbox item, a schedule, a rollout's drift), open while the
condition holds: at most one open alert per rule and subject (a unique constraint), so two
tickers never fire it twice. Every change of an alert goes through
orchestration/alerts/transitions.py and appends an `AlertEvent`. A `Delivery` is one email
address or webhook URL to tell, with its attempts; orchestration/alerts/deliveries.py sends it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from orchestration import outbound
from orchestration.models import Agent, AppendOnly, Run, Workflow


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class RuleKind(models.TextChoices):
    RUN_DURATION = "run_duration", "A run takes longer than a threshold"
    FAILURE_RATE = "failure_rate", "Failure rate over a threshold in a window"
    RUN_FAILED = "run_failed", "A run failed"
    APPROVAL_OVERDUE = "approval_overdue", "An approval is overdue"
    CIRCUIT_OPEN = "circuit_open", "An agent's circuit opened"
    SCHEDULE_MISSED = "schedule_missed", "A schedule did not start a run when it should have"
    ROLLOUT_DRIFT = "rollout_drift", "A rollout drifts"


# Limits on what the admin form accepts (every input has one).
MAX_WEBHOOKS = 5
MAX_URL_LENGTH = 500
MAX_SECONDS = 90 * 86400

# Which kinds may name an agent, which need a threshold, which a window.
AGENT_KINDS = frozenset({RuleKind.FAILURE_RATE, RuleKind.CIRCUIT_OPEN})
WORKFLOW_KINDS = frozenset(set(RuleKind) - {RuleKind.CIRCUIT_OPEN})
THRESHOLD_KINDS = frozenset({RuleKind.RUN_DURATION, RuleKind.APPROVAL_OVERDUE, RuleKind.SCHEDULE_MISSED})
WINDOW_KINDS = frozenset({RuleKind.FAILURE_RATE, RuleKind.RUN_FAILED})
DEFAULT_WINDOW = {RuleKind.FAILURE_RATE: 3600, RuleKind.RUN_FAILED: 86400}
# A schedule's slot this late, unfired, is missed (the ticker fires slots within a second).
DEFAULT_GRACE_SECONDS = 300


def webhook_problems(text: str) -> list[str]:
    """What is wrong with the webhook list (one URL a line); empty when it is fine.

    Checked against BATON_HTTP_ALLOWED_HOSTS here, so a URL the outbound client will refuse is
    a field error at once; the addresses a name resolves to are checked at each send.
    """
    urls = webhook_urls(text)
    problems: list[str] = []
    if len(urls) > MAX_WEBHOOKS:
        problems.append(f"at most {MAX_WEBHOOKS} webhook URLs, not {len(urls)}")
    allowed = None
    for url in urls:
        shown = url if len(url) <= 60 else url[:60] + "…"
        if len(url) > MAX_URL_LENGTH:
            problems.append(f"{shown}: longer than {MAX_URL_LENGTH} characters")
            continue
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            problems.append(f"{shown}: not a URL")
            continue
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"{shown}: must be an http or https URL with a host")
            continue
        try:
            allowed = allowed or outbound.allow_list()
        except outbound.OutboundRefused as exc:
            problems.append(str(exc))
            break
        if not allowed.allows_host(parts.hostname, port):
            problems.append(f"{parts.hostname}:{port} is not on BATON_HTTP_ALLOWED_HOSTS")
    return problems


def webhook_urls(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class AlertRule(models.Model):
    """When to fire an alert, how serious it is and whom to tell.

    What an alert says is written by Baton (orchestration/alerts/conditions.py), never a template
    of the rule's: editing rules is configuration, not a way to run code on the workers.
    """

    name = models.CharField(max_length=120, unique=True)
    kind = models.CharField(max_length=30, choices=RuleKind.choices)
    enabled = models.BooleanField(default=True)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    workflow = models.ForeignKey(
        Workflow,
        null=True,
        blank=True,
        related_name="alert_rules",
        on_delete=models.CASCADE,
        help_text="Empty: every workflow (each one on its own).",
    )
    agent = models.ForeignKey(
        Agent,
        null=True,
        blank=True,
        related_name="alert_rules",
        on_delete=models.CASCADE,
        help_text="Failure rate and circuit rules only. Empty circuit rule: every agent.",
    )
    threshold_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Run duration: how long a run may take. Approval overdue: how long an item may wait "
            "(empty: only items past their deadline or escalated). Schedule: how late a slot may be "
            f"(empty: {DEFAULT_GRACE_SECONDS} s)."
        ),
    )
    failure_percent = models.FloatField(
        null=True, blank=True, help_text="Failure rate: fires above this share of failures, in percent."
    )
    window_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Failure rate: the window counted (empty: 1 hour). Run failed: how recent a failure (empty: 24 hours).",
    )
    min_count = models.PositiveIntegerField(
        default=5, help_text="Failure rate: fewer finished runs (or attempts) than this in the window say nothing."
    )
    users = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="alert_rules")
    groups = models.ManyToManyField(Group, blank=True, related_name="alert_rules")
    webhooks = models.TextField(
        blank=True,
        help_text=(
            "One URL a line, sent a Slack-compatible JSON body {\"text\": ...}. Hosts must be on "
            "BATON_HTTP_ALLOWED_HOSTS. Pages show only their host: a webhook URL is a secret."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def webhook_list(self) -> list[str]:
        return webhook_urls(self.webhooks)

    @property
    def window(self) -> int:
        return self.window_seconds or DEFAULT_WINDOW.get(RuleKind(self.kind), 3600)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        kind = self.kind
        if self.agent_id is not None and kind not in AGENT_KINDS:
            errors["agent"] = "Only failure-rate and circuit rules name an agent."
        if self.workflow_id is not None and kind not in WORKFLOW_KINDS:
            errors["workflow"] = "A circuit rule is about agents: name an agent, or none for every agent."
        if kind == RuleKind.FAILURE_RATE and self.workflow_id is not None and self.agent_id is not None:
            errors["agent"] = "A failure rate is per workflow or per agent, not both."
        if kind == RuleKind.RUN_DURATION and not self.threshold_seconds:
            errors["threshold_seconds"] = "Say how long a run may take, in seconds."
        if self.threshold_seconds is not None and kind not in THRESHOLD_KINDS:
            errors["threshold_seconds"] = "Only duration, approval and schedule rules have a threshold."
        if self.threshold_seconds is not None and self.threshold_seconds > MAX_SECONDS:
            errors["threshold_seconds"] = f"At most {MAX_SECONDS} seconds (90 days)."
        if self.window_seconds is not None and kind not in WINDOW_KINDS:
            errors["window_seconds"] = "Only failure-rate and run-failed rules have a window."
        elif self.window_seconds is not None and not 60 <= self.window_seconds <= MAX_SECONDS:
            errors["window_seconds"] = f"Between 60 and {MAX_SECONDS} seconds."
        if kind == RuleKind.FAILURE_RATE:
            if self.failure_percent is None:
                errors["failure_percent"] = "Say above which share of failures it fires, in percent."
            elif not 0 <= self.failure_percent < 100:
                errors["failure_percent"] = "A percentage from 0 up to (not including) 100."
            if not 1 <= self.min_count <= 100_000:
                errors["min_count"] = "Between 1 and 100,000."
        elif self.failure_percent is not None:
            errors["failure_percent"] = "Only failure-rate rules have a percentage."
        problems = webhook_problems(self.webhooks)
        if problems:
            errors["webhooks"] = "; ".join(problems)
        if errors:
            raise ValidationError(errors)


class AlertStatus(models.TextChoices):
    FIRING = "firing", "Firing"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"  # still firing; someone is on it
    RESOLVED = "resolved", "Resolved"


ALERT_OPEN = frozenset({AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED})
OPEN_Q = Q(status__in=[AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED])


class Alert(models.Model):
    rule = models.ForeignKey(AlertRule, related_name="alerts", on_delete=models.CASCADE)
    # What the alert is about, as "<kind>:<id>" (run:42, workflow:7, agent:3, item:5, ...): the
    # key of "one open alert per rule and subject".
    subject = models.CharField(max_length=100)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    status = models.CharField(max_length=20, choices=AlertStatus.choices, default=AlertStatus.FIRING)
    title = models.CharField(max_length=300)
    detail = models.TextField(blank=True)
    # Who sees the alert: whoever sees this workflow (orchestration/access.py); none (an
    # agent's alert): superusers and the rule's recipients.
    workflow = models.ForeignKey(Workflow, null=True, blank=True, related_name="+", on_delete=models.CASCADE)
    run = models.ForeignKey(Run, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)
    agent = models.ForeignKey(Agent, null=True, blank=True, related_name="+", on_delete=models.CASCADE)
    # Where the subject is looked at (a run's page, an inbox item, a rollout), site-relative.
    link = models.CharField(max_length=200, blank=True)
    fired_at = models.DateTimeField()
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL
    )
    acknowledge_note = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-fired_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "subject"], condition=OPEN_Q, name="one_open_alert_per_subject")
        ]
        indexes = [models.Index(fields=["status", "-fired_at"], name="alert_status_time_idx")]

    def __str__(self) -> str:
        return f"{self.get_severity_display()}: {self.title}"

    @property
    def is_open(self) -> bool:
        return self.status in ALERT_OPEN


class AlertEventKind(models.TextChoices):
    FIRED = "fired", "Fired"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"
    DELIVERED = "delivered", "Notification sent"
    DELIVERY_FAILED = "delivery_failed", "Notification failed"


class AlertEvent(AppendOnly):
    """Append-only audit of an alert: fired, acknowledged (who, note), resolved, each delivery."""

    alert = models.ForeignKey(Alert, related_name="events", on_delete=models.CASCADE)
    kind = models.CharField(max_length=20, choices=AlertEventKind.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)
    note = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["alert", "id"]

    def __str__(self) -> str:
        return f"{self.kind} ({self.alert_id})"


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Waiting to be sent"  # also between retries (attempts > 0)
    SENDING = "sending", "Being sent"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed for good"


class Delivery(models.Model):
    """One notification to one address or URL, about an alert firing or resolving."""

    alert = models.ForeignKey(Alert, related_name="deliveries", on_delete=models.CASCADE)
    # What it tells: the alert fired, or it resolved.
    about = models.CharField(max_length=20, choices=[("fired", "Fired"), ("resolved", "Resolved")])
    channel = models.CharField(max_length=10, choices=Channel.choices)
    # An email address, or a webhook URL (a secret: shown as its host only, see `shown_target`).
    target = models.CharField(max_length=MAX_URL_LENGTH)
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # When a task message was last sent for it (the sweep sends one for a due retry, and again
    # for a message the broker lost); when a worker took it.
    queued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["alert", "id"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due_idx")]

    def __str__(self) -> str:
        return f"{self.channel} to {self.shown_target}: {self.status}"

    @property
    def shown_target(self) -> str:
        if self.channel == Channel.EMAIL:
            return self.target
        try:
            host = urlsplit(self.target).hostname or "?"
        except ValueError:
            host = "?"
        return f"webhook at {host}"

    @property
    def failing(self) -> bool:
        """Failed for good, or waiting to be retried after a failure."""
        return self.status == DeliveryStatus.FAILED or (self.status == DeliveryStatus.PENDING and bool(self.last_error))


