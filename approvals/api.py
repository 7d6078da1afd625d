"""The JSON API (django-ninja), mounted at /api/: OpenAPI at /api/openapi.json, Swagger UI at
/api/docs (django-ninja's own bundled files, served from static/; no CDN).

One NinjaAPI for the product, one Router per area: workflows (orchestration/workflows_api.py),
runs (orchestration/runs_api.py), approvals (here), events (orchestration/triggers/api.py) and
rollouts (orchestration/rollouts/api.py). Every failure is answered by the handlers in this
module, in one body (orchestration.api_errors): `{"error": code, "detail": ..., "fields": {...}}`.
Refusals of approvals.transitions get approvals.errors' status (NotAllowed 403, AlreadyDecided
409, InvalidInput 422), as on the pages; a missing item (or one the caller may not see) is 404, no
or a bad token 401, a database that is away 503, anything else 500; every answer under /api/ is
JSON, unknown paths and methods included.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypedDict

from django.db import InterfaceError, OperationalError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Router, Schema, Status, Swagger
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError
from ninja.params.functions import Path

from approvals import access, errors, transitions
from approvals.auth import BearerToken, SessionWithCsrf
from approvals.models import Item, ItemStatus
from approvals.notifications import item_url
from orchestration import runs_api, workflows_api
from orchestration.api_errors import ApiError, ErrorOut, error_body, fields_of, refuse, responses
from orchestration.rollouts import api as rollouts_api
from orchestration.rollouts.transitions import GateFailed, NotAllowed, RolloutError
from orchestration.runs_api import MAX_ID
from orchestration.triggers import api as events_api

api = NinjaAPI(
    title="Baton API",
    version="1",
    description=(
        "Authenticate with `Authorization: Bearer <token>` (create one in the admin or with "
        "`manage.py create_api_token USERNAME [--days N]`). A logged-in browser session works too, "
        "with Django's CSRF token on writes. Every error is "
        '`{"error": code, "detail": "...", "fields": {field: problem}}`.'
    ),
    urls_namespace="api",
    auth=[BearerToken(), SessionWithCsrf()],
    # ninja's template loads its bundled Swagger UI from static/ and starts it with a static
    # script (no inline JS), so the page passes our Content-Security-Policy.
    docs=Swagger(settings={"persistAuthorization": False}),
    docs_url="/docs",
)

router = Router(tags=["approvals"])

MAX_ITEMS = 500

logger = logging.getLogger("baton.api")


# ---------------------------------------------------------------------------------------------
# Payloads


class VotePayload(TypedDict):
    user: str
    decision: str
    comment: str
    created_at: datetime


class ItemPayload(TypedDict):
    id: int
    kind: str
    status: str
    title: str
    details: str
    action: Any
    error: str
    risk: str
    deadline: datetime | None
    workflow: str
    run_id: int
    step: str
    requested_by: str | None
    required: int
    votes: list[VotePayload]
    decision: str
    decided_by: str | None
    decided_at: datetime | None
    comment: str
    url: str


class VoteOut(Schema):
    user: str
    decision: str
    comment: str
    created_at: datetime


# The items' vocabulary (approvals/models.py) as Literals, so the OpenAPI lists the values;
# tests/api/test_approvals_schema.py checks they match the TextChoices.
ItemKindName = Literal["approval", "gate", "manual", "exception"]
ItemStatusName = Literal["pending", "approved", "rejected", "submitted", "resolved", "expired", "cancelled"]
ItemStatusFilter = Literal["pending", "approved", "rejected", "submitted", "resolved", "expired", "cancelled", "all"]


class ItemOut(Schema):
    id: int
    kind: ItemKindName
    status: ItemStatusName
    title: str
    details: str
    action: Any = None
    error: str
    risk: str
    deadline: datetime | None
    workflow: str
    run_id: int
    step: str
    requested_by: str | None
    required: int
    votes: list[VoteOut]
    decision: str
    decided_by: str | None
    decided_at: datetime | None
    comment: str
    url: str


class DecisionIn(Schema):
    decision: str
    comment: str = ""


class ResolveIn(Schema):
    action: str
    input: Any = None
    output: Any = None
    comment: str = ""


class ReassignIn(Schema):
    to_user: str
    note: str = ""


class ConflictOut(ErrorOut):
    status: str
    decided_by: str | None
    decided_at: datetime | None


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def item_payload(item: Item) -> ItemPayload:
    return {
        "id": item.pk,
        "kind": item.kind,
        "status": item.status,
        "title": item.title,
        "details": item.details,
        "action": item.action,
        "error": item.error,
        "risk": item.risk,
        "deadline": item.deadline,
        "workflow": item.run.workflow.key,
        "run_id": item.run_id,
        "step": item.step_run.step_key,
        "requested_by": _username(item.requested_by),
        "required": item.required,
        "votes": [
            {
                "user": v.user.get_username(),
                "decision": v.decision,
                "comment": v.comment,
                "created_at": v.created_at,
            }
            for v in item.votes.all()
        ],
        "decision": item.decision,
        "decided_by": _username(item.decided_by),
        "decided_at": item.decided_at,
        "comment": item.comment,
        "url": item_url(item),
    }


def _with_related(items: QuerySet[Item]) -> QuerySet[Item]:
    return items.select_related("run__workflow", "step_run", "requested_by", "decided_by").prefetch_related(
        "votes__user"
    )


# ---------------------------------------------------------------------------------------------
# Errors: every failure under /api/ is answered here, in orchestration.api_errors' body.


def _error(
    request: HttpRequest, status: int, detail: str, fields: dict[str, str] | None = None, *, code: str = ""
) -> HttpResponse:
    return api.create_response(request, error_body(status, detail, fields, code=code), status=status)


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    """What the routers refuse with (orchestration.api_errors.refuse)."""
    return api.create_response(request, exc.body(), status=exc.status)


def _refused(request: HttpRequest, exc: Any) -> HttpResponse:
    """A refusal of approvals.transitions, answered with approvals.errors' status for it."""
    status = errors.status_for(exc)
    if isinstance(exc, transitions.AlreadyDecided):
        # Who decided first and when: the client can tell its user without another request.
        extra = {"status": exc.status, "decided_by": _username(exc.decided_by), "decided_at": exc.decided_at}
        return api.create_response(request, ApiError(status, str(exc), extra=extra).body(), status=status)
    return _error(
        request, status, str(exc), exc.errors if isinstance(exc, transitions.InvalidInput) else None
    )


