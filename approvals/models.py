"""The approvals inbox: items people decide (approvals, gates, manual tasks, exceptions).

Models are declarative; every change goes through approvals/transitions.py, which writes an
ItemEvent in the same transaction.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q

from orchestration.models import AppendOnly
from orchestration.status import Risk


class ItemKind(models.TextChoices):
    APPROVAL = "approval", "Approval"
    GATE = "gate", "Gate on an action"
    MANUAL = "manual", "Manual task"
    EXCEPTION = "exception", "Exception"


class ItemStatus(models.TextChoices):
    PENDING = "pending", "Waiting"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    SUBMITTED = "submitted", "Submitted"  # a manual task's form was sent
    RESOLVED = "resolved", "Resolved"  # an exception was retried, skipped or aborted
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"  # the run stopped for another reason


ITEM_OPEN = frozenset({ItemStatus.PENDING})


class Decision(models.TextChoices):
    """What closed an item (Item.decision), and a person's vote (Vote.decision: approve or reject)."""

    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"
    SUBMIT = "submit", "Submit"  # a manual task's form
    RETRY = "retry", "Retry"  # an exception's three ways out: retry, skip, abort
    SKIP = "skip", "Skip"
    ABORT = "abort", "Abort"
    TIMEOUT = "timeout", "Timed out"


VOTES = [(d.value, d.label) for d in (Decision.APPROVE, Decision.REJECT)]


class OnTimeout(models.TextChoices):
    """What an item's deadline does (approvals and gates: reject, approve, escalate; manual
    tasks: fail, escalate)."""

    REJECT = "reject", "Reject"
    APPROVE = "approve", "Approve"
    ESCALATE = "escalate", "Escalate"
    FAIL = "fail", "Fail the step"


class OnReject(models.TextChoices):
    FAIL = "fail", "Fail the step"
    CONTINUE = "continue", "Continue the run"


class Item(models.Model):
    kind = models.CharField(max_length=20, choices=ItemKind.choices)
    status = models.CharField(max_length=20, choices=ItemStatus.choices, default=ItemStatus.PENDING)
    step_run = models.ForeignKey(
        "orchestration.StepRun", related_name="inbox_items", on_delete=models.CASCADE
    )
    run = models.ForeignKey("orchestration.Run", related_name="inbox_items", on_delete=models.CASCADE)
    title = models.CharField(max_length=300)
    details = models.TextField(blank=True)
    # What will happen: a gate's rendered action input, an approval's step input, an exception's
    # failing input and error. Agent data: always escaped when shown.
    action = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # Manual tasks: the form schema ({name: {type, required, ...}}) and what was submitted.
    form = models.JSONField(default=dict, blank=True)
    submitted = models.JSONField(null=True, blank=True)
    # Who may decide: these users, plus members of these groups (admins always may).
    users = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="assigned_items", blank=True)
    groups = models.ManyToManyField(Group, related_name="assigned_items", blank=True)
    required = models.PositiveIntegerField(default=1)  # N-of-M distinct approvals
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL
    )
    allow_self_approval = models.BooleanField(default=False)
    risk = models.CharField(max_length=10, choices=Risk.choices, default=Risk.LOW)
    deadline = models.DateTimeField(null=True, blank=True)
    remind_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)
    on_timeout = models.CharField(max_length=20, choices=OnTimeout.choices, default=OnTimeout.REJECT)
    escalate_to = models.JSONField(default=dict, blank=True)  # {users: [...], groups: [...]}
    escalations = models.PositiveIntegerField(default=0)
    on_reject = models.CharField(max_length=20, choices=OnReject.choices, default=OnReject.FAIL)
    decision = models.CharField(max_length=20, choices=Decision.choices, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deadline", "id"]
        constraints = [
            # One open item per waiting step: a duplicate would mean two decisions.
            models.UniqueConstraint(
                fields=["step_run", "kind"], condition=Q(status="pending"), name="one_open_item_per_step"
            )
        ]
        indexes = [
            # The ticker's scans: open items past their reminder time or deadline.
            models.Index(fields=["status", "deadline"], name="item_deadline_idx"),
            models.Index(fields=["status", "remind_at"], name="item_remind_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.title}"

    @property
    def is_open(self) -> bool:
        return self.status in ITEM_OPEN


class Vote(models.Model):
    """One person's approve/reject on an item; N-of-M counts distinct approvers."""

    item = models.ForeignKey(Item, related_name="votes", on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, related_name="+", on_delete=models.CASCADE)
    decision = models.CharField(max_length=20, choices=VOTES)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["item", "id"]
        constraints = [models.UniqueConstraint(fields=["item", "user"], name="one_vote_per_person")]

    def __str__(self) -> str:
        return f"{self.user} {self.decision}s item {self.item_id}"


class ItemEventKind(models.TextChoices):
    CREATED = "created", "Created"
    ASSIGNED = "assigned", "Assigned"
    VOTED = "voted", "Voted"
    DECIDED = "decided", "Decided"
    SUBMITTED = "submitted", "Submitted"
    REASSIGNED = "reassigned", "Reassigned"
    REMINDED = "reminded", "Reminder sent"
    ESCALATED = "escalated", "Escalated"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"
    RESOLVED = "resolved", "Resolved"
    NOTIFIED = "notified", "Email sent"


class ItemEvent(AppendOnly):
    """Append-only audit trail of an item, written in the transaction of each change."""

    item = models.ForeignKey(Item, related_name="events", on_delete=models.CASCADE)
    kind = models.CharField(max_length=20, choices=ItemEventKind.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL
    )
    note = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["item", "id"]

    def __str__(self) -> str:
        return f"{self.kind} on item {self.item_id}"


class ApiToken(models.Model):
    """A personal API token; only its hash is stored, the token is shown once. Deleting the row
    revokes it; past `expires_at` it is refused like an unknown one."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, related_name="api_tokens", on_delete=models.CASCADE)
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, db_index=True)  # shown in admin to tell tokens apart
    key_hash = models.CharField(max_length=128, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")

    class Meta:
        ordering = ["user", "-created_at"]

    def __str__(self) -> str:
        return f"{self.user} {self.prefix}…"
