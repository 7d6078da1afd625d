"""Rollouts: how a team adopts a workflow (pilot -> standardize -> expand -> scaled), the
numbers that say when it may go on, and the daily snapshots those numbers come from.

Models are declarative: stage changes and every other write live in
orchestration/rollouts/transitions.py, each appending a RolloutEvent; the figures are computed
in orchestration/rollouts/metrics.py.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from orchestration.models import AgentVersion, AppendOnly, Run, Workflow, WorkflowVersion


class Stage(models.TextChoices):
    PILOT = "pilot", "Pilot"
    STANDARDIZE = "standardize", "Standardize"
    EXPAND = "expand", "Expand"
    SCALED = "scaled", "Scaled"
    PAUSED = "paused", "Paused"
    ROLLED_BACK = "rolled_back", "Rolled back"


# Where "promote" leads from each stage; the stages not here cannot be promoted.
NEXT_STAGE = {Stage.PILOT: Stage.STANDARDIZE, Stage.STANDARDIZE: Stage.EXPAND, Stage.EXPAND: Stage.SCALED}
ACTIVE_STAGES = frozenset({Stage.PILOT, Stage.STANDARDIZE, Stage.EXPAND, Stage.SCALED})


class Metric(models.TextChoices):
    """What a success criterion measures, over the runs of the workflow started in its window."""

    SUCCESS_RATE = "success_rate", "Success rate"  # succeeded / finished runs
    P95_DURATION = "p95_duration", "p95 run duration"  # seconds, finished runs
    # (approvals rejected + manual tasks + exceptions) / runs
    INTERVENTION_RATE = "intervention_rate", "Human intervention rate"
    APPROVAL_WAIT = "approval_wait", "Median approval wait"  # seconds, decided approvals
    RETRIES_PER_RUN = "retries_per_run", "Retries per run"
    LOOPS_PER_RUN = "loops_per_run", "Loop iterations per run"
    COST_PER_RUN = "cost_per_run", "Cost per run"
    RUNS = "runs", "Number of runs"  # finished runs


class Comparison(models.TextChoices):
    AT_LEAST = "gte", "at least"
    AT_MOST = "lte", "at most"


class Rollout(models.Model):
    """The rollout of one workflow."""

    workflow = models.OneToOneField(Workflow, related_name="rollout", on_delete=models.CASCADE)
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.PILOT)
    # While paused: the stage a resume returns to.
    paused_from = models.CharField(max_length=20, choices=Stage.choices, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)
    started_on = models.DateField()
    success_metric = models.TextField(blank=True, help_text="In words: what this workflow must achieve.")
    rollback_conditions = models.TextField(blank=True, help_text="In words: when to roll it back.")
    # Drift: a metric of the last 7 days worse than the 7 before by more than this share.
    drift_margin = models.FloatField(default=0.2)
    # When the gate was last evaluated (on demand or by the daily pass) and its verdict.
    gate_checked_at = models.DateTimeField(null=True, blank=True)
    gate_passed = models.BooleanField(null=True, blank=True)
    # That check's verdicts (gates.Gate.as_data()), which the rollouts list shows as marks.
    gate_verdicts = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["workflow__name"]

    def __str__(self) -> str:
        return f"rollout of {self.workflow.key}"


class Window(models.Model):
    """One window of the rollout plan (by default the playbook's four, days 1-30)."""

    rollout = models.ForeignKey(Rollout, related_name="windows", on_delete=models.CASCADE)
    position = models.PositiveIntegerField(default=0)
    first_day = models.PositiveIntegerField()
    last_day = models.PositiveIntegerField()
    role = models.CharField(max_length=100, help_text="Who owns this window, by role.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)
    focus = models.TextField()
    expected_output = models.TextField()
    due_on = models.DateField()
    done = models.BooleanField(default=False)
    done_at = models.DateTimeField(null=True, blank=True)
    done_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)

    class Meta:
        ordering = ["rollout", "position", "id"]

    def __str__(self) -> str:
        return f"days {self.first_day}-{self.last_day}: {self.role}"


class ChecklistItem(models.Model):
    """One point of the execution checklist, reviewed weekly."""

    rollout = models.ForeignKey(Rollout, related_name="checklist", on_delete=models.CASCADE)
    position = models.PositiveIntegerField(default=0)
    text = models.TextField()
    done = models.BooleanField(default=False)
    done_at = models.DateTimeField(null=True, blank=True)
    done_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)

    class Meta:
        ordering = ["rollout", "position", "id"]

    def __str__(self) -> str:
        return self.text[:60]


