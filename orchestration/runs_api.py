"""Runs in the JSON API: list them, follow one (its steps, attempts and event log), and the
operator's actions: retry from failure, rerun, cancel with a reason.

A django-ninja Router that approvals/api.py mounts at /api/runs/ (that module owns the
NinjaAPI, its authentication and the handlers that answer every refusal). A run the caller may
not see is 404, exactly like one that does not exist; one they see but may not operate is 403
(access.can_operate_run). Refusals: 409 with the reason for a run in the wrong state, 422
naming the field for bad input. Every write goes through orchestration.transitions, as on the
pages. Lists are cut by an opaque cursor on the list's own order, never by OFFSET.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from django.db.models import Prefetch, Q, QuerySet
from django.http import HttpRequest
from ninja import Field, ModelSchema, Router, Schema, Status
from ninja.params.functions import Path, Query

from orchestration import access, limits, transitions
from orchestration.api_errors import refuse, responses
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.usage import run_usage

router = Router(tags=["runs"])

# The status vocabulary (orchestration/status.py) as Literals, so the OpenAPI lists the values;
# tests/api/test_runs.py checks they match the TextChoices.
RunStatusName = Literal["running", "compensating", "succeeded", "failed", "cancelled"]
StepStatusName = Literal[
    "pending",
    "queued",
    "running",
    "retrying",
    "throttled",
    "waiting",
    "succeeded",
    "failed",
    "skipped",
    "cancelled",
]
AttemptStatusName = Literal["running", "succeeded", "failed"]
ErrorClassName = Literal["", "transient", "permanent", "timeout", "lost", "circuit_open", "cancelled"]
WaitingForName = Literal["", "approval", "manual", "gate", "exception", "event", "timer", "workflow"]

PER_PAGE = 50
MAX_PER_PAGE = 200
# A run's page of step rows: a for_each over thousands of items is followed by its event log.
MAX_STEPS = 1000
MAX_CURSOR_CHARS = 200
# Ids past a bigint would make PostgreSQL fail the query (a 500); they are 422 instead.
MAX_ID = 2**63 - 1


class RetryIn(Schema):
    reason: str = Field("", max_length=limits.MAX_COMMENT_CHARS)
    # Step key -> the input that failed step runs with instead of its own.
    inputs: dict[str, Any] | None = None


class RerunIn(Schema):
    # None: the original run's input.
    input: Any = None
    latest: bool = False


class CancelIn(Schema):
    reason: str = Field("", max_length=limits.MAX_COMMENT_CHARS)


class RunOut(ModelSchema):
    workflow: str
    version: int
    status: RunStatusName
    started_by: str | None
    rerun_of: int | None
    url: str

    class Meta:
        model = Run
        fields = ["id", "status", "error", "trigger", "created_at", "finished_at"]

    @staticmethod
    def resolve_workflow(run: Run) -> str:
        return run.workflow.key

    @staticmethod
    def resolve_version(run: Run) -> int:
        return run.version.number

    @staticmethod
    def resolve_started_by(run: Run) -> str | None:
        return run.started_by.get_username() if run.started_by else None

    @staticmethod
    def resolve_rerun_of(run: Run) -> int | None:
        return run.rerun_of_id

    @staticmethod
    def resolve_url(run: Run) -> str:
        return f"/runs/{run.pk}/"


class AttemptOut(ModelSchema):
    status: AttemptStatusName
    error_class: ErrorClassName
    agent: str

    class Meta:
        model = Attempt
        fields = ["number", "status", "worker", "error", "total_tokens", "cost", "started_at", "finished_at"]

    @staticmethod
    def resolve_agent(attempt: Attempt) -> str:
        return attempt.agent_name


class StepOut(ModelSchema):
    key: str
    status: StepStatusName
    error_class: ErrorClassName
    waiting_for: WaitingForName
    agent: str
    attempts: list[AttemptOut]

    class Meta:
        model = StepRun
        fields = [
            "id",
            "kind",
            "iteration",
            "map_index",
            "status",
            "output",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]

    @staticmethod
    def resolve_key(step: StepRun) -> str:
        return step.step_key

    @staticmethod
    def resolve_agent(step: StepRun) -> str:
        return step.agent_name

    @staticmethod
    def resolve_attempts(step: StepRun) -> list[Attempt]:
        return list(step.attempt_rows.all())


class RunDetailOut(RunOut):
    """A run read by `get_run`, which hangs its step rows and usage on it (`api_steps`,
    `api_usage`) so that every field resolves from the one object."""

    input: Any
    output: Any
    duration_seconds: float | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    steps: list[StepOut]
    # More step rows than MAX_STEPS: the first ones are listed; the event log has them all.
    steps_truncated: bool

    @staticmethod
    def resolve_prompt_tokens(run: Run) -> int:
        return int(getattr(run, "api_usage")["prompt_tokens"])  # noqa: B009

    @staticmethod
    def resolve_completion_tokens(run: Run) -> int:
        return int(getattr(run, "api_usage")["completion_tokens"])  # noqa: B009

    @staticmethod
    def resolve_total_tokens(run: Run) -> int:
        return int(getattr(run, "api_usage")["total_tokens"])  # noqa: B009

    @staticmethod
    def resolve_cost(run: Run) -> float:
        return float(getattr(run, "api_usage")["cost"])  # noqa: B009

    @staticmethod
    def resolve_steps(run: Run) -> list[StepRun]:
        rows: list[StepRun] = getattr(run, "api_steps")  # noqa: B009
        return rows[:MAX_STEPS]

    @staticmethod
    def resolve_steps_truncated(run: Run) -> bool:
        return len(getattr(run, "api_steps")) > MAX_STEPS  # noqa: B009


class RunPageOut(Schema):
    runs: list[RunOut]
    # Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: str | None


class RunEventOut(ModelSchema):
    step: str | None
    actor: str | None

    class Meta:
        model = RunEvent
        fields = ["id", "kind", "from_status", "to_status", "message", "data", "created_at"]

    @staticmethod
    def resolve_step(event: RunEvent) -> str | None:
        return event.step_run.step_key if event.step_run else None

    @staticmethod
    def resolve_actor(event: RunEvent) -> str | None:
        return event.actor.get_username() if event.actor else None


class RunEventPageOut(Schema):
    events: list[RunEventOut]
    # Pass as `after` for the events that follow; the last event's id (or `after` when none).
    next_after: int
    # Whether more events were already there (ask again at once) or not (ask again later).
    more: bool


ACTIONS = responses({200: RunOut}, 403, 404, 409)


# ---------------------------------------------------------------------------------------------
# Reading


def _runs() -> QuerySet[Run]:
    return Run.objects.select_related("workflow", "version", "started_by")


def _visible(request: HttpRequest, run_id: int) -> Run:
    run = _runs().filter(pk=run_id).first()
    if run is None or not access.can_view_run(request.auth, run):  # type: ignore[attr-defined]
        refuse(404, f"No run {run_id} you can see.")
    return run


def _cursor(run: Run) -> str:
    raw = json.dumps([run.created_at.isoformat(), run.pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after_cursor(text: str) -> Q:
    """Runs after this cursor in the list's order (newest first); a bad cursor is 422."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        moment, pk = json.loads(raw)
        created_at = datetime.fromisoformat(moment)
        if not isinstance(pk, int) or created_at.tzinfo is None:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        refuse(422, "cursor: not a cursor this API gave out", field="cursor")
    return Q(created_at__lt=created_at) | Q(created_at=created_at, pk__lt=pk)