for _refusal in errors.REFUSALS:
    api.add_exception_handler(_refusal, _refused)


@api.exception_handler(RolloutError)
def _rollout_refused(request: HttpRequest, exc: RolloutError) -> HttpResponse:
    """Refusals of orchestration.rollouts.transitions (the /api/rollouts router's writes)."""
    detail = str(exc)
    if isinstance(exc, NotAllowed):
        return _error(request, 403, detail)
    if isinstance(exc, GateFailed):
        failing = [rollouts_api.verdict_payload(v) for v in exc.gate.verdicts if not v.passed]
        fields = {v["metric"]: f"{v['actual']} against {v['comparison']} {v['target']}" for v in failing}
        body = ApiError(409, detail, fields=fields, code="gate_failed", extra={"verdicts": failing}).body()
        return api.create_response(request, body, status=409)
    # "reason: required": a refusal that names the field it is about is about the input (422);
    # any other is about the rollout's state (409), like resuming one that is not paused.
    fields = fields_of(detail)
    if fields:
        return _error(request, 422, detail, fields)
    return _error(request, 409, detail)


@api.exception_handler(Item.DoesNotExist)
def _missing(request: HttpRequest, exc: Item.DoesNotExist) -> HttpResponse:
    return _error(request, 404, "No such item.")