class NoteKind(models.TextChoices):
    ISSUE = "issue", "Issue"
    REVIEW = "review", "Reviewer note"


class Note(models.Model):
    """An entry of the issue log or a reviewer's note, with the runs it is about."""

    rollout = models.ForeignKey(Rollout, related_name="notes", on_delete=models.CASCADE)
    kind = models.CharField(max_length=20, choices=NoteKind.choices)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)
    text = models.TextField()
    runs = models.ManyToManyField(Run, blank=True, related_name="rollout_notes")
    # Issues are resolved; reviewer notes are not.
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["rollout", "-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.text[:60]}"


class Criterion(models.Model):
    """A success criterion: `metric` `comparison` `target` over the last `window_days` days."""

    rollout = models.ForeignKey(Rollout, related_name="criteria", on_delete=models.CASCADE)
    position = models.PositiveIntegerField(default=0)
    metric = models.CharField(max_length=30, choices=Metric.choices)
    comparison = models.CharField(max_length=3, choices=Comparison.choices)
    target = models.FloatField()
    window_days = models.PositiveIntegerField(default=7)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["rollout", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["rollout", "metric"], name="criterion_metric_unique")]

    def __str__(self) -> str:
        return f"{self.get_metric_display()} {self.get_comparison_display()} {self.target:g}"


class RolloutEventKind(models.TextChoices):
    CREATED = "created", "Rollout started"
    PROMOTED = "promoted", "Promoted"
    OVERRIDDEN = "overridden", "Promoted by override"
    PAUSED = "paused", "Paused"
    RESUMED = "resumed", "Resumed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    RESTARTED = "restarted", "Pilot restarted"
    PROMOTION_REFUSED = "promotion_refused", "Promotion refused"
    GATE_CHECKED = "gate_checked", "Gate checked"
    WINDOW_DONE = "window_done", "Window done"
    WINDOW_REOPENED = "window_reopened", "Window reopened"
    CHECKLIST_DONE = "checklist_done", "Checklist point done"
    CHECKLIST_REOPENED = "checklist_reopened", "Checklist point reopened"
    CRITERION_CHANGED = "criterion_changed", "Criterion changed"
    NOTE_ADDED = "note_added", "Note added"
    ISSUE_RESOLVED = "issue_resolved", "Issue resolved"
    WEIGHTS_CHANGED = "weights_changed", "Agent version weights changed"
    DRIFT_DETECTED = "drift_detected", "Drift detected"
    DRIFT_CLEARED = "drift_cleared", "Drift cleared"


class RolloutEvent(AppendOnly):
    """Append-only audit of a rollout: every stage change, override, decision and signal."""

    rollout = models.ForeignKey(Rollout, related_name="events", on_delete=models.CASCADE)
    kind = models.CharField(max_length=30, choices=RolloutEventKind.choices)
    from_stage = models.CharField(max_length=20, blank=True)
    to_stage = models.CharField(max_length=20, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)
    reason = models.TextField(blank=True)
    # The gate's verdicts at the time (promotions, refusals, overrides), a drift's figures, ...
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["rollout", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} ({self.rollout_id})"


