"""Every status a run, step or attempt can be in, and which of them are final."""

from __future__ import annotations

from django.db import models


class RunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    # Failed (or cancelled with on_cancel: compensate): undoing completed steps, newest first.
    COMPENSATING = "compensating", "Compensating"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


RUN_FINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepStatus(models.TextChoices):
    # Created for a later loop iteration or a for_each item held back by `concurrency`.
    PENDING = "pending", "Pending"
    # A task message has been sent; no worker has claimed it yet.
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    # A transient failure: next_attempt_at says when the ticker queues it again.
    RETRYING = "retrying", "Retrying"
    # Its agent is at max_concurrency: waits, holding no worker, for a slot (first come first served).
    THROTTLED = "throttled", "Waiting for a slot"
    # Held by a person, an event, a timer or a child run; holds no worker.
    WAITING = "waiting", "Waiting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    CANCELLED = "cancelled", "Cancelled"


STEP_FINAL = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
)
STEP_DONE_OK = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})


class AttemptStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class ErrorClass(models.TextChoices):
    TRANSIENT = "transient", "Transient"
    PERMANENT = "permanent", "Permanent"
    TIMEOUT = "timeout", "Timeout"
    LOST = "lost", "Worker lost"
    CIRCUIT_OPEN = "circuit_open", "Circuit open"
    CANCELLED = "cancelled", "Cancelled"


class EventKind(models.TextChoices):
    RUN_STARTED = "run.started", "Run started"
    RUN_SUCCEEDED = "run.succeeded", "Run succeeded"
    RUN_FAILED = "run.failed", "Run failed"
    RUN_CANCELLED = "run.cancelled", "Run cancelled"
    RUN_RETRIED = "run.retried", "Run retried from its failure"
    RUN_RERUN = "run.rerun", "Run started again as a new run"
    STEP_QUEUED = "step.queued", "Step queued"
    STEP_STARTED = "step.started", "Step started"
    STEP_SUCCEEDED = "step.succeeded", "Step succeeded"
    STEP_RETRYING = "step.retrying", "Step will retry"
    STEP_FAILED = "step.failed", "Step failed"
    STEP_SKIPPED = "step.skipped", "Step skipped"
    STEP_WAITING = "step.waiting", "Step waiting"
    STEP_CANCELLED = "step.cancelled", "Step cancelled"
    STEP_LOOPED = "step.looped", "Loop sent back"
    STEP_THROTTLED = "step.throttled", "Waiting for a slot"
    STEP_FALLBACK = "step.fallback", "Fallback agent took over"
    STEP_ESCALATED = "step.escalated", "Escalated to the owner"
    STEP_GATED = "step.gated", "Waiting for approval of its action"
    STEP_RELEASED = "step.released", "Approved to run"
    COMPENSATION_STARTED = "run.compensating", "Compensating"
    COMPENSATION_FAILED = "compensation.failed", "Compensation failed"
    MESSAGE_RESENT = "message.resent", "Task message re-sent"


class WaitingFor(models.TextChoices):
    """What a WAITING step waits for (StepRun.waiting_for); empty when it waits for nothing."""

    APPROVAL = "approval", "a person's approval"
    MANUAL = "manual", "a person's manual task"
    # An agent step whose action needs approval of its exact input before it runs.
    GATE = "gate", "approval of its action"
    # A step that failed for good, escalated to the workflow owner (retry, skip or abort).
    EXCEPTION = "exception", "the workflow owner's decision"
    EVENT = "event", "an event"
    TIMER = "timer", "a timer"
    WORKFLOW = "workflow", "a sub-workflow run"


class Risk(models.TextChoices):
    """An agent's risk. A high-risk agent never acts without approval of the exact action."""

    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
