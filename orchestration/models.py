"""Definitions (Agent, AgentVersion, Workflow, DraftStep, WorkflowVersion) and runtime (Run,
StepRun, Attempt, RunEvent, AgentVersionChoice).

Models are declarative: state changes live in orchestration/transitions.py and the decision of
what runs next in orchestration/engine.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from orchestration.status import (
    RUN_FINAL,
    STEP_FINAL,
    AttemptStatus,
    ErrorClass,
    EventKind,
    Risk,
    RunStatus,
    StepStatus,
    WaitingFor,
)


class AppendOnly(models.Model):
    """A log row: written once, never changed (the timeline and audit trail depend on it)."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError(f"{type(self).__name__} rows are append-only.")
        super().save(*args, **kwargs)


class AgentKind(models.TextChoices):
    PYTHON = "python", "Python callable"
    SIMULATED = "simulated", "Simulated (demo)"
    HTTP = "http", "HTTP endpoint"
    LLM = "llm", "LLM (OpenAI-compatible)"


class Agent(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=AgentKind.choices)
    description = models.TextField(blank=True)
    config = models.JSONField(default=dict, blank=True)
    # Defaults for steps that use this agent; a step may override both.
    timeout_seconds = models.FloatField(null=True, blank=True)
    retry = models.JSONField(default=dict, blank=True)
    # Tried when this agent fails for good or its circuit is open.
    fallback = models.SlugField(max_length=100, blank=True)
    # {failures, window, cooldown} in seconds; empty: no circuit breaker.
    circuit = models.JSONField(default=dict, blank=True)
    # At most this many attempts in flight across all workers and runs (a provider's limit).
    max_concurrency = models.PositiveIntegerField(null=True, blank=True)
    # High-risk agents never act without an approval of the exact action (a gate).
    risk = models.CharField(max_length=10, choices=Risk.choices, default=Risk.LOW)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_simulated(self) -> bool:
        return self.kind == AgentKind.SIMULATED


class AgentVersion(models.Model):
    """One configuration of an agent (a model, a prompt, a URL, ...) with a traffic weight.

    Its config is laid over the agent's own. A run uses one version of an agent for all its
    attempts (AgentVersionChoice), picked with probability weight / sum of the agent's weights;
    an agent with no version of positive weight runs with its own config.
    """

    agent = models.ForeignKey(Agent, related_name="versions", on_delete=models.CASCADE)
    label = models.SlugField(max_length=50)
    config = models.JSONField(default=dict, blank=True)
    weight = models.PositiveIntegerField(default=0)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["agent", "label"]
        constraints = [models.UniqueConstraint(fields=["agent", "label"], name="agent_version_label_unique")]

    def __str__(self) -> str:
        return f"{self.agent.name}@{self.label}"


class AgentVersionEvent(AppendOnly):
    """Append-only log of an agent's traffic weights: who shifted them, when and why."""

    agent = models.ForeignKey(Agent, related_name="version_events", on_delete=models.CASCADE)
    # {label: weight} before and after.
    weights_before = models.JSONField(default=dict)
    weights_after = models.JSONField(default=dict)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["agent", "id"]

    def __str__(self) -> str:
        return f"{self.agent.name}: {self.weights_before} -> {self.weights_after}"


class Workflow(models.Model):
    """A workflow and its editable draft; runs only ever see published versions."""

    key = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # The draft: the input schema and output template; steps are DraftStep rows.
    inputs = models.JSONField(default=dict, blank=True)
    output = models.TextField(blank=True)
    on_cancel = models.CharField(
        max_length=20,
        choices=[("nothing", "Stop"), ("compensate", "Undo completed steps")],
        default="nothing",
    )
    on_failure = models.CharField(
        max_length=20,
        choices=[("fail", "Fail the run"), ("escalate", "Open an exception item for the owner")],
        default="fail",
    )
    # Whether the person who started a run may approve its approvals and gates.
    allow_self_approval = models.BooleanField(default=False)
    # The draft's triggers, as the file writes them (`triggers:`); published with the version,
    # and the triggers app keeps its rows in step with the latest published version.
    triggers = models.JSONField(
        default=list,
        blank=True,
        help_text='A list like [{"cron": "0 9 * * 1-5", "input": {"topic": "digest"}}]; see docs/triggers.md.',
    )
    # Who sees the workflow and its runs, and who may start and cancel them, besides the
    # owner and superusers (the rule is orchestration/access.py). Not versioned: runs of
    # every version follow the workflow's current setting.
    viewer_groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="viewable_workflows",
        help_text="Members see this workflow and its runs.",
    )
    operator_groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="operated_workflows",
        help_text="Members see this workflow and its runs, start runs and cancel them.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def latest_version(self) -> WorkflowVersion | None:
        """The newest published version: what new runs start on. Never a trial."""
        return self.versions.filter(trial=False).order_by("-number").first()


