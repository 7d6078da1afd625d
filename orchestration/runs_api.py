"""Operator actions on runs in the JSON API: retry from failure, rerun, cancel with a reason.

A django-ninja Router that approvals/api.py mounts at /api/runs/ (that module owns the
NinjaAPI and its authentication). A run the caller may not see is 404, exactly like one that
does not exist; one they see but may not operate is 403 (access.can_operate_run). Refusals
answer here, in the API's error format: 409 with the reason for a run in the wrong state,
422 naming the field for bad input. Every write goes through orchestration.transitions, as on
the pages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Router, Schema, Status

from orchestration import access, limits, transitions
from orchestration.models import Run

router = Router(tags=["runs"])


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


class RunOut(Schema):
    id: int
    workflow: str
    version: int
    status: str
    error: str
    rerun_of: int | None
    created_at: datetime
    finished_at: datetime | None
    url: str


class ErrorOut(Schema):
    detail: str
    errors: dict[str, str] = {}


RESPONSES = {200: RunOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut}


def run_payload(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "workflow": run.workflow.key,
        "version": run.version.number,
        "status": run.status,
        "error": run.error,
        "rerun_of": run.rerun_of_id,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "url": f"/runs/{run.pk}/",
    }


def _refusal(status: int, detail: str, field: str | None = None) -> Status[Any]:
    return Status(status, {"detail": detail, "errors": {field: detail} if field else {}})


def _operated(request: HttpRequest, run_id: int) -> Run | Status[Any]:
    user = request.auth  # type: ignore[attr-defined]
    run = Run.objects.select_related("workflow").filter(pk=run_id).first()
    if run is None or not access.can_view_run(user, run):
        return _refusal(404, f"No run {run_id} you can see.")
    if not access.can_operate_run(user, run):
        return _refusal(403, "You may see this run but not change it: ask its workflow's owner to add you to an operator group.")
    return run


def _answer(run_id: int, change: Any, field: str) -> Status[Any]:
    try:
        run = change()
    except transitions.InvalidTransition as exc:
        return _refusal(409, str(exc))
    except ValueError as exc:
        return _refusal(422, str(exc), field)
    except LookupError as exc:
        return _refusal(404, str(exc))
    return Status(200, run_payload(Run.objects.select_related("workflow", "version").get(pk=run.pk)))


@router.post("/{run_id}/retry", response=RESPONSES, summary="Retry a failed or cancelled run from its failure")
def retry(request: HttpRequest, run_id: int, payload: RetryIn) -> Any:
    """Succeeded steps keep their outputs; failed steps (a map's failed items only) get new
    attempts, with `inputs[step]` instead of their own input where given; later steps follow.
    A run that is not failed or cancelled is 409 with the reason."""
    run = _operated(request, run_id)
    if isinstance(run, Status):
        return run
    return _answer(
        run_id,
        lambda: transitions.retry_run(run_id=run_id, actor=request.auth, reason=payload.reason, inputs=payload.inputs),  # type: ignore[attr-defined]
        "inputs",
    )


@router.post("/{run_id}/rerun", response=RESPONSES, summary="Start the run again as a new run")
def rerun(request: HttpRequest, run_id: int, payload: RerunIn) -> Any:
    """A new run of the same version (`latest`: the workflow's latest), with the original's
    input or `input`, checked like the start form's; linked to the original (`rerun_of`)."""
    run = _operated(request, run_id)
    if isinstance(run, Status):
        return run
    return _answer(
        run_id,
        lambda: transitions.rerun(run_id=run_id, actor=request.auth, input=payload.input, latest=payload.latest),  # type: ignore[attr-defined]
        "input",
    )


@router.post("/{run_id}/cancel", response=RESPONSES, summary="Cancel a run, with an optional reason")
def cancel(request: HttpRequest, run_id: int, payload: CancelIn) -> Any:
    run = _operated(request, run_id)
    if isinstance(run, Status):
        return run
    return _answer(
        run_id,
        lambda: transitions.cancel_run(run_id=run_id, actor=request.auth, reason=payload.reason),  # type: ignore[attr-defined]
        "reason",
    )