class Drift(models.Model):
    """A metric of the last 7 days worse than over the 7 days before by more than the margin.

    Open while it lasts (cleared_at NULL); the daily pass opens and clears them.
    """

    rollout = models.ForeignKey(Rollout, related_name="drifts", on_delete=models.CASCADE)
    metric = models.CharField(max_length=30, choices=Metric.choices)
    recent = models.FloatField()
    previous = models.FloatField()
    recent_runs = models.PositiveIntegerField(default=0)
    previous_runs = models.PositiveIntegerField(default=0)
    detected_at = models.DateTimeField()
    cleared_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["rollout", "-detected_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rollout", "metric"], condition=models.Q(cleared_at__isnull=True), name="one_open_drift_per_metric"
            )
        ]

    def __str__(self) -> str:
        return f"drift of {self.metric} ({self.rollout_id})"


class Figures(models.Model):
    """The figures of one day (in TIME_ZONE) about the runs *started* that day.

    Every figure of day D is about the same runs (D's cohort), so per-run rates are
    consistent; a run that finishes on a later day changes its start day's figures, which the
    ticker recomputes (orchestration/rollouts/metrics.py says which days).
    """

    day = models.DateField()
    runs_started = models.PositiveIntegerField(default=0)
    runs_succeeded = models.PositiveIntegerField(default=0)
    runs_failed = models.PositiveIntegerField(default=0)
    runs_cancelled = models.PositiveIntegerField(default=0)
    # Run durations (seconds) of the finished runs, nearest-rank percentiles.
    duration_p50 = models.FloatField(null=True, blank=True)
    duration_p95 = models.FloatField(null=True, blank=True)
    approvals_requested = models.PositiveIntegerField(default=0)
    approvals_approved = models.PositiveIntegerField(default=0)
    approvals_rejected = models.PositiveIntegerField(default=0)
    approvals_expired = models.PositiveIntegerField(default=0)
    # Seconds from an approval's request to its decision, decided approvals only.
    approval_wait_p50 = models.FloatField(null=True, blank=True)
    approval_wait_p95 = models.FloatField(null=True, blank=True)
    manual_tasks = models.PositiveIntegerField(default=0)
    exceptions = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)
    loop_iterations = models.PositiveIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    cost = models.FloatField(default=0.0)
    computed_at = models.DateTimeField()

    class Meta:
        abstract = True


# The figures a snapshot keeps, in the order of their fields (the CSV's and the admin's order).
FIGURE_FIELDS: tuple[str, ...] = tuple(f.name for f in Figures._meta.fields if f.name not in ("day", "computed_at"))


class DailySnapshot(Figures):
    """One day of one workflow: a row per version that had runs that day, and one row with
    version NULL for all of them together (percentiles cannot be added up across versions, so
    the workflow's own figures are measured, not summed)."""

    workflow = models.ForeignKey(Workflow, related_name="snapshots", on_delete=models.CASCADE)
    version = models.ForeignKey(
        WorkflowVersion, null=True, blank=True, related_name="snapshots", on_delete=models.CASCADE
    )

    class Meta:
        ordering = ["workflow", "day", "version"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "day"], condition=models.Q(version__isnull=False), name="snapshot_version_day_unique"
            ),
            models.UniqueConstraint(
                fields=["workflow", "day"], condition=models.Q(version__isnull=True), name="snapshot_workflow_day_unique"
            ),
        ]
        indexes = [models.Index(fields=["workflow", "day"], name="snapshot_workflow_day_idx")]

    def __str__(self) -> str:
        return f"{self.version or self.workflow} on {self.day}"


class AgentVersionSnapshot(Figures):
    """One day of one agent version: the runs that used it (AgentVersionChoice), and its own
    attempts' latency."""

    agent_version = models.ForeignKey(AgentVersion, related_name="snapshots", on_delete=models.CASCADE)
    attempts = models.PositiveIntegerField(default=0)
    latency_p50 = models.FloatField(null=True, blank=True)
    latency_p95 = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["agent_version", "day"]
        constraints = [models.UniqueConstraint(fields=["agent_version", "day"], name="snapshot_agent_version_day_unique")]

    def __str__(self) -> str:
        return f"{self.agent_version} on {self.day}"
