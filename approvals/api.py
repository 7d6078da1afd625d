"""The JSON API (django-ninja), mounted at /api/; its OpenAPI description is /api/openapi.json.

Every write goes through approvals.transitions, exactly like the inbox pages, and its refusals
get the status approvals.errors gives them, the same as on the pages (NotAllowed 403,
AlreadyDecided 409, InvalidInput 422); a missing item (or one the caller may not see) is 404,
a database that is away 503, anything else 500; every answer under /api/ is JSON, unknown paths and
methods included.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypedDict

from django.db import InterfaceError, OperationalError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema, Status
from ninja.errors import HttpError, ValidationError

from approvals import access, errors, transitions
from approvals.auth import BearerToken, SessionWithCsrf
from approvals.models import Item, ItemStatus
from approvals.notifications import item_url
from orchestration import runs_api
from orchestration.rollouts import api as rollouts_api
from orchestration.rollouts.transitions import GateFailed, NotAllowed, RolloutError
from orchestration.triggers import api as events_api

api = NinjaAPI(
    title="Baton API",
    version="1",
    description=(
        "Authenticate with `Authorization: Bearer <token>` (create one in the admin or with "
        "`manage.py create_api_token USERNAME`). A logged-in browser session works too, with "
        "Django's CSRF token on writes."
    ),
    urls_namespace="api",
    auth=[BearerToken(), SessionWithCsrf()],
    # The interactive docs page loads Swagger UI from a CDN; Baton serves no third-party
    # files from outside static/, so only the OpenAPI document is published.
    docs_url=None,
)

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


class ItemOut(Schema):
    id: int
    kind: str
    status: str
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


class ErrorOut(Schema):
    detail: str
    errors: dict[str, str] = {}


class ConflictOut(Schema):
    detail: str
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
# Errors


def _error(
    request: HttpRequest, status: int, detail: str, errors: dict[str, str] | None = None
) -> HttpResponse:
    return api.create_response(request, {"detail": detail, "errors": errors or {}}, status=status)


def _refused(request: HttpRequest, exc: Any) -> HttpResponse:
    """A refusal of approvals.transitions, answered with approvals.errors' status for it."""
    status = errors.status_for(exc)
    if isinstance(exc, transitions.AlreadyDecided):
        # Who decided first and when: the client can tell its user without another request.
        data = {
            "detail": str(exc),
            "status": exc.status,
            "decided_by": _username(exc.decided_by),
            "decided_at": exc.decided_at,
        }
        return api.create_response(request, data, status=status)
    return _error(request, status, str(exc), exc.errors if isinstance(exc, transitions.InvalidInput) else None)


for _refusal in errors.REFUSALS:
    api.add_exception_handler(_refusal, _refused)


# "reason: required": a refusal that names the field it is about is about the input (422);
# any other is about the rollout's state (409), like resuming one that is not paused.
_FIELD_REFUSAL = re.compile(r"^(?P<field>[a-z_][a-z0-9_-]*): (?P<problem>.+)$", re.DOTALL)


@api.exception_handler(RolloutError)
def _rollout_refused(request: HttpRequest, exc: RolloutError) -> HttpResponse:
    """Refusals of orchestration.rollouts.transitions (the /api/rollouts router's writes)."""
    detail = str(exc)
    if isinstance(exc, NotAllowed):
        return _error(request, 403, detail)
    if isinstance(exc, GateFailed):
        failing = [rollouts_api.verdict_payload(v) for v in exc.gate.verdicts if not v.passed]
        fields = {v["metric"]: f"{v['actual']} against {v['comparison']} {v['target']}" for v in failing}
        data = {"detail": detail, "errors": fields, "fields": fields, "verdicts": failing}
        return api.create_response(request, data, status=409)
    match = _FIELD_REFUSAL.match(detail)
    if match:
        fields = {match["field"]: match["problem"]}
        return api.create_response(request, {"detail": detail, "errors": fields, "fields": fields}, status=422)
    return _error(request, 409, detail)


@api.exception_handler(Item.DoesNotExist)
def _missing(request: HttpRequest, exc: Item.DoesNotExist) -> HttpResponse:
    return _error(request, 404, "No such item.")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
        # A body that is not JSON is a bad body like any other: 422, naming it.
        return _error(request, 422, "body: not valid JSON", {"body": "not valid JSON"})
    return _error(request, exc.status_code, str(exc))


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    # A database restart: the client may simply try again. Logged by whoever watches the
    # database; one line here, not a traceback per request.
    logger.warning("api: database unavailable for %s %s: %s", request.method, request.path, str(exc).strip().splitlines()[:1])
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
        if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/json"):
            allowed = response.get("Allow", "")
            response = _error(request, 405, f"{request.method} is not allowed here; allowed: {allowed}.")
            response["Allow"] = allowed
        return response

    return wrapped


