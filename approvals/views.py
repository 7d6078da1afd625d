"""The approvals inbox: what waits for me, exceptions, what was decided, and one item.

Decisions change two partials: an inbox row (`_row.html`) and the body of an item's page
(`_item.html`). The full pages include them, and each POST returns the one its form sits in,
so a decision updates the row or the page in place; the lists' own partials (`_waiting.html`,
`_decided_table.html`) answer htmx filter and page requests. Who may see and decide an
item is approvals.access's call, made here in the views; every change goes through
approvals.transitions, the same functions the API and the ticker use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event
from django_htmx.middleware import HtmxDetails

from approvals import access, transitions
from approvals.models import Item, ItemKind, ItemStatus, Vote
from dashboard import graph, inputs
from orchestration import access as run_access
from orchestration.models import StepKind, StepRun, Workflow

if TYPE_CHECKING:
    from django.contrib.auth.models import User

ITEMS_PER_PAGE = 50
# Who a reassigned item may go to is the transition's rule (access.eligible_assignees); the
# form suggests the same people.
REASSIGN_SUGGESTIONS = 50
DECIDED_ORDER = (F("decided_at").desc(nulls_last=True), "-id")
WAITING_ORDER = (F("deadline").asc(nulls_last=True), "id")


class HtmxHttpRequest(HttpRequest):
    """A request after django-htmx's middleware, as its docs suggest for type checking.

    Every view here is behind login_required, so the user is a signed-in one.
    """

    htmx: HtmxDetails
    user: User


def refusals_as_text(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """For htmx requests, a refusal (403) or a missing item (404) answers with its reason as
    plain text, which static/js/baton.js shows in the page's alert region; a full page load
    gets the styled templates/403.html or 404.html with the same sentence."""

    @wraps(view)
    def wrapper(request: HtmxHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except PermissionDenied as exc:
            if not request.htmx:
                raise
            return _text(str(exc) or "You may not do this.", 403)
        except Http404:
            if not request.htmx:
                raise
            return _text("This item does not exist (any more).", 404)

    return wrapper


def _text(message: str, status: int) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


# ---------------------------------------------------------------------------------------------
# The lists


@dataclass(frozen=True)
class Row:
    """One inbox row: the item, the approvals it has and whether I already voted."""

    item: Item
    approvals: int = 0
    my_vote: str = ""
    notice: str = ""
    errors: dict[str, str] | None = None
    comment: str = ""
    # Whether this person may open the run (orchestration.access): an assignee who may not
    # sees "run #N" without a link to a page that would only answer 403.
    sees_run: bool = False

    @property
    def votes(self) -> bool:
        return self.item.kind in (ItemKind.APPROVAL, ItemKind.GATE)

    @property
    def can_vote(self) -> bool:
        return self.item.is_open and self.votes and not self.my_vote

    @property
    def inline(self) -> bool:
        # Gates and high-risk items are decided on their page, where the exact action shows:
        # nobody should approve an agent's risky action from a one-line summary.
        return self.can_vote and self.item.kind == ItemKind.APPROVAL and self.item.risk != "high"

    @property
    def remaining(self) -> int:
        return max(0, self.item.required - self.approvals)

    @property
    def pips(self) -> list[bool]:
        """One mark per approval needed, filled for those given (N-of-M at a glance)."""
        return [n < self.approvals for n in range(self.item.required)]


def _rows(items: list[Item], user: Any) -> list[Row]:
    """Rows for a page of items, with their votes counted in one query."""
    approvals: dict[int, int] = {}
    mine: dict[int, str] = {}
    votes = Vote.objects.filter(item__in=[i.pk for i in items]).values_list("item_id", "user_id", "decision")
    for item_id, user_id, decision in votes:
        if decision == "approve":
            approvals[item_id] = approvals.get(item_id, 0) + 1
        if user_id == user.pk:
            mine[item_id] = decision
    runs = run_access.visible_among(user, (i.run_id for i in items))
    return [
        Row(item=i, approvals=approvals.get(i.pk, 0), my_vote=mine.get(i.pk, ""), sees_run=i.run_id in runs)
        for i in items
    ]


def _pending(user: Any) -> QuerySet[Item]:
    return access.decidable_items(user).filter(status=ItemStatus.PENDING)


def _tab_counts(user: Any) -> dict[str, int]:
    """Waiting (approvals, gates, manual tasks), exceptions, and overdue, in one query."""
    counts = _pending(user).aggregate(
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


def _partial_or_page(request: HtmxHttpRequest, page: str, partial: str, context: dict[str, Any]) -> HttpResponse:
    response = render(request, partial if request.htmx and not request.htmx.boosted else page, context)
    # The same URL answers with two bodies; caches must not hand one to the other.
    patch_vary_headers(response, ("HX-Request",))
    return response


def _shows_exceptions_tab(user: Any, counts: dict[str, int]) -> bool:
    # Exceptions go to workflow owners; other approvers never get one, so no empty tab for them.
    return bool(counts["exceptions"]) or user.is_superuser or Workflow.objects.filter(owner=user).exists()


def _waiting_page(request: HtmxHttpRequest, tab: str) -> HttpResponse:
    user = request.user
    queryset = _pending(user)
    if tab == "exceptions":
        queryset = queryset.filter(kind=ItemKind.EXCEPTION)
    else:
        queryset = queryset.exclude(kind=ItemKind.EXCEPTION)
    page = Paginator(_list_items(queryset).order_by(*WAITING_ORDER), ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    counts = _tab_counts(user)
    context = {
        "tab": tab,
        "page": page,
        "rows": _rows(list(page.object_list), user),
        "counts": counts,
        "exceptions_tab": _shows_exceptions_tab(user, counts),
    }
    return _partial_or_page(request, "approvals/inbox.html", "approvals/_waiting.html", context)


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
    return _partial_or_page(request, "approvals/decided.html", "approvals/_decided_table.html", context)


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


def _ancestors(steps: list[dict[str, Any]], key: str) -> set[str]:
    """Every step the given step waits on, directly or through others: the steps that led here."""
    after = {s["key"]: [d for d in s.get("after", []) if d != s["key"]] for s in steps}
    found: set[str] = set()
    frontier = list(after.get(key, []))
    while frontier:
        current = frontier.pop()
        if current in found or current not in after:
            continue
        found.add(current)
        frontier.extend(after[current])
    return found


def _only_steps(spec: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """The spec cut down to these steps, with arrows among them only (graph.build draws a
    loop only when the step it goes back to is drawn)."""
    steps = [
        {**step, "after": [d for d in step.get("after", []) if d in keys]}
        for step in spec.get("steps", [])
        if step["key"] in keys
    ]
    return {**spec, "steps": steps}


def next_waiting(user: Any, after: Item) -> Item | None:
    """The item after this one in the inbox order (nearest deadline first), else the first.

    Used once a decision is made, to move the approver on without a trip back to the list.
    """
    # The next of the same tab: exceptions after an exception, everything else otherwise.
    others = _pending(user).exclude(pk=after.pk)
    if after.kind == ItemKind.EXCEPTION:
        others = others.filter(kind=ItemKind.EXCEPTION)
    else:
        others = others.exclude(kind=ItemKind.EXCEPTION)
    others = others.only("pk", "title", "kind", "deadline")
    if after.deadline is None:
        later = others.filter(deadline__isnull=True, pk__gt=after.pk)
    else:
        later = others.filter(
            Q(deadline__gt=after.deadline) | Q(deadline=after.deadline, pk__gt=after.pk) | Q(deadline__isnull=True)
        )
    return later.order_by(*WAITING_ORDER).first() or others.order_by(*WAITING_ORDER).first()


@dataclass
class PanelState:
    """What the action panel of an item page shows after a POST (or nothing, on a plain GET)."""

    notice: str = ""
    level: str = ""  # success | warning | error
    errors: dict[str, str] | None = None
    values: Any = None  # the submitted form data, shown again beside its errors
    form: str = ""  # which of the item's forms the errors belong to
    focus_next: bool = False


def _item_context(request: HtmxHttpRequest, item: Item, state: PanelState | None = None) -> dict[str, Any]:
    state = state or PanelState()
    user = request.user
    run = item.run
    spec = run.version.spec
    steps: list[dict[str, Any]] = list(spec.get("steps", []))
    rows = list(StepRun.objects.filter(run=run, map_index__isnull=True).exclude(kind=StepKind.COMPENSATION))
    heads: dict[str, StepRun] = {}
    for row in sorted(rows, key=lambda r: (r.iteration, r.pk)):
        heads[row.step_key] = row
    step_key = item.step_run.step_key
    step_spec = next((s for s in steps if s["key"] == step_key), {})
    before = _ancestors(steps, step_key)
    sees_run = run_access.can_view_run(user, run)
    votes = list(item.votes.select_related("user"))
    my_vote = next((v for v in votes if v.user_id == user.pk), None)
    can_decide = item.is_open and access.can_decide(user, item)
    acts = can_decide and not (my_vote and item.kind in (ItemKind.APPROVAL, ItemKind.GATE))
    values = state.values
    manual_form = None
    if item.kind == ItemKind.MANUAL:
        data = values if state.form == "submit" else None
        manual_form = inputs.build_form(item.form or {}, data, state.errors if state.form == "submit" else None)
    suggestions: list[Any] = []
    if acts:
        suggestions = list(
            access.eligible_assignees(item).exclude(pk=user.pk).order_by("username")[:REASSIGN_SUGGESTIONS]
        )
    return {
        "item": item,
        "run": run,
        "step": item.step_run,
        "step_spec": step_spec,
        # An approval's or task's input is, unless the step names one, just the earlier steps'
        # outputs, which "Steps that led here" shows already.
        "shows_action": item.kind == ItemKind.GATE or "input" in step_spec,
        "sees_run": sees_run,
        # Someone who sees the item but not the run sees the steps that led here and this one,
        # not what the rest of the run did (or will do) before or after the decision.
        "graph": graph.build(spec if sees_run else _only_steps(spec, before | {step_key}), heads),
        "leading": [heads[s["key"]] for s in steps if s["key"] in before and s["key"] in heads],
        "votes": votes,
        "approvals": sum(1 for v in votes if v.decision == "approve"),
        "my_vote": my_vote,
        "events": list(item.events.select_related("actor")),
        "assigned_users": list(item.users.all()),
        "assigned_groups": list(item.groups.all()),
        "can_decide": can_decide,
        "acts": acts,
        "manual_form": manual_form,
        "suggestions": suggestions,
        "state": state,
        "errors": state.errors or {},
        "values": values if values is not None else {},
        "failed_input": _failed_input(item) if item.kind == ItemKind.EXCEPTION else None,
        "retry_text": _json_text(_failed_input(item)) if item.kind == ItemKind.EXCEPTION else "",
        "next_item": None if acts else next_waiting(user, item),
    }


def _failed_input(item: Item) -> Any:
    """An exception item's action is {input, error}: the input the step failed on."""
    return item.action.get("input") if isinstance(item.action, dict) else item.action