class StepKind(models.TextChoices):
    AGENT = "agent", "Agent"
    WORKFLOW = "workflow", "Sub-workflow"
    APPROVAL = "approval", "Approval"
    MANUAL = "manual", "Manual task"
    WAIT = "wait", "Wait for event"
    # Picks one of the steps after it by a value; the others are skipped.
    ROUTE = "route", "Route"
    # Ends the run with a stated status and message.
    END = "end", "End of the run"
    COMPENSATION = "compensation", "Compensation"


class DraftStep(models.Model):
    """One step of a workflow's draft, edited as an admin inline."""

    workflow = models.ForeignKey(Workflow, related_name="draft_steps", on_delete=models.CASCADE)
    position = models.PositiveIntegerField(default=0)
    key = models.SlugField(max_length=100)
    kind = models.CharField(max_length=20, choices=StepKind.choices, default=StepKind.AGENT)
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.PROTECT)
    sub_workflow = models.ForeignKey(
        Workflow, null=True, blank=True, related_name="+", on_delete=models.PROTECT
    )
    after = models.CharField(max_length=500, blank=True, help_text="Step keys, comma-separated.")
    input = models.JSONField(null=True, blank=True)
    when = models.TextField(blank=True)
    for_each = models.TextField(blank=True)
    concurrency = models.PositiveIntegerField(null=True, blank=True)
    loop = models.JSONField(null=True, blank=True)
    # Everything else a step may say (timeout, retry, approval/manual/wait settings, ...).
    options = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["workflow", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "key"], name="draft_step_key_unique")
        ]

    def __str__(self) -> str:
        return self.key