UNAUTHORIZED = (
    "Authentication required: send `Authorization: Bearer <token>`; an unknown, revoked or "
    "expired token is refused."
)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
        # A body that is not JSON is a bad body like any other: 422, naming it.
        return _error(request, 422, "body: not valid JSON", {"body": "not valid JSON"})
    if isinstance(exc, AuthenticationError):
        response = _error(request, 401, UNAUTHORIZED)
        response["WWW-Authenticate"] = "Bearer"
        return response
    if isinstance(exc, Throttled):
        response = _error(request, 429, "Too many requests; try again shortly.")
        if exc.wait:
            response["Retry-After"] = str(int(exc.wait))
        return response
    detail = str(exc)
    return _error(request, exc.status_code, detail, fields_of(detail) if exc.status_code == 422 else None)


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    # A database restart: the client may simply try again. Logged by whoever watches the
    # database; one line here, not a traceback per request.
    logger.warning(
        "api: database unavailable for %s %s: %s",
        request.method,
        request.path,
        str(exc).strip().splitlines()[:1],
    )
    response = _error(request, 503, "The database is unavailable at the moment; try again shortly.")
    response["Retry-After"] = "5"
    return response


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    # API clients parse JSON: never Django's HTML error page, whatever went wrong.
    logger.exception("api: %s %s failed", request.method, request.path)
    return _error(request, 500, "Internal server error.")