def _json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _load_item(item_id: int) -> Item:
    return Item.objects.select_related(
        "run__workflow", "run__version", "run__started_by", "step_run", "requested_by", "decided_by"
    ).get(pk=item_id)


@require_GET
@login_required
@refusals_as_text
def item_detail(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = _load_item(_get_item(request, item_id).pk)
    return _partial_or_page(request, "approvals/item.html", "approvals/_item.html", _item_context(request, item))


# ---------------------------------------------------------------------------------------------
# Actions: each returns the partial its form sits in (the row, or the item's page body)


def _respond(request: HtmxHttpRequest, item_id: int, state: PanelState, status: int) -> HttpResponse:
    """Answer a POST: the row or the item page in place for htmx; otherwise the page itself."""
    item = _load_item(item_id)
    if not request.htmx:
        if status == 200:
            # Post/redirect/get without JavaScript: the page shows the outcome and the next item.
            messages.success(request, state.notice)
            return redirect("approvals:item", item_id=item.pk)
        return render(request, "approvals/item.html", _item_context(request, item, state), status=status)
    if request.POST.get("place") == "row":
        counted = _rows([item], request.user)[0]
        row = Row(
            item=item,
            approvals=counted.approvals,
            my_vote=counted.my_vote,
            sees_run=counted.sees_run,
            notice=state.notice,
            errors=state.errors,
            comment=(state.values or {}).get("comment", "") if state.errors else "",
        )
        response = render(request, "approvals/_row.html", {"row": row, "level": state.level}, status=status)
    else:
        response = render(request, "approvals/_item.html", _item_context(request, item, state), status=status)
    if status == 200:
        # After the swap: approvals.js moves focus to the next row, the navigation recounts.
        following = next_waiting(request.user, item)
        trigger_client_event(
            response, "approvals:decided", {"item": item.pk, "next": following.pk if following else None}, after="settle"
        )
    return response


def _stale(exc: transitions.AlreadyDecided) -> PanelState:
    # The click came from a page drawn before someone else decided (or the deadline passed):
    # nothing changed, and the person is told who decided and when.
    return PanelState(notice=f"Nothing changed: {exc}.", level="warning", focus_next=True)


def _invalid(exc: transitions.InvalidInput, form: str, values: Any) -> PanelState:
    errors = dict(exc.errors) if getattr(exc, "errors", None) else {"": str(exc)}
    return PanelState(errors=errors, values=values, form=form, level="error")


@require_POST
@login_required
@refusals_as_text
def decide(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = _get_item(request, item_id)
    decision = request.POST.get("decision", "")
    comment = request.POST.get("comment", "").strip()
    values = {"comment": comment}
    if decision not in ("approve", "reject"):
        state = PanelState(errors={"decision": "Choose approve or reject."}, values=values, form="decide", level="error")
        return _respond(request, item.pk, state, 422)
    try:
        transitions.vote(item_id=item.pk, user=request.user, decision=decision, comment=comment)
    except transitions.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    except transitions.AlreadyDecided as exc:
        return _respond(request, item.pk, _stale(exc), 409)
    except transitions.InvalidInput as exc:
        return _respond(request, item.pk, _invalid(exc, "decide", values), 422)
    notice = "You approved this." if decision == "approve" else "You rejected this."
    return _respond(request, item.pk, PanelState(notice=notice, level="success", focus_next=True), 200)


@require_POST
@login_required
@refusals_as_text
def submit(request: HtmxHttpRequest, item_id: int) -> HttpResponse:
    item = _get_item(request, item_id)
    # Form text becomes JSON values here; whether they are acceptable (required, type, enum)
    # is submit_manual's call, the same check the API goes through.
    data, errors = inputs.parse(item.form or {}, request.POST)
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
    except transitions.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    except transitions.AlreadyDecided as exc:
        return _respond(request, item.pk, _stale(exc), 409)
    except transitions.InvalidInput as exc:
        return _respond(request, item.pk, _invalid(exc, "submit", request.POST), 422)
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
    if action not in ("retry", "skip", "abort"):
        errors["action"] = "Choose retry, skip or abort."
    new_input = None
    if action == "retry" and values["input"].strip():
        new_input = _parse_json(values["input"], "input", errors)
        if new_input == _failed_input(item):
            new_input = None  # unchanged: a plain retry, not one "with edited input"
    output = None
    if action == "skip" and values["output"].strip():
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
    except transitions.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    except transitions.AlreadyDecided as exc:
        return _respond(request, item.pk, _stale(exc), 409)
    except transitions.InvalidInput as exc:
        return _respond(request, item.pk, _invalid(exc, action, values), 422)
    regated = action == "retry" and StepRun.objects.filter(pk=item.step_run_id, waiting_for="gate").exists()
    notice = {
        "retry": (
            "The step waits at its gate again: its approvers must approve this input before it runs."
            if regated
            else "The step is running again."
        ),
        "skip": "The step was skipped; the run goes on with the output you gave.",
        "abort": "The run was aborted.",
    }[action]
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
    except transitions.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from exc
    except transitions.AlreadyDecided as exc:
        return _respond(request, item.pk, _stale(exc), 409)
    except transitions.InvalidInput as exc:
        return _respond(request, item.pk, _invalid(exc, "reassign", values), 422)
    notice = f"Reassigned to {values['to_user']}."
    return _respond(request, item.pk, PanelState(notice=notice, level="success", focus_next=True), 200)