class WorkflowVersion(models.Model):
    """An immutable, validated snapshot of a workflow; runs point at one."""

    workflow = models.ForeignKey(Workflow, related_name="versions", on_delete=models.CASCADE)
    number = models.PositiveIntegerField()
    spec = models.JSONField()
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    published_at = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=200, blank=True)
    # A snapshot of the draft made only to try it (definitions.try_draft): numbered apart
    # (trial 1, 2, ...), never the latest version, never rolled back to or compared with, and
    # left out of the workflow's figures. Its runs are marked "trial of the draft".
    trial = models.BooleanField(default=False)

    class Meta:
        ordering = ["workflow", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "number"], condition=models.Q(trial=False), name="version_number_unique"
            ),
            models.UniqueConstraint(
                fields=["workflow", "number"], condition=models.Q(trial=True), name="trial_number_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.key} {self.label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("Workflow versions are immutable; publish a new version instead.")
        super().save(*args, **kwargs)

    @property
    def label(self) -> str:
        return f"trial {self.number} of the draft" if self.trial else f"v{self.number}"


class Run(models.Model):
    workflow = models.ForeignKey(Workflow, related_name="runs", on_delete=models.PROTECT)
    version = models.ForeignKey(WorkflowVersion, related_name="runs", on_delete=models.PROTECT)
    status = models.CharField(
        max_length=20, choices=RunStatus.choices, default=RunStatus.RUNNING, db_index=True
    )
    input = models.JSONField(default=dict)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # While compensating: the status the run ends with once its compensations are done.
    ends_as = models.CharField(max_length=20, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    trigger = models.CharField(max_length=40, default="manual")
    parent_step = models.ForeignKey(
        "StepRun", null=True, blank=True, related_name="child_runs", on_delete=models.CASCADE
    )
    # An operator's rerun: the run this one started again (same or latest version, same or
    # edited input). The original may be deleted; the rerun stays.
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, related_name="reruns", on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The runs list's keyset pages, newest first: filtered by workflow (and the workflow
            # page's last runs and 30-day figures), by workflow and status, by status.
            models.Index(fields=["workflow", "created_at", "id"], name="run_workflow_time_idx"),
            models.Index(fields=["workflow", "status", "created_at", "id"], name="run_workflow_status_time_idx"),
            models.Index(fields=["status", "created_at", "id"], name="run_status_time_idx"),
            # The overview's last day and week: runs by the time they finished.
            models.Index(fields=["finished_at"], name="run_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} of {self.workflow.key}"

    @property
    def is_final(self) -> bool:
        return self.status in RUN_FINAL

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()


class StepRun(models.Model):
    """One execution of one step: per loop iteration, and per item of a for_each.

    The "head" row of a step (map_index NULL) carries the step's overall state; a for_each
    step's items are rows with map_index 0..n-1 and parent pointing at the head.
    """

    run = models.ForeignKey(Run, related_name="steps", on_delete=models.CASCADE)
    step_key = models.CharField(max_length=100)
    iteration = models.PositiveIntegerField(default=1)
    map_index = models.PositiveIntegerField(null=True, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, related_name="items", on_delete=models.CASCADE
    )
    kind = models.CharField(max_length=20, choices=StepKind.choices, default=StepKind.AGENT)
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.PENDING)
    input = models.JSONField(null=True, blank=True)
    # for_each items: the list element itself, as agents see it in `context.item`.
    item = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_class = models.CharField(max_length=20, choices=ErrorClass.choices, blank=True)
    agent_name = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Set when a fallback agent took over: the agent that failed or whose circuit was open.
    fallback_from = models.CharField(max_length=100, blank=True)
    # What a waiting step waits for: approval, manual, gate, exception, event, timer, workflow.
    waiting_for = models.CharField(max_length=20, choices=WaitingFor.choices, blank=True)
    # Attempts before this number belong to an earlier round (before an owner's retry).
    attempts_base = models.PositiveIntegerField(default=0)
    # for_each bookkeeping on the head row.
    items_total = models.PositiveIntegerField(null=True, blank=True)
    items_done = models.PositiveIntegerField(default=0)
    # A for_each head of a later loop round whose judge named the items to run again
    # (`loop.redo`): their indexes. The other items keep the previous round's outputs. None:
    # every item runs (a first round, or a loop without `redo`).
    redo = models.JSONField(null=True, blank=True)
    # Delivery bookkeeping: the claim token makes a late duplicate's result impossible to
    # record; the lease is renewed by the worker's heartbeat and its expiry means the worker
    # died; queued_at lets the ticker re-send a message the broker lost.
    claim_token = models.CharField(max_length=32, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    wake_at = models.DateTimeField(null=True, blank=True)
    # A wait for an event: its name and the key rendered from `match` ("" matches any key).
    wait_event = models.CharField(max_length=100, blank=True)
    wait_key = models.CharField(max_length=200, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # Newest run first, then in the order made: by the run's id, not by "run", which would
        # order by the Run's own ordering and so join the runs table into every query that
        # does not choose its order (a claim's, a lease renewal's: hot paths).
        ordering = ["-run_id", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "step_key", "iteration"],
                condition=Q(map_index__isnull=True),
                name="step_head_unique",
            ),
            models.UniqueConstraint(
                fields=["run", "step_key", "iteration", "map_index"],
                condition=Q(map_index__isnull=False),
                name="step_item_unique",
            ),
        ]
        indexes = [
            # The ticker's three scans: due retries, expired leases, messages not picked up.
            models.Index(fields=["status", "next_attempt_at"], name="steprun_due_idx"),
            models.Index(fields=["status", "lease_expires_at"], name="steprun_lease_idx"),
            models.Index(fields=["status", "queued_at"], name="steprun_queued_idx"),
            # for_each: the next held-back item of a parent.
            models.Index(fields=["parent", "status", "map_index"], name="steprun_items_idx"),
            # An event finds the steps waiting for it.
            models.Index(
                fields=["wait_event", "wait_key"], condition=Q(status="waiting", kind="wait"), name="steprun_wait_event_idx"
            ),
            # Whether a run is *waiting* (dashboard/runs_list.waiting_q): its waiting rows, and
            # its rows that move on their own. Few rows are in either state at any time.
            models.Index(fields=["run"], condition=Q(status=StepStatus.WAITING), name="steprun_waiting_idx"),
            models.Index(
                fields=["run"],
                condition=Q(status__in=[StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.THROTTLED]),
                name="steprun_moving_idx",
            ),
        ]

    def __str__(self) -> str:
        label = self.step_key
        if self.iteration > 1:
            label += f" (round {self.iteration})"
        if self.map_index is not None:
            label += f" [{self.map_index}]"
        return label

    @property
    def is_final(self) -> bool:
        return self.status in STEP_FINAL

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class Attempt(models.Model):
    step_run = models.ForeignKey(StepRun, related_name="attempt_rows", on_delete=models.CASCADE)
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=20, choices=AttemptStatus.choices, default=AttemptStatus.RUNNING
    )
    worker = models.CharField(max_length=200, blank=True)
    agent_name = models.CharField(max_length=100, blank=True)
    error_class = models.CharField(max_length=20, choices=ErrorClass.choices, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    usage = models.JSONField(default=dict, blank=True)
    # What the agent logged and printed during this attempt, and the http/llm request
    # summaries: [{at, level, source, text}], bounded and redacted by orchestration/agents/logs.py
    # before it is stored with the outcome. A lost attempt (its worker killed) has none.
    log = models.JSONField(default=list, blank=True)
    # The agent version this attempt ran with (NULL: the agent's own config).
    agent_version = models.ForeignKey(
        AgentVersion, null=True, blank=True, related_name="attempts", on_delete=models.PROTECT
    )
    # From usage, as numbers, so rollups can sum them in SQL (usage is whatever an agent said).
    total_tokens = models.BigIntegerField(default=0)
    cost = models.FloatField(default=0.0)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # By the step row's id, not by "step_run" (which would join the step rows and the runs
        # for their orderings): the newest rows first, each row's attempts in order.
        ordering = ["-step_run_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["step_run", "number"], name="attempt_number_unique")
        ]
        indexes = [
            # Circuit breakers count an agent's recent failures; the Agents page sums its usage.
            models.Index(fields=["agent_name", "finished_at"], name="attempt_agent_time_idx"),
            # The overview's tokens and cost of today's attempts (dashboard/overview.py).
            models.Index(fields=["finished_at"], name="attempt_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.step_run}"

    @property
    def log_count(self) -> int:
        """How many lines the attempt kept (the line saying what was cut is not one of them)."""
        return sum(1 for line in self._log() if line.get("level") != "CUT")

    @property
    def log_cut(self) -> bool:
        return any(line.get("level") == "CUT" for line in self._log())

    def _log(self) -> list[dict[str, Any]]:
        # Read defensively: the column is JSON, and a page must not break on an odd row.
        return [line for line in self.log if isinstance(line, dict)] if isinstance(self.log, list) else []

    @property
    def log_entries(self) -> list[dict[str, Any]]:
        """The log lines as a page shows them: when (and how long after the attempt started),
        level, source, text, and whether it is the line saying what was dropped."""
        entries = []
        for line in self._log():
            try:
                at: datetime | None = datetime.fromisoformat(str(line.get("at")))
            except ValueError:
                at = None
            after = (at - self.started_at).total_seconds() if at and self.started_at else None
            entries.append(
                {
                    "at": at,
                    "after": _offset(max(after, 0.0)) if after is not None else "",
                    "level": str(line.get("level", "")),
                    "source": str(line.get("source", "")),
                    "text": str(line.get("text", "")),
                    "cut": line.get("level") == "CUT",
                }
            )
        return entries


def _offset(seconds: float) -> str:
    """How long after its attempt started a line was written, as a person reads it."""
    if seconds < 10:
        return f"+{seconds:.2f} s"
    if seconds < 60:
        return f"+{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"+{minutes} min {rest} s"
    return f"+{minutes // 60} h {minutes % 60} min"


class Event(models.Model):
    """An outside event sent to Baton (POST /api/events): it resumes the steps waiting for its
    name and key, and, when none is waiting yet, is kept until `keep_until` for the first step
    that comes to wait for it."""

    name = models.CharField(max_length=100)
    key = models.CharField(max_length=200, blank=True)
    payload = models.JSONField(null=True, blank=True)
    sent_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    received_at = models.DateTimeField()
    keep_until = models.DateTimeField()
    # The step that took it after it was kept (one only); steps waiting when it came are in
    # their runs' events.
    consumed_by = models.OneToOneField(
        "StepRun", null=True, blank=True, related_name="consumed_event", on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(
                fields=["name", "key", "received_at"], condition=Q(consumed_by__isnull=True), name="event_kept_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.key}".strip()


class StartRequest(models.Model):
    """A `POST /api/workflows/{key}/runs` with an idempotency key, and the run it started.

    The unique constraint is what makes the start idempotent under concurrent requests: the
    second insert of a (workflow, user, key) fails, its transaction (and the run it started)
    rolls back, and it answers with the first run. A row older than 24 hours (IDEMPOTENCY_WINDOW
    in orchestration/workflows_api.py) no longer counts: the next start with that key replaces it.
    """

    workflow = models.ForeignKey(Workflow, related_name="+", on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, related_name="+", on_delete=models.CASCADE)
    key = models.CharField(max_length=200)
    run = models.ForeignKey(Run, related_name="+", on_delete=models.CASCADE)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workflow", "user", "key"], name="start_request_key_unique")]

    def __str__(self) -> str:
        return f"{self.key} -> run {self.run_id}"


class RunEvent(AppendOnly):
    """Append-only log of every state change: timeline, audit trail and live feed read it."""

    run = models.ForeignKey(Run, related_name="events", on_delete=models.CASCADE)
    step_run = models.ForeignKey(
        StepRun, null=True, blank=True, related_name="events", on_delete=models.CASCADE
    )
    kind = models.CharField(max_length=40, choices=EventKind.choices)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Newest run first, then in the order written: by the run's id, as StepRun (no join).
        ordering = ["-run_id", "id"]

    def __str__(self) -> str:
        return f"{self.kind} ({self.run_id})"


class AgentVersionChoice(models.Model):
    """The version of an agent a run uses: chosen at its first attempt, kept for every later
    one (retries included), so a run's figures belong to one version."""

    run = models.ForeignKey(Run, related_name="agent_versions", on_delete=models.CASCADE)
    agent_name = models.CharField(max_length=100)
    version = models.ForeignKey(AgentVersion, related_name="choices", on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "agent_name"], name="agent_version_choice_unique")]
        indexes = [
            # A version's runs, for its figures.
            models.Index(fields=["version", "run"], name="agent_version_choice_idx"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id}: {self.agent_name} -> {self.version_id}"


class CircuitState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open (one trial)"


class AgentHealth(models.Model):
    """Runtime state of an agent: its circuit breaker. Its row is also the lock that
    serialises claims against the agent's max_concurrency."""

    agent = models.OneToOneField(Agent, related_name="health", on_delete=models.CASCADE)
    circuit_state = models.CharField(max_length=20, choices=CircuitState.choices, default=CircuitState.CLOSED)
    # Failures counted towards opening start here (the last time the circuit closed).
    counting_since = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    reopens_at = models.DateTimeField(null=True, blank=True)
    trial_step = models.ForeignKey(StepRun, null=True, blank=True, related_name="+", on_delete=models.SET_NULL)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "agent health"

    def __str__(self) -> str:
        return f"{self.agent.name}: circuit {self.circuit_state}"


class AgentEvent(AppendOnly):
    """Append-only log of an agent's circuit changes."""

    agent = models.ForeignKey(Agent, related_name="events", on_delete=models.CASCADE)
    from_state = models.CharField(max_length=20)
    to_state = models.CharField(max_length=20)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["agent", "id"]

    def __str__(self) -> str:
        return f"{self.agent.name}: {self.from_state} -> {self.to_state}"


class TickerPass(models.Model):
    """When the ticker of a worker host last finished a whole pass: /healthz reports the age of
    the newest (orchestration/observability/health.py). One row per host, rewritten at most
    every few seconds (orchestration/ticker.py record_pass), not once per 0.5 s tick."""

    host = models.CharField(max_length=200, unique=True)
    passed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.host}: {self.passed_at:%Y-%m-%d %H:%M:%S}"
