"""The approvals inbox: what waits for me, exceptions, what was decided, and one item.

Decisions change two partials: an inbox row (`_row.html`) and the body of an item's page
(`_item.html`). The full pages include them, and each POST returns the one its form sits in,
so a decision updates the row or the page in place; the lists' own partials (`_waiting.html`,
`_decided_table.html`) answer htmx filter and page requests. Who may see and decide an
item is approvals.access's call, made here in the views; every change goes through
approvals.transitions, the same functions the API and the ticker use, and its refusals get
the status approvals.errors gives them. What a row and an item's body show comes from
approvals.read_models, which the page, the htmx answer and the live push share.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from approvals import access, read_models, transitions
from approvals.errors import REFUSALS, status_for
from approvals.models import Decision, Item, ItemKind, ItemStatus, Vote
from approvals.read_models import WAITING_ORDER, PanelState
from dashboard import inputs
from dashboard.web import HtmxHttpRequest, partial_or_page, wants_partial
from orchestration import access as run_access
from orchestration.models import StepRun, Workflow
from orchestration.status import WaitingFor

ITEMS_PER_PAGE = 50
DECIDED_ORDER = (F("decided_at").desc(nulls_last=True), "-id")


def refusals_as_text(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """For htmx requests, a refusal (403) or a missing item (404) answers with its reason as
    plain text, which static/js/baton.js shows in the page's alert region; a full page load
    gets the styled templates/403.html or 404.html with the same sentence."""

    @wraps(view)
    def wrapper(request: HtmxHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except PermissionDenied as exc:
            if not wants_partial(request):
                raise
            return _text(str(exc) or "You may not do this.", 403)
        except Http404:
            if not wants_partial(request):
                raise
            return _text("This item does not exist (any more).", 404)

    return wrapper


def _text(message: str, status: int) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


# ---------------------------------------------------------------------------------------------
# The lists


def _tab_counts(user: Any) -> dict[str, int]:
    """Waiting (approvals, gates, manual tasks), exceptions, and overdue, in one query."""
    counts = read_models.pending_items(user).aggregate(
        waiting=Count("pk", filter=~Q(kind=ItemKind.EXCEPTION)),
        exceptions=Count("pk", filter=Q(kind=ItemKind.EXCEPTION)),
        overdue=Count("pk", filter=~Q(kind=ItemKind.EXCEPTION) & Q(deadline__lt=timezone.now())),
    )
    return {name: value or 0 for name, value in counts.items()}


def _list_items(queryset: QuerySet[Item]) -> QuerySet[Item]:
    # The list needs no rendered action or form schema: those can be large agent data.
    return queryset.select_related("run__workflow", "requested_by", "decided_by").defer(
        "action", "form", "submitted", "escalate_to"
    )


def _shows_exceptions_tab(user: Any, counts: dict[str, int]) -> bool:
    # Exceptions go to workflow owners; other approvers never get one, so no empty tab for them.
    return bool(counts["exceptions"]) or user.is_superuser or Workflow.objects.filter(owner=user).exists()


def _waiting_page(request: HtmxHttpRequest, tab: str) -> HttpResponse:
    user = request.user
    queryset = read_models.pending_items(user)
    if tab == "exceptions":
        queryset = queryset.filter(kind=ItemKind.EXCEPTION)
    else:
        queryset = queryset.exclude(kind=ItemKind.EXCEPTION)
    page = Paginator(_list_items(queryset).order_by(*WAITING_ORDER), ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    counts = _tab_counts(user)
    context = {
        "tab": tab,
        "page": page,
        "rows": read_models.rows(list(page.object_list), user),
        "counts": counts,
        "exceptions_tab": _shows_exceptions_tab(user, counts),
    }
    return partial_or_page(request, "approvals/inbox.html", "approvals/_waiting.html", context)


@require_GET
@login_required
def inbox(request: HtmxHttpRequest) -> HttpResponse:
    """Waiting for me: approvals, gates and manual tasks, the nearest deadline first."""
    return _waiting_page(request, "waiting")


@require_GET
@login_required
def exceptions(request: HtmxHttpRequest) -> HttpResponse:
    """Steps that failed for good in the workflows I own, waiting for retry, skip or abort."""
    return _waiting_page(request, "exceptions")


@require_GET
@login_required
def decided(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    queryset = access.visible_items(user).exclude(status=ItemStatus.PENDING)
    kind = request.GET.get("kind", "")
    if kind in ItemKind.values:
        queryset = queryset.filter(kind=kind)
    status = request.GET.get("status", "")
    if status in ItemStatus.values and status != ItemStatus.PENDING:
        queryset = queryset.filter(status=status)
    workflow_key = request.GET.get("workflow", "")
    if workflow_key:
        queryset = queryset.filter(run__workflow__key=workflow_key)
    mine = request.GET.get("mine", "") == "1"
    if mine:
        # Mine: I made the final decision, or cast one of the votes that made it.
        voted = Vote.objects.filter(item=OuterRef("pk"), user=user)
        queryset = queryset.filter(Q(decided_by=user) | Exists(voted))
    page = Paginator(_list_items(queryset).order_by(*DECIDED_ORDER), ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    filters = request.GET.copy()
    filters.pop("page", None)
    counts = _tab_counts(user)
    items = list(page.object_list)
    context = {
        "tab": "decided",
        "page": page,
        "items": items,
        # The runs among these the person may open; the others are named without a link.
        "visible_runs": run_access.visible_among(user, (i.run_id for i in items)),
        "counts": counts,
        "exceptions_tab": _shows_exceptions_tab(user, counts),
        "kinds": ItemKind.choices,
        "kind": kind,
        "statuses": [(v, label) for v, label in ItemStatus.choices if v != ItemStatus.PENDING],
        "status": status,
        # Only workflows of items this user sees: the filter must not list every workflow.
        "workflows": Workflow.objects.filter(pk__in=access.visible_items(user).values("run__workflow")).values_list(
            "key", "name"
        ),
        "workflow_key": workflow_key,
        "mine": mine,
        "filter_query": filters.urlencode(),
        "filtered": bool(kind or status or workflow_key or mine),
    }
    return partial_or_page(request, "approvals/decided.html", "approvals/_decided_table.html", context)


@require_GET
@login_required
def nav_count(request: HtmxHttpRequest) -> HttpResponse:
    """The number beside "Approvals" in the navigation (approvals.context_processors)."""
    return render(request, "approvals/_nav_count.html")


# ---------------------------------------------------------------------------------------------
# One item


def _get_item(request: HtmxHttpRequest, item_id: int) -> Item:
    # 404 for no such item, 403 for someone who may not decide it: both from the access module.
    return access.get_item_for_user(request.user, item_id)


@require_GET
@login_required
@refusals_as_text
def item_detail(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = read_models.load_item(_get_item(request, item_id).pk)
    return partial_or_page(request, "approvals/item.html", "approvals/_item.html", read_models.item_page(item, request.user))


# ---------------------------------------------------------------------------------------------
# Actions: each returns the partial its form sits in (the row, or the item's page body)


def _respond(request: HtmxHttpRequest, item_id: int, state: PanelState, status: int) -> HttpResponse:
    """Answer a POST: the row or the item page in place for htmx; otherwise the page itself."""
    item = read_models.load_item(item_id)
    if not wants_partial(request):
        if status == 200:
            # Post/redirect/get without JavaScript: the page shows the outcome and the next item.
            messages.success(request, state.notice)
            return redirect("approvals:item", item_id=item.pk)
        return render(request, "approvals/item.html", read_models.item_page(item, request.user, state), status=status)
    if request.POST.get("place") == "row":
        row = replace(
            read_models.rows([item], request.user)[0],
            notice=state.notice,
            errors=state.errors,
            comment=(state.values or {}).get("comment", "") if state.errors else "",
        )
        response = render(request, "approvals/_row.html", {"row": row, "level": state.level}, status=status)
    else:
        response = render(request, "approvals/_item.html", read_models.item_page(item, request.user, state), status=status)
    if status == 200:
        # After the swap: approvals.js moves focus to the next row, the navigation recounts.
        following = read_models.next_waiting(request.user, item)
        trigger_client_event(
            response, "approvals:decided", {"item": item.pk, "next": following.pk if following else None}, after="settle"
        )
    return response


def _refused(request: HtmxHttpRequest, item_id: int, exc: Exception, form: str, values: Any) -> HttpResponse:
    """Answer a refusal of approvals.transitions with the status approvals.errors gives it."""
    status = status_for(exc)
    if isinstance(exc, transitions.NotAllowed):
        # refusals_as_text words it for htmx; a full page load gets templates/403.html.
        raise PermissionDenied(str(exc)) from exc
    if isinstance(exc, transitions.InvalidInput):
        # The form comes back with what was sent, each problem beside its field.
        field_errors = dict(exc.errors) if exc.errors else {"": str(exc)}
        state = PanelState(errors=field_errors, values=values, form=form, level="error")
    else:
        # The click came from a page drawn before someone else decided (or the deadline
        # passed, or the run moved on): nothing changed, and the person is told what did.
        state = PanelState(notice=f"Nothing changed: {exc}.", level="warning", focus_next=True)
    return _respond(request, item_id, state, status)


@require_POST
@login_required
@refusals_as_text
def decide(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = _get_item(request, item_id)
    decision = request.POST.get("decision", "")
    comment = request.POST.get("comment", "").strip()
    values = {"comment": comment}
    if decision not in (Decision.APPROVE, Decision.REJECT):
        state = PanelState(errors={"decision": "Choose approve or reject."}, values=values, form="decide", level="error")
        return _respond(request, item.pk, state, 422)
    try:
        transitions.vote(item_id=item.pk, user=request.user, decision=decision, comment=comment)
    except REFUSALS as exc:
        return _refused(request, item.pk, exc, "decide", values)
    notice = "You approved this." if decision == Decision.APPROVE else "You rejected this."
    return _respond(request, item.pk, PanelState(notice=notice, level="success", focus_next=True), 200)


@require_POST
@login_required
@refusals_as_text
def submit(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = _get_item(request, item_id)
    # Form text becomes JSON values here; whether they are acceptable (required, type, enum)
    # is submit_manual's call, the same check the API goes through.
    data, errors = inputs.parse(item.form or {}, request.POST, item_lists=False)
    if errors:
        # Text that is no number or no JSON stops here; the rest is checked all the same, so
        # the person sees every problem at once rather than one round trip per field.
        try:
            transitions.clean_form(item.form or {}, data)
        except transitions.InvalidInput as exc:
            errors = {**exc.errors, **errors}
        return _respond(request, item.pk, PanelState(errors=errors, values=request.POST, form="submit", level="error"), 422)
    try:
        transitions.submit_manual(item_id=item.pk, user=request.user, data=data)
    except REFUSALS as exc:
        return _refused(request, item.pk, exc, "submit", request.POST)
    return _respond(request, item.pk, PanelState(notice="Task submitted.", level="success", focus_next=True), 200)


def _parse_json(text: str, name: str, errors: dict[str, str]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        errors[name] = f"Not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})."
        return None
    except RecursionError:
        errors[name] = "Nested too deeply."
        return None


@require_POST
@login_required
@refusals_as_text
def resolve(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = _get_item(request, item_id)
    action = request.POST.get("action", "")
    values = {name: request.POST.get(name, "") for name in ("input", "output", "comment")}
    errors: dict[str, str] = {}
    if action not in (Decision.RETRY, Decision.SKIP, Decision.ABORT):
        errors["action"] = "Choose retry, skip or abort."
    new_input = None
    if action == Decision.RETRY and values["input"].strip():
        new_input = _parse_json(values["input"], "input", errors)
        if new_input == read_models.failed_input(item):
            new_input = None  # unchanged: a plain retry, not one "with edited input"
    output = None
    if action == Decision.SKIP and values["output"].strip():
        output = _parse_json(values["output"], "output", errors)
    if errors:
        return _respond(request, item.pk, PanelState(errors=errors, values=values, form=action, level="error"), 422)
    try:
        transitions.resolve_exception(
            item_id=item.pk,
            user=request.user,
            action=action,
            input=new_input,
            output=output,
            comment=values["comment"].strip(),
        )
    except REFUSALS as exc:
        return _refused(request, item.pk, exc, action, values)
    regated = action == Decision.RETRY and StepRun.objects.filter(pk=item.step_run_id, waiting_for=WaitingFor.GATE).exists()
    notices: dict[str, str] = {
        Decision.RETRY: (
            "The step waits at its gate again: its approvers must approve this input before it runs."
            if regated
            else "The step is running again."
        ),
        Decision.SKIP: "The step was skipped; the run goes on with the output you gave.",
        Decision.ABORT: "The run was aborted.",
    }
    notice = notices[action]
    return _respond(request, item.pk, PanelState(notice=notice, level="success", focus_next=True), 200)


@require_POST
@login_required
@refusals_as_text
def reassign(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = _get_item(request, item_id)
    values = {"to_user": request.POST.get("to_user", "").strip(), "note": request.POST.get("note", "").strip()}
    try:
        # A username: the transition finds the person and checks they may take the item.
        item = transitions.reassign(item_id=item.pk, user=request.user, to_user=values["to_user"], note=values["note"])
    except REFUSALS as exc:
        return _refused(request, item.pk, exc, "reassign", values)
    notice = f"Reassigned to {values['to_user']}."
    return _respond(request, item.pk, PanelState(notice=notice, level="success", focus_next=True), 200)