@router.get("", response=responses({200: RunPageOut}), summary="Runs you can see, newest first")
def list_runs(
    request: HttpRequest,
    workflow: str = Query("", max_length=100, description="A workflow's key"),
    status: RunStatusName | None = None,
    cursor: str = Query("", max_length=MAX_CURSOR_CHARS, description="`next_cursor` of the previous page"),
    limit: int = Query(PER_PAGE, ge=1, le=MAX_PER_PAGE),
) -> Any:
    runs = access.visible_runs(request.auth)  # type: ignore[attr-defined]
    if workflow:
        runs = runs.filter(workflow__key=workflow)
    if status:
        runs = runs.filter(status=status)
    if cursor:
        runs = runs.filter(_after_cursor(cursor))
    # The list's order is the index's (created_at, id): the keyset cut reads one page.
    page = list(
        runs.select_related("workflow", "version", "started_by").order_by("-created_at", "-id")[: limit + 1]
    )
    more = len(page) > limit
    page = page[:limit]
    return Status(200, {"runs": page, "next_cursor": _cursor(page[-1]) if more else None})


@router.get(
    "/{run_id}", response=responses({200: RunDetailOut}, 404), summary="A run: its steps, attempts and usage"
)
def get_run(request: HttpRequest, run_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    run = _visible(request, run_id)
    rows = list(
        run.steps.order_by("id").prefetch_related(
            Prefetch("attempt_rows", queryset=Attempt.objects.order_by("number"))
        )[: MAX_STEPS + 1]
    )
    # Hung on the run for RunDetailOut's resolvers (one object, every field from it).
    setattr(run, "api_steps", rows)  # noqa: B010
    setattr(run, "api_usage", run_usage(run))  # noqa: B010
    return Status(200, run)


@router.get(
    "/{run_id}/events",
    response=responses({200: RunEventPageOut}, 404),
    summary="A run's event log, oldest first",
)
def run_events(
    request: HttpRequest,
    run_id: int = Path(..., ge=1, le=MAX_ID),
    after: int = Query(
        0, ge=0, le=MAX_ID, description="`next_after` of the previous page: the events after that one"
    ),
    limit: int = Query(100, ge=1, le=500),
) -> Any:
    """For clients that follow a run: ask with `after` = the `next_after` of the last answer
    until the run's status is final and `more` is false."""
    run = _visible(request, run_id)
    events = list(
        RunEvent.objects.filter(run=run, pk__gt=after)
        .select_related("step_run", "actor")
        .order_by("id")[: limit + 1]
    )
    more = len(events) > limit
    events = events[:limit]
    return Status(200, {"events": events, "next_after": events[-1].pk if events else after, "more": more})


# ---------------------------------------------------------------------------------------------
# Operating


def _operated(request: HttpRequest, run_id: int) -> Any:
    """The caller, if they may operate this run (404 if they may not see it, 403 if they only see it)."""
    user = request.auth  # type: ignore[attr-defined]
    if not access.can_operate_run(user, _visible(request, run_id)):
        refuse(
            403,
            "You may see this run but not change it: ask its workflow's owner to add you to an operator group.",
        )
    return user


def _answer(change: Callable[[], Run], field: str) -> Status[Any]:
    try:
        run = change()
    except transitions.InvalidTransition as exc:
        refuse(409, str(exc))
    except ValueError as exc:
        refuse(422, str(exc), field=field)
    except LookupError as exc:
        refuse(404, str(exc))
    return Status(200, _runs().get(pk=run.pk))


@router.post("/{run_id}/retry", response=ACTIONS, summary="Retry a failed or cancelled run from its failure")
def retry(request: HttpRequest, payload: RetryIn, run_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    """Succeeded steps keep their outputs; failed steps (a map's failed items only) get new
    attempts, with `inputs[step]` instead of their own input where given; later steps follow.
    A run that is not failed or cancelled is 409 with the reason."""
    user = _operated(request, run_id)
    return _answer(
        lambda: transitions.retry_run(
            run_id=run_id, actor=user, reason=payload.reason, inputs=payload.inputs
        ),
        "inputs",
    )


@router.post("/{run_id}/rerun", response=ACTIONS, summary="Start the run again as a new run")
def rerun(request: HttpRequest, payload: RerunIn, run_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    """A new run of the same version (`latest`: the workflow's latest), with the original's
    input or `input`, checked like the start form's; linked to the original (`rerun_of`)."""
    user = _operated(request, run_id)
    return _answer(
        lambda: transitions.rerun(run_id=run_id, actor=user, input=payload.input, latest=payload.latest),
        "input",
    )


@router.post("/{run_id}/cancel", response=ACTIONS, summary="Cancel a run, with an optional reason")
def cancel(request: HttpRequest, payload: CancelIn, run_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    user = _operated(request, run_id)
    return _answer(
        lambda: transitions.cancel_run(run_id=run_id, actor=user, reason=payload.reason),
        "reason",
    )
