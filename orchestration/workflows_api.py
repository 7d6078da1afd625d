"""Workflows in the JSON API: the ones the caller sees, one with its current version, input
schema and triggers, and starting a run (idempotently, with a key).

A django-ninja Router that approvals/api.py mounts at /api/workflows/ (that module owns the
NinjaAPI, its authentication and the handlers that answer every refusal). A workflow the caller
may not see is 404, exactly like one that does not exist; one they see but may not operate is
403 on a start (access.can_operate). Triggers are shown as the file writes them: a webhook's
secret is named by its environment variable, never shown.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Any, Literal

from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, ModelSchema, Router, Schema, Status
from ninja.params.functions import Path, Query

from orchestration import access, engine, transitions
from orchestration.api_errors import refuse, responses
from orchestration.models import Run, StartRequest, Workflow, WorkflowVersion
from orchestration.runs_api import RunOut

router = Router(tags=["workflows"])

# The same idempotency key (per workflow and user) within this window answers with the first run.
IDEMPOTENCY_WINDOW = timedelta(hours=24)
PER_PAGE = 50
MAX_PER_PAGE = 200

TriggerKindName = Literal["cron", "webhook", "event"]


class WorkflowOut(ModelSchema):
    owner: str | None
    # The latest published version's number; null while nothing is published.
    version: int | None
    url: str

    class Meta:
        model = Workflow
        fields = ["key", "name", "description"]

    @staticmethod
    def resolve_owner(workflow: Workflow) -> str | None:
        return workflow.owner.get_username() if workflow.owner else None

    @staticmethod
    def resolve_version(workflow: Workflow) -> int | None:
        return getattr(workflow, "latest_number", None)

    @staticmethod
    def resolve_url(workflow: Workflow) -> str:
        return f"/workflows/{workflow.key}/"


class WorkflowPageOut(Schema):
    workflows: list[WorkflowOut]
    # Pass as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class TriggerOut(Schema):
    """One entry of the version's `triggers:`, as written (the spec's TriggerSpec)."""

    kind: TriggerKindName
    cron: str | None = None
    timezone: str | None = None
    catch_up: int | None = None
    event: str | None = None
    # A webhook's secret: the name of the environment variable that holds it, never its value.
    secret_env: str | None = None
    # A webhook's address.
    url: str | None = None
    input: Any = None


class WorkflowDetailOut(WorkflowOut):
    """A workflow read by `get_workflow`, which hangs its current version on it (`api_version`)."""

    # When the current version was published.
    published_at: datetime | None
    # The current version's `inputs:` (name -> {type, required, default, ...}).
    inputs: dict[str, Any]
    triggers: list[TriggerOut]
    # Whether the caller may start runs of it (and cancel, retry them).
    can_operate: bool

    @staticmethod
    def resolve_published_at(workflow: Workflow) -> datetime | None:
        version = _current(workflow)
        return version.published_at if version else None

    @staticmethod
    def resolve_inputs(workflow: Workflow) -> dict[str, Any]:
        version = _current(workflow)
        return dict(version.spec.get("inputs") or {}) if version else {}

    @staticmethod
    def resolve_triggers(workflow: Workflow) -> list[TriggerOut]:
        version = _current(workflow)
        return [_trigger(t, workflow) for t in (version.spec.get("triggers") or [] if version else [])]

    @staticmethod
    def resolve_can_operate(workflow: Workflow, context: Any) -> bool:
        return access.can_operate(context["request"].auth, workflow)


def _current(workflow: Workflow) -> WorkflowVersion | None:
    version: WorkflowVersion | None = getattr(workflow, "api_version", None)
    return version


class StartIn(Schema):
    # Checked against the workflow's `inputs`; a bad one is 422 naming the field.
    input: dict[str, Any] | None = None
    # The same key within 24 hours (per workflow and user) returns the first run; nothing starts.
    idempotency_key: str = Field("", max_length=200, pattern=r"^[!-~]*$")


def _numbered(workflows: QuerySet[Workflow]) -> QuerySet[Workflow]:
    return workflows.select_related("owner").annotate(latest_number=Max("versions__number"))


def _visible(request: HttpRequest, key: str) -> Workflow:
    workflow = _numbered(Workflow.objects.filter(key=key)).first()
    if workflow is None or not access.can_view(request.auth, workflow):  # type: ignore[attr-defined]
        refuse(404, f"No workflow {key!r} you can see.")
    return workflow


def _trigger(spec: dict[str, Any], workflow: Workflow) -> TriggerOut:
    kind: TriggerKindName = "cron" if "cron" in spec else "webhook" if "webhook" in spec else "event"
    webhook = spec.get("webhook") or {}
    return TriggerOut(
        kind=kind,
        cron=spec.get("cron"),
        timezone=spec.get("timezone"),
        catch_up=spec.get("catch_up"),
        event=spec.get("event"),
        secret_env=webhook.get("secret_env"),
        url=f"/hooks/{workflow.key}" if kind == "webhook" else None,
        input=spec.get("input"),
    )


def _encode(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        refuse(422, "cursor: not a cursor this API gave out", field="cursor")


@router.get("", response=responses({200: WorkflowPageOut}), summary="Workflows you can see, by key")
def list_workflows(
    request: HttpRequest,
    cursor: str = Query("", max_length=200, description="`next_cursor` of the previous page"),
    limit: int = Query(PER_PAGE, ge=1, le=MAX_PER_PAGE),
) -> Any:
    workflows = access.visible_workflows(request.auth)  # type: ignore[attr-defined]
    if cursor:
        # Keyset on the unique key, the list's order.
        workflows = workflows.filter(key__gt=_decode(cursor))
    page = list(_numbered(workflows).order_by("key")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return Status(200, {"workflows": page, "next_cursor": _encode(page[-1].key) if more else None})


@router.get(
    "/{key}",
    response=responses({200: WorkflowDetailOut}, 404),
    summary="A workflow: its current version, inputs, triggers",
)
def get_workflow(request: HttpRequest, key: str = Path(..., max_length=100)) -> Any:
    workflow = _visible(request, key)
    # Hung on the workflow for WorkflowDetailOut's resolvers (one query, every field from it).
    current = WorkflowVersion.objects.filter(workflow=workflow).order_by("-number").first()
    setattr(workflow, "api_version", current)  # noqa: B010
    return Status(200, workflow)


def _start(workflow: Workflow, payload: StartIn, user: Any) -> Run:
    try:
        return transitions.start_run(workflow=workflow, input=payload.input, started_by=user, trigger="api")
    except ValueError as exc:
        refuse(422, str(exc), field="input")
    except LookupError as exc:
        # Seen but never published: there is nothing to run yet.
        refuse(409, f"{exc}: publish a version first")


def _same_request(first: StartRequest, payload: StartIn) -> Run:
    """The first run of this key, when this request asks for the same thing; a different input
    under a key already used is the client's mistake, said outright (409) rather than answered
    with a run of some other input."""
    try:
        same = engine.validate_run_input(first.run.version.spec, payload.input) == first.run.input
    except ValueError:
        same = False
    if not same:
        refuse(
            409,
            f"idempotency_key {first.key!r} already started run {first.run_id} with another input: "
            "send that input again, or a new key for a new run",
            code="idempotency_conflict",
        )
    return first.run


def _first(workflow: Workflow, user: Any, key: str) -> StartRequest | None:
    since = timezone.now() - IDEMPOTENCY_WINDOW
    return (
        StartRequest.objects.filter(workflow=workflow, user=user, key=key, created_at__gte=since)
        .select_related("run__workflow", "run__version", "run__started_by")
        .first()
    )


@router.post(
    "/{key}/runs",
    response=responses({201: RunOut, 200: RunOut}, 403, 404, 409),
    summary="Start a run (201); the same idempotency key and input again returns the first run (200), another input 409",
)
def start_run(request: HttpRequest, payload: StartIn, key: str = Path(..., max_length=100)) -> Any:
    """`{"input": {...}, "idempotency_key": "..."}`. The input is checked against the
    workflow's `inputs`; a bad one is 422 naming the field, and nothing starts."""
    user = request.auth  # type: ignore[attr-defined]
    workflow = _visible(request, key)
    if not access.can_operate(user, workflow):
        refuse(
            403, "You may see this workflow but not start it: ask its owner to add you to an operator group."
        )
    if not payload.idempotency_key:
        return Status(201, _start(workflow, payload, user))
    first = _first(workflow, user, payload.idempotency_key)
    if first is not None:
        return Status(200, _same_request(first, payload))
    try:
        with transaction.atomic():
            # A key older than the window no longer counts: its row makes way for this start.
            StartRequest.objects.filter(
                workflow=workflow,
                user=user,
                key=payload.idempotency_key,
                created_at__lt=timezone.now() - IDEMPOTENCY_WINDOW,
            ).delete()
            run = _start(workflow, payload, user)
            # A concurrent request with the same key blocks here until the first commits, then
            # fails the constraint: its run rolls back with it (its after-commit effects, the
            # task messages, never happen) and it answers with the first run.
            StartRequest.objects.create(
                workflow=workflow, user=user, key=payload.idempotency_key, run=run, created_at=timezone.now()
            )
    except IntegrityError:
        first = _first(workflow, user, payload.idempotency_key)
        if first is None:
            raise
        return Status(200, _same_request(first, payload))
    return Status(201, Run.objects.select_related("workflow", "version", "started_by").get(pk=run.pk))