@api.exception_handler(ValidationError)
def _invalid_request(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    # ninja's default names fields by location lists; clients get {field: problem} as for
    # every other 422 here.
    errors: dict[str, str] = {}
    for error in exc.errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
        name = location[-1] if location and location[-1] != "payload" else "body"
        errors.setdefault(name, str(error.get("msg", "invalid")))
    detail = "; ".join(f"{name}: {problem}" for name, problem in errors.items())
    return _error(request, 422, detail or "invalid request", errors)


# ---------------------------------------------------------------------------------------------
# Endpoints

# Rollouts: orchestration's own router, answered by the handlers above.
api.add_router("/rollouts", rollouts_api.router)
# Operator actions on runs (retry, rerun, cancel): orchestration's router, refusals answered there.
api.add_router("/runs", runs_api.router)
# Outside events (resume waiting runs, start subscribed workflows): the triggers app's router.
api.add_router("/events", events_api.router)


@api.get("/approvals", response={200: list[ItemOut], 422: ErrorOut}, tags=["approvals"], summary="Your items")
def list_items(request: HttpRequest, status: str = ItemStatus.PENDING, limit: int = 100) -> Any:
    """status=pending (the default): the items waiting for you to decide, soonest deadline first.
    Any other status (or `all`): the items you may see in that status, newest first."""
    user = request.auth  # type: ignore[attr-defined]
    if status == ItemStatus.PENDING:
        items = access.decidable_items(user)
    elif status == "all":
        items = access.visible_items(user).order_by("-created_at", "-id")
    elif status in ItemStatus.values:
        items = access.visible_items(user).filter(status=status).order_by("-decided_at", "-id")
    else:
        choices = ", ".join([*ItemStatus.values, "all"])
        return Status(
            422,
            {
                "detail": f"status: must be one of {choices}",
                "errors": {"status": f"must be one of {choices}"},
            },
        )
    limit = max(1, min(limit, MAX_ITEMS))
    return Status(200, [item_payload(item) for item in _with_related(items)[:limit]])


def _visible(request: HttpRequest, item_id: int) -> Item:
    """The item if this caller may see it; otherwise Item.DoesNotExist, answered 404.

    Someone else's item is "no such item", exactly like one that does not exist: a 403 would
    confirm that the id is taken, and its reason (who it was reassigned to) would say more.
    Whoever sees the item gets the transitions' 403 with its reason when they may not act.
    """
    return _with_related(access.visible_items(request.auth)).get(pk=item_id)  # type: ignore[attr-defined]


@api.get("/approvals/{item_id}", response={200: ItemOut, 404: ErrorOut}, tags=["approvals"])
def get_item(request: HttpRequest, item_id: int) -> Any:
    """The item, if it is yours to see (404 otherwise, as for an id that does not exist)."""
    return Status(200, item_payload(_visible(request, item_id)))


@api.post(
    "/approvals/{item_id}/decision",
    response={200: ItemOut, 403: ErrorOut, 404: ErrorOut, 409: ConflictOut, 422: ErrorOut},
    tags=["approvals"],
    summary="Approve or reject",
)
def decide(request: HttpRequest, item_id: int, payload: DecisionIn) -> Any:
    """`{"decision": "approve" | "reject", "comment": "..."}`; rejecting needs a comment.
    409 when someone decided first (or the item expired or was cancelled): says who and when."""
    _visible(request, item_id)
    transitions.vote(item_id=item_id, user=request.auth, decision=payload.decision, comment=payload.comment)  # type: ignore[attr-defined]
    return Status(200, item_payload(_with_related(Item.objects.filter(pk=item_id)).get()))


@api.post(
    "/approvals/{item_id}/resolve",
    response={200: ItemOut, 403: ErrorOut, 404: ErrorOut, 409: ConflictOut, 422: ErrorOut},
    tags=["approvals"],
    summary="Retry, skip or abort an exception",
)
def resolve(request: HttpRequest, item_id: int, payload: ResolveIn) -> Any:
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


@api.post(
    "/approvals/{item_id}/reassign",
    response={200: ItemOut, 403: ErrorOut, 404: ErrorOut, 409: ConflictOut, 422: ErrorOut},
    tags=["approvals"],
    summary="Hand an item to someone else",
)
def reassign(request: HttpRequest, item_id: int, payload: ReassignIn) -> Any:
    """`{"to_user": "username", "note": "why"}`: only to someone eligible for the item (its
    assignees, members of its groups, its escalation targets or an admin); anyone else is 422
    naming `to_user`, and nothing changes."""
    user = request.auth  # type: ignore[attr-defined]
    _visible(request, item_id)
    transitions.reassign(item_id=item_id, user=user, to_user=payload.to_user, note=payload.note)
    # The caller handed it on but still sees it (access.can_view), so the answer is the item.
    return Status(200, item_payload(_with_related(Item.objects.filter(pk=item_id)).get()))