def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/ (mounted after the API's own URLs)."""
    return _error(request, 404, f"No API endpoint at {request.path}.")


def urls() -> tuple[list[Any], str, str]:
    """api.urls, answering a method an endpoint does not take with JSON too (ninja's own
    answer is plain text)."""
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        pattern.callback = _json_method_not_allowed(pattern.callback)
    return patterns, app_name, namespace


def _json_method_not_allowed(view: Any) -> Callable[..., HttpResponse]:
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response: HttpResponse = view(request, *args, **kwargs)
        if response.status_code == 405 and not response.get("Content-Type", "").startswith(
            "application/json"
        ):
            allowed = response.get("Allow", "")
            response = _error(request, 405, f"{request.method} is not allowed here; allowed: {allowed}.")
            response["Allow"] = allowed
        return response

    return wrapped


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$|^[0-9]+$")


def _field_name(location: Any) -> str:
    """("body", "payload", "input", "topic") -> "input.topic"; ("query", "status",
    "literal[...]") -> "status": the path of names up to pydantic's own labels."""
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    if parts and parts[0] == "payload":
        parts = parts[1:]
    names: list[str] = []
    for part in parts:
        if not _NAME.match(part):
            break
        names.append(part)
    return ".".join(names) or "body"


@api.exception_handler(ValidationError)
def _invalid_request(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    # ninja's default names fields by location lists; clients get {field: problem} as for
    # every other 422 here.
    fields: dict[str, str] = {}
    for error in exc.errors:
        fields.setdefault(_field_name(error.get("loc", ())), str(error.get("msg", "invalid")))
    detail = "; ".join(f"{name}: {problem}" for name, problem in fields.items())
    return _error(request, 422, detail or "invalid request", fields)


# ---------------------------------------------------------------------------------------------
# Endpoints



@router.get("", response=responses({200: list[ItemOut]}), summary="Your items")
def list_items(request: HttpRequest, status: ItemStatusFilter = "pending", limit: int = 100) -> Any:
    """status=pending (the default): the items waiting for you to decide, soonest deadline first.
    Any other status (or `all`): the items you may see in that status, newest first."""
    user = request.auth  # type: ignore[attr-defined]
    if status == "pending":
        items = access.decidable_items(user)
    elif status == "all":
        items = access.visible_items(user).order_by("-created_at", "-id")
    elif status in ItemStatus.values:
        items = access.visible_items(user).filter(status=status).order_by("-decided_at", "-id")
    else:  # the Literal lets nothing else through; kept for a status added to the model only
        refuse(422, f"status: must be one of {', '.join([*ItemStatus.values, 'all'])}")
    limit = max(1, min(limit, MAX_ITEMS))
    return Status(200, [item_payload(item) for item in _with_related(items)[:limit]])


def _visible(request: HttpRequest, item_id: int) -> Item:
    """The item if this caller may see it; otherwise Item.DoesNotExist, answered 404.

    Someone else's item is "no such item", exactly like one that does not exist: a 403 would
    confirm that the id is taken, and its reason (who it was reassigned to) would say more.
    Whoever sees the item gets the transitions' 403 with its reason when they may not act.
    """
    return _with_related(access.visible_items(request.auth)).get(pk=item_id)  # type: ignore[attr-defined]


@router.get("/{item_id}", response=responses({200: ItemOut}, 404))
def get_item(request: HttpRequest, item_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    """The item, if it is yours to see (404 otherwise, as for an id that does not exist)."""
    return Status(200, item_payload(_visible(request, item_id)))


@router.post(
    "/{item_id}/decision",
    response=responses({200: ItemOut, 409: ConflictOut}, 403, 404),
    summary="Approve or reject",
)
def decide(request: HttpRequest, payload: DecisionIn, item_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    """`{"decision": "approve" | "reject", "comment": "..."}`; rejecting needs a comment.
    409 when someone decided first (or the item expired or was cancelled): says who and when."""
    _visible(request, item_id)
    transitions.vote(item_id=item_id, user=request.auth, decision=payload.decision, comment=payload.comment)  # type: ignore[attr-defined]
    return Status(200, item_payload(_with_related(Item.objects.filter(pk=item_id)).get()))


@router.post(
    "/{item_id}/resolve",
    response=responses({200: ItemOut, 409: ConflictOut}, 403, 404),
    summary="Retry, skip or abort an exception",
)
def resolve(request: HttpRequest, payload: ResolveIn, item_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    """`{"action": "retry" | "skip" | "abort", "input": ..., "output": ..., "comment": "..."}`.
    A retry with an `input` other than the one the step failed on runs it with that input; a
    gated or high-risk step then waits at a new gate that shows it. The run's starter may not
    resolve its exceptions unless the workflow allows self-approval (403)."""
    _visible(request, item_id)
    transitions.resolve_exception(
        item_id=item_id,
        user=request.auth,  # type: ignore[attr-defined]
        action=payload.action,
        input=payload.input,
        output=payload.output,
        comment=payload.comment,
    )
    return Status(200, item_payload(_with_related(Item.objects.filter(pk=item_id)).get()))


@router.post(
    "/{item_id}/reassign",
    response=responses({200: ItemOut, 409: ConflictOut}, 403, 404),
    summary="Hand an item to someone else",
)
def reassign(request: HttpRequest, payload: ReassignIn, item_id: int = Path(..., ge=1, le=MAX_ID)) -> Any:
    """`{"to_user": "username", "note": "why"}`: only to someone eligible for the item (its
    assignees, members of its groups, its escalation targets or an admin); anyone else is 422
    naming `to_user`, and nothing changes."""
    user = request.auth  # type: ignore[attr-defined]
    _visible(request, item_id)
    transitions.reassign(item_id=item_id, user=user, to_user=payload.to_user, note=payload.note)
    # The caller handed it on but still sees it (access.can_view), so the answer is the item.
    return Status(200, item_payload(_with_related(Item.objects.filter(pk=item_id)).get()))


# One router per area; the handlers above answer all of their refusals.
api.add_router("/workflows", workflows_api.router)
# Runs: list, one run with its steps and attempts, its event log; retry, rerun, cancel.
api.add_router("/runs", runs_api.router)
api.add_router("/approvals", router)
# Outside events (resume waiting runs, start subscribed workflows): the triggers app's router.
api.add_router("/events", events_api.router)
api.add_router("/rollouts", rollouts_api.router)
