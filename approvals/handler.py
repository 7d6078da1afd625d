"""The engine's hand-off to people: an inbox item when a step starts waiting, cancelled when it stops.

orchestration.waiting calls this handler inside the engine's transaction (the run's row is
locked), so the item and its "created" audit row commit together with the step's new state,
or not at all. Emails go out after commit.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals import notifications
from approvals.models import (
    Decision,
    Item,
    ItemEvent,
    ItemEventKind,
    ItemKind,
    ItemStatus,
    OnReject,
    OnTimeout,
)
from orchestration.durations import parse_duration
from orchestration.specs import load_agent, spec_for
from orchestration.status import Risk
from orchestration.templating import TemplateError, render
from orchestration.work import Work


def step_options(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    """The settings of an approval, manual task or gate in a step's spec ({} for none)."""
    if kind in (ItemKind.APPROVAL, ItemKind.MANUAL, ItemKind.GATE):
        return spec.get(kind) or {}
    return {}


def resolve_people(people: dict[str, Any] | None) -> tuple[list[Any], list[Group]]:
    """Active users and groups named in {users: [...], groups: [...]}; unknown names are dropped
    (they were checked when the workflow was published, but may have been deleted since)."""
    people = people or {}
    users = list(get_user_model().objects.filter(username__in=people.get("users") or [], is_active=True))
    groups = list(Group.objects.filter(name__in=people.get("groups") or []))
    return users, groups


def describe_people(users: list[Any], groups: list[Group]) -> str:
    names = [u.get_username() for u in users] + [f"group {g.name}" for g in groups]
    return ", ".join(names) or "admins only"


def duration_after(now: datetime, value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    return now + timedelta(seconds=parse_duration(value))


def reminder_time(now: datetime, deadline: datetime | None, remind_before: Any) -> datetime | None:
    """When to remind: remind_before ahead of the deadline; never if that is already past."""
    if deadline is None or remind_before in (None, ""):
        return None
    at = deadline - timedelta(seconds=parse_duration(remind_before))
    return at if at > now else None


def _text(template: Any, context: dict[str, Any], problems: list[str]) -> str:
    if template is None or template == "":
        return ""
    try:
        value = render(template, context)
    except TemplateError as exc:
        # The step waits all the same: a person seeing the raw template can still decide, a
        # failed transaction would leave the run stuck.
        problems.append(f"{template!r} {exc}")
        return str(template)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class PeopleHandler:
    """Registered with orchestration.waiting in ApprovalsConfig.ready()."""

    def open(self, work: Work, *, run: Any, step: Any, spec: dict[str, Any], context: dict[str, Any], kind: str) -> None:
        now = timezone.now()
        options = step_options(spec, kind)
        problems: list[str] = []
        owner = run.workflow.owner
        # The agent the step chose (a step may choose it at run time), else the one it names.
        agent_name = step.agent_name or spec.get("agent") or ""
        agent = load_agent(agent_name) if agent_name else None
        action: Any = step.input
        error = ""
        if kind == ItemKind.APPROVAL:
            title = _text(options.get("title"), context, problems)
            details = _text(options.get("details"), context, problems)
            people = options.get("approvers")
        elif kind == ItemKind.GATE:
            title = (
                _text(options.get("title"), context, problems)
                or f"Run {agent_name} for step '{step.step_key}'?"
            )
            risk = agent.risk if agent else Risk.LOW
            details = f"Agent {agent_name} ({risk} risk) waits for approval of exactly this action."
            retried = (
                Item.objects.filter(step_run=step, kind=ItemKind.EXCEPTION, decision=Decision.RETRY)
                .select_related("decided_by")
                .order_by("-id")
                .first()
            )
            if retried is not None:
                # An approver must know this is not the action an earlier approval covered.
                who = retried.decided_by.get_username() if retried.decided_by else "someone"
                details += (
                    f" The step failed and {who} retried it with the input shown here: no earlier"
                    " approval covers it."
                )
            people = options.get("approvers")
        elif kind == ItemKind.MANUAL:
            title = _text(options.get("title"), context, problems)
            details = _text(options.get("instructions"), context, problems)
            people = options.get("assignees")
        elif kind == ItemKind.EXCEPTION:
            error = step.error
            title = f"Step '{step.step_key}' failed: {error}"
            details = (
                "The step failed for good. Retry it (optionally with edited input), skip it by "
                "supplying the output later steps will see, or abort the run."
            )
            action = {"input": step.input, "error": error}
            people = None  # exceptions belong to the workflow's owner
        else:
            raise ValueError(f"unknown kind of waiting step: {kind!r}")
        if problems:
            details += "\n\n(Baton could not fill in: " + "; ".join(problems) + ")"
        users, groups = resolve_people(people)
        if not users and not groups and owner is not None:
            users = [owner]
        deadline = duration_after(now, options.get("deadline"))
        if kind == ItemKind.MANUAL:
            on_timeout = options.get("on_timeout", OnTimeout.ESCALATE if options.get("escalate_to") else OnTimeout.FAIL)
        else:
            on_timeout = options.get("on_timeout", OnTimeout.REJECT)
        item = Item.objects.create(
            kind=kind,
            step_run=step,
            run=run,
            title=(title or f"Step '{step.step_key}'")[:300],
            details=details,
            action=action,
            error=error,
            form=(options.get("form") or {}) if kind == ItemKind.MANUAL else {},
            required=options.get("required", 1) if kind in (ItemKind.APPROVAL, ItemKind.GATE) else 1,
            requested_by_id=run.started_by_id,
            allow_self_approval=bool(spec_for(run).get("allow_self_approval", False)),
            risk=agent.risk if agent else Risk.LOW,
            deadline=deadline,
            remind_at=reminder_time(now, deadline, options.get("remind_before")),
            on_timeout=on_timeout,
            escalate_to=options.get("escalate_to") or {},
            on_reject=options.get("on_reject", OnReject.FAIL),
        )
        item.users.set(users)
        item.groups.set(groups)
        ItemEvent.objects.create(
            item=item,
            kind=ItemEventKind.CREATED,
            note=f"assigned to {describe_people(users, groups)}"
            + (f"; deadline {deadline:%Y-%m-%d %H:%M %Z}" if deadline else ""),
            data={
                "users": [u.get_username() for u in users],
                "groups": [g.name for g in groups],
                "deadline": deadline.isoformat() if deadline else None,
            },
        )
        work.items.add(item.pk)
        notifications.send_on_commit(notifications.notify_assigned, item.pk)

    def close(self, work: Work, *, step_ids: list[int], reason: str) -> None:
        # Called by the engine under the run's lock, and every item transition takes that lock
        # first, so nothing decides these items between the read and the update.
        now = timezone.now()
        ids = list(
            Item.objects.filter(step_run_id__in=step_ids, status=ItemStatus.PENDING).values_list(
                "pk", flat=True
            )
        )
        if not ids:
            return
        Item.objects.filter(pk__in=ids, status=ItemStatus.PENDING).update(
            status=ItemStatus.CANCELLED, decided_at=now, comment=reason
        )
        ItemEvent.objects.bulk_create(
            [ItemEvent(item_id=pk, kind=ItemEventKind.CANCELLED, note=reason) for pk in ids]
        )
        work.items.update(ids)
