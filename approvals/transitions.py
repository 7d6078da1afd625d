"""Every change to an inbox item goes through a function here.

Views, the API, the ticker's deadline sweep and tests all call these. Each function takes the
run's row lock first (orchestration.transitions.lock_run), then the item's row: the same order
as the engine's own paths (a run cancelled while someone clicks approve), so two transactions
never wait on each other in a cycle. Under those locks it checks the item is still pending,
decides it with compare-and-set, appends ItemEvent rows and resumes the engine, all in one
transaction; emails go out after commit.

Errors (views and the API map them to status codes):
- NotAllowed (403): this person may not act on this item.
- AlreadyDecided (409): the item is no longer pending (decided, submitted, resolved, expired,
  cancelled); the message says who and when, or why.
- InvalidInput (422): what was sent is wrong; `errors` maps each field to its problem.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from django.contrib.auth import get_user_model
from django.db.models import F, Q
from django.utils import timezone

from approvals import access, notifications
from approvals.access import Person
from approvals.handler import describe_people, reminder_time, resolve_people, step_options
from approvals.models import (
    Decision,
    Item,
    ItemEvent,
    ItemEventKind,
    ItemKind,
    ItemStatus,
    OnReject,
    OnTimeout,
    Vote,
)
from orchestration import limits
from orchestration import transitions as runs
from orchestration.durations import parse_duration
from orchestration.spec import INPUT_TYPES, check_input_value, value_from_text
from orchestration.specs import step_spec
from orchestration.status import StepStatus
from orchestration.work import Work

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger("baton.approvals")

DECISIONS = (Decision.APPROVE, Decision.REJECT)
PAST: dict[str, str] = {Decision.APPROVE: "approved", Decision.REJECT: "rejected"}
EXCEPTION_ACTIONS = (Decision.RETRY, Decision.SKIP, Decision.ABORT)
BATCH = 200


class NotAllowed(PermissionError):
    """This person may not act on this item (403)."""


class AlreadyDecided(Exception):
    """The item is no longer pending (409): someone decided first, or it expired or was cancelled."""

    def __init__(self, item: Item, message: str | None = None) -> None:
        self.item = item
        self.status = item.status
        self.decided_by = item.decided_by
        self.decided_at = item.decided_at
        super().__init__(message or describe_outcome(item))


class InvalidInput(ValueError):
    """What was sent is wrong (422); errors maps each field name to what is wrong with it."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{name}: {problem}" for name, problem in errors.items()))


def _check_text(text: str, name: str) -> None:
    """Comments and notes: at most limits.MAX_COMMENT_CHARS, nothing that cannot be stored."""
    try:
        limits.check_text(text, field=name)
    except ValueError as exc:
        raise InvalidInput({name: str(exc).removeprefix(f"{name}: ")}) from None


def _check_value(value: Any, name: str) -> None:
    """Values people type for a step (edited input, supplied output, form fields)."""
    try:
        limits.check_json_value(value, field=name, max_bytes=limits.max_input_bytes())
    except ValueError as exc:
        raise InvalidInput({name: str(exc).removeprefix(f"{name}: ")}) from None


def _at(value: datetime | None) -> str:
    if value is None:
        return "an unknown time"
    local = timezone.localtime(value)
    if local.date() == timezone.localtime().date():
        return f"{local:%H:%M}"
    return f"{local:%Y-%m-%d %H:%M}"


def describe_outcome(item: Item) -> str:
    """Why an item can no longer be acted on, e.g. "already approved by bob at 14:02"."""
    who = item.decided_by.get_username() if item.decided_by else "nobody"
    if item.status in (ItemStatus.APPROVED, ItemStatus.REJECTED, ItemStatus.SUBMITTED):
        return f"already {item.status} by {who} at {_at(item.decided_at)}"
    if item.status == ItemStatus.RESOLVED:
        return f"already resolved ({item.decision}) by {who} at {_at(item.decided_at)}"
    if item.status == ItemStatus.EXPIRED:
        return f"expired at {_at(item.decided_at)}: {item.comment}"
    if item.status == ItemStatus.CANCELLED:
        return f"cancelled: {item.comment}"
    return f"is {item.status}"


# ---------------------------------------------------------------------------------------------
# Shared steps


def _lock(work: Work, item_id: int) -> Item:
    """Lock the run, then the item (raises Item.DoesNotExist); the change tells the live push."""
    work.items.add(item_id)
    run_id = Item.objects.values_list("run_id", flat=True).get(pk=item_id)
    run = runs.lock_run(run_id)
    item = Item.objects.select_for_update(no_key=True).get(pk=item_id)
    item.run = run
    return item


def _check_allowed(user: Person, item: Item) -> User:
    """The user, if they may act on this item (anonymous visitors never may)."""
    if access.can_decide(user, item):
        return cast("User", user)
    if not user.is_authenticated:
        raise NotAllowed("Only this item's assignees or an admin may act on it.")
    raise NotAllowed(access.refusal(user, item))


def _check_open(item: Item) -> None:
    if item.status != ItemStatus.PENDING:
        raise AlreadyDecided(item)
    if item.step_run.status != StepStatus.WAITING:
        # Resolved some other way (an operator, a direct engine call): nothing left to decide.
        raise AlreadyDecided(item, f"the step no longer waits (it is {item.step_run.status})")


def _close(
    item: Item,
    *,
    status: str,
    decision: str,
    by: User | None,
    comment: str,
    now: datetime,
    submitted: Any = None,
) -> None:
    """Move the item out of pending with compare-and-set: one row updated means we decided it."""
    won = Item.objects.filter(pk=item.pk, status=ItemStatus.PENDING).update(
        status=status, decision=decision, decided_by=by, decided_at=now, comment=comment, submitted=submitted
    )
    if not won:
        item.refresh_from_db()
        raise AlreadyDecided(item)
    item.status, item.decision, item.decided_by, item.decided_at = status, decision, by, now
    item.comment, item.submitted = comment, submitted


def _event(
    item: Item, kind: str, *, actor: User | None = None, note: str = "", data: dict[str, Any] | None = None
) -> None:
    ItemEvent.objects.create(item=item, kind=kind, actor=actor, note=note, data=data or {})


def _name(user: User | None) -> str:
    return user.get_username() if user is not None else "nobody"


def _resume_decision(item: Item, *, outcome: str, by: User | None, comment: str, now: datetime) -> None:
    """Hand an approval's or gate's outcome to the engine (same transaction)."""
    # A timeout has no decider: its comment says what happened.
    why = comment if by is None else f"{PAST[outcome]} by {_name(by)}" + (f": {comment}" if comment else "")
    if item.kind == ItemKind.GATE:
        if outcome == Decision.APPROVE:
            runs.release_gate(step_run_id=item.step_run_id, actor=by, note=why)
        else:
            runs.refuse_gate(step_run_id=item.step_run_id, actor=by, reason=why)
        return
    if outcome == Decision.REJECT and item.on_reject != OnReject.CONTINUE:
        runs.resolve_waiting_step(
            step_run_id=item.step_run_id, failed=True, error=why, actor=by, expected_kind=ItemKind.APPROVAL
        )
        return
    output = {
        "decision": outcome,
        "decided_by": by.get_username() if by is not None else None,
        "comment": comment,
        "decided_at": now.isoformat(),
    }
    runs.resolve_waiting_step(
        step_run_id=item.step_run_id, output=output, actor=by, expected_kind=ItemKind.APPROVAL
    )


# ---------------------------------------------------------------------------------------------
# Approvals and gates


def vote(*, item_id: int, user: Person, decision: str, comment: str = "") -> Item:
    """An approver approves or rejects. One reject decides; `required` distinct approvals decide.

    The same person voting again changes nothing: repeating their decision returns the item
    as it is, a different decision is refused with AlreadyDecided (a vote cannot be changed).
    """
    comment = (comment or "").strip()
    now = timezone.now()
    with runs.change() as work:
        item = _lock(work, item_id)
        user = _check_allowed(user, item)
        _check_open(item)
        _check_text(comment, "comment")
        if item.kind not in (ItemKind.APPROVAL, ItemKind.GATE):
            raise InvalidInput(
                {"decision": f"a {item.get_kind_display().lower()} is not approved or rejected"}
            )
        if decision not in DECISIONS:
            raise InvalidInput({"decision": "must be 'approve' or 'reject'"})
        if decision == Decision.REJECT and not comment:
            raise InvalidInput({"comment": "say why you reject it"})
        earlier = Vote.objects.filter(item=item, user=user).first()
        if earlier is not None:
            if earlier.decision == decision:
                return item
            raise AlreadyDecided(
                item,
                f"you already voted to {earlier.decision} at {_at(earlier.created_at)}; a vote cannot be changed",
            )
        Vote.objects.create(item=item, user=user, decision=decision, comment=comment)
        approvals = Vote.objects.filter(item=item, decision=Decision.APPROVE).count()
        _event(
            item,
            ItemEventKind.VOTED,
            actor=user,
            note=f"{PAST[decision]}" + (f": {comment}" if comment else ""),
            data={"decision": decision, "approvals": approvals, "required": item.required},
        )
        if decision == Decision.REJECT or approvals >= item.required:
            status = ItemStatus.APPROVED if decision == Decision.APPROVE else ItemStatus.REJECTED
            _close(item, status=status, decision=decision, by=user, comment=comment, now=now)
            _event(
                item,
                ItemEventKind.DECIDED,
                actor=user,
                note=f"{status} by {_name(user)}",
                data={"decision": decision},
            )
            _resume_decision(item, outcome=decision, by=user, comment=comment, now=now)
            notifications.send_on_commit(notifications.notify_outcome, item.pk)
    return item


# ---------------------------------------------------------------------------------------------
# Manual tasks

def clean_form(form: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """Validate a manual task's submission against its form schema; the values it stores.

    Every field of the form is in the result (its default, False for an unticked checkbox, or
    None); fields the form does not have are ignored (a page's CSRF token, for one). Raises
    InvalidInput with one message per bad field.
    """
    if not isinstance(data, Mapping):
        raise InvalidInput({"data": "must be a mapping of field names to values"})
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, definition in form.items():
        definition = definition or {}
        kind = definition.get("type", "string")
        raw = data.get(name)
        if isinstance(raw, str):
            raw = raw.strip()
        if raw is None or raw == "":
            if "default" in definition:
                values[name] = definition["default"]
            elif definition.get("required"):
                errors[name] = "required"
            else:
                values[name] = False if kind == "boolean" else None
            continue
        try:
            value = value_from_text(kind, raw)
        except ValueError:
            errors[name] = f"expected {kind}"
            continue
        problem = check_input_value(definition, value) if kind in INPUT_TYPES else f"unknown type {kind!r}"
        if problem is None:
            try:
                limits.check_json_value(value, field=name, max_bytes=limits.max_input_bytes())
            except ValueError as exc:
                problem = str(exc).removeprefix(f"{name}: ")
        if problem:
            errors[name] = problem
        else:
            values[name] = value
    if errors:
        raise InvalidInput(errors)
    return values


def submit_manual(*, item_id: int, user: Person, data: Any) -> Item:
    """An assignee submits a manual task's form: the validated data is the step's output."""
    now = timezone.now()
    with runs.change() as work:
        item = _lock(work, item_id)
        user = _check_allowed(user, item)
        _check_open(item)
        if item.kind != ItemKind.MANUAL:
            raise InvalidInput({"data": f"a {item.get_kind_display().lower()} has no form to submit"})
        values = clean_form(item.form, data)
        _close(
            item,
            status=ItemStatus.SUBMITTED,
            decision=Decision.SUBMIT,
            by=user,
            comment="",
            now=now,
            submitted=values,
        )
        _event(
            item,
            ItemEventKind.SUBMITTED,
            actor=user,
            note=f"submitted by {_name(user)}",
            data={"fields": sorted(values)},
        )
        runs.resolve_waiting_step(
            step_run_id=item.step_run_id, output=values, actor=user, expected_kind=ItemKind.MANUAL
        )
        notifications.send_on_commit(notifications.notify_outcome, item.pk)
    return item


# ---------------------------------------------------------------------------------------------
# Exceptions


def resolve_exception(
    *, item_id: int, user: Person, action: str, input: Any = None, output: Any = None, comment: str = ""
) -> Item:
    """The workflow's owner (or an admin) handles a step that failed for good.

    retry: run the step again, with `input` instead of its old input when given; skip: the step
    succeeds with `output`; abort: the run fails (compensating if it undoes steps).
    """
    comment = (comment or "").strip()
    now = timezone.now()
    with runs.change() as work:
        item = _lock(work, item_id)
        user = _check_allowed(user, item)
        _check_open(item)
        _check_text(comment, "comment")
        if action == Decision.RETRY and input is not None:
            _check_value(input, "input")
        if action == Decision.SKIP:
            _check_value(output, "output")
        if item.kind != ItemKind.EXCEPTION:
            raise InvalidInput({"action": f"a {item.get_kind_display().lower()} is not an exception"})
        if action not in EXCEPTION_ACTIONS:
            raise InvalidInput({"action": "must be 'retry', 'skip' or 'abort'"})
        edited = action == Decision.RETRY and input is not None
        if edited and (item.step_run.items_total or step_spec(item.run, item.step_run.step_key).get("for_each")):
            # A map's retry reruns its failed items with the inputs they were given (and, if
            # gated, approved); a new head input would change nothing they do.
            raise InvalidInput({"input": "a for_each step's items keep their own inputs; retry it without editing"})
        # The item is closed before the engine moves: aborting cancels the run's waiting steps,
        # and their pending items with them, which must not include this one.
        _close(item, status=ItemStatus.RESOLVED, decision=action, by=user, comment=comment, now=now)
        done: dict[str, str] = {
            Decision.RETRY: "retried" + (" with edited input" if edited else ""),
            Decision.SKIP: "skipped",
            Decision.ABORT: "aborted the run",
        }
        what = done[action]
        _event(
            item,
            ItemEventKind.RESOLVED,
            actor=user,
            note=f"{what} by {_name(user)}" + (f": {comment}" if comment else ""),
            data={"action": action, "edited_input": edited},
        )
        if action == Decision.RETRY:
            runs.retry_escalated_step(
                step_run_id=item.step_run_id, actor=user, input=input, edit_input=edited
            )
        elif action == Decision.SKIP:
            runs.skip_escalated_step(step_run_id=item.step_run_id, actor=user, output=output)
        else:
            reason = comment or f"aborted by {_name(user)} after step '{item.step_run.step_key}' failed"
            runs.abort_run(run_id=item.run_id, actor=user, reason=reason)
        notifications.send_on_commit(notifications.notify_outcome, item.pk)
    return item


# ---------------------------------------------------------------------------------------------
# Reassignment


def _find_user(value: Any) -> Any:
    User = get_user_model()
    if isinstance(value, User):
        return value if value.is_active else None
    if isinstance(value, str) and value:
        return User.objects.filter(username=value, is_active=True).first()
    if isinstance(value, int):
        return User.objects.filter(pk=value, is_active=True).first()
    return None


def reassign(*, item_id: int, user: Person, to_user: Any, note: str) -> Item:
    """Hand an item over to one other person (a user, a username or a user id) with a note.

    The new assignee replaces the old ones; votes already cast still count. Only to someone
    eligible for the item (access.eligible_assignees: its assignees, escalation targets or an
    admin), never to an inactive user, nor to the run's starter when they could not approve it.
    The person who hands it on keeps seeing it (access.can_view: they acted on it).
    """
    note = (note or "").strip()
    with runs.change() as work:
        item = _lock(work, item_id)
        user = _check_allowed(user, item)
        _check_open(item)
        _check_text(note, "note")
        errors: dict[str, str] = {}
        target = _find_user(to_user)
        if target is None:
            errors["to_user"] = "no active user by that name"
        elif not access.eligible_assignees(item).filter(pk=target.pk).exists():
            errors["to_user"] = (
                f"{target.get_username()} is not among the people this item may go to "
                "(its assignees, their groups, its escalation targets or an admin)"
            )
        elif access.is_self_approval(target, item):
            did = "started this run" if item.requested_by_id == target.pk else "retried this step"
            errors["to_user"] = f"{target.get_username()} {did} and may not decide it"
        if not note:
            errors["note"] = "say why you hand it over"
        if errors:
            raise InvalidInput(errors)
        before = {
            "users": list(item.users.values_list("username", flat=True)),
            "groups": list(item.groups.values_list("name", flat=True)),
        }
        item.users.set([target])
        item.groups.clear()
        _event(
            item,
            ItemEventKind.REASSIGNED,
            actor=user,
            note=f"reassigned to {target.get_username()} by {_name(user)}: {note}",
            data={"from": before, "to": target.get_username()},
        )
        to = [target.email] if target.email else []
        notifications.send_on_commit(notifications.notify_assigned, item.pk, note=note, to=to)
    return item


# ---------------------------------------------------------------------------------------------
# Deadlines: the ticker calls sweep_deadlines every tick


def _each(ids: list[int], action: Callable[..., bool], now: datetime) -> int:
    done = 0
    for pk in ids:
        try:
            done += int(action(item_id=pk, now=now))
        except Exception:
            # One bad item must not stop the others; the next tick tries it again.
            logger.exception("deadline sweep: %s failed for item %s", action.__name__, pk)
    return done


def sweep_deadlines(now: datetime) -> int:
    """Send due reminders and apply due deadlines; returns how many items it changed."""
    pending = Item.objects.filter(status=ItemStatus.PENDING)
    reminders = list(
        pending.filter(remind_at__lte=now, reminded_at__isnull=True)
        .filter(Q(deadline__isnull=True) | Q(deadline__gt=now))  # past due: the deadline acts instead
        .values_list("pk", flat=True)[:BATCH]
    )
    expired = list(pending.filter(deadline__lte=now).values_list("pk", flat=True)[:BATCH])
    return _each(reminders, send_reminder, now) + _each(expired, expire_item, now)


def send_reminder(*, item_id: int, now: datetime) -> bool:
    """Remind the assignees, once per deadline (compare-and-set on reminded_at)."""
    with runs.change() as work:
        won = Item.objects.filter(
            pk=item_id, status=ItemStatus.PENDING, reminded_at__isnull=True, remind_at__lte=now
        ).update(reminded_at=now)
        work.items.add(item_id)
        if not won:
            return False
        item = Item.objects.get(pk=item_id)
        _event(
            item,
            ItemEventKind.REMINDED,
            note=f"reminder: due {_at(item.deadline)}",
            data={"deadline": _iso(item.deadline)},
        )
        notifications.send_on_commit(notifications.notify_reminder, item_id)
    return True


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def expire_item(*, item_id: int, now: datetime) -> bool:
    """The deadline passed: escalate once if the step says so, else apply the timeout action."""
    with runs.change() as work:
        item = _lock(work, item_id)
        if item.status != ItemStatus.PENDING or item.deadline is None or item.deadline > now:
            return False
        if item.step_run.status != StepStatus.WAITING:
            _close(
                item,
                status=ItemStatus.CANCELLED,
                decision="",
                by=None,
                comment="the step no longer waits",
                now=now,
            )
            _event(item, ItemEventKind.CANCELLED, note="the step no longer waits")
            return True
        if item.on_timeout == OnTimeout.ESCALATE and item.escalations == 0 and _escalate(item, now):
            return True
        _time_out(item, now)
    return True


def _escalate(item: Item, now: datetime) -> bool:
    users, groups = resolve_people(item.escalate_to)
    if not users and not groups:
        return False  # nobody to escalate to: the final timeout action applies
    options = step_options(step_spec(item.run, item.step_run.step_key), item.kind)
    if options.get("deadline"):
        seconds = parse_duration(options["deadline"])
    else:
        assert item.deadline is not None
        seconds = (item.deadline - item.created_at).total_seconds()
    deadline = now + timedelta(seconds=seconds)
    won = Item.objects.filter(pk=item.pk, status=ItemStatus.PENDING, escalations=item.escalations).update(
        deadline=deadline,
        remind_at=reminder_time(now, deadline, options.get("remind_before")),
        reminded_at=None,
        escalations=F("escalations") + 1,
    )
    if not won:
        return True  # someone else escalated it meanwhile
    before = {
        "users": list(item.users.values_list("username", flat=True)),
        "groups": list(item.groups.values_list("name", flat=True)),
    }
    item.users.set(users)
    item.groups.set(groups)
    _event(
        item,
        ItemEventKind.ESCALATED,
        note=f"no decision by {_at(item.deadline)}; escalated to {describe_people(users, groups)}, new deadline {_at(deadline)}",
        data={
            "from": before,
            "to": {"users": [u.get_username() for u in users], "groups": [g.name for g in groups]},
            "old_deadline": _iso(item.deadline),
            "deadline": deadline.isoformat(),
        },
    )
    notifications.send_on_commit(notifications.notify_escalated, item.pk)
    return True


def _time_out(item: Item, now: datetime) -> None:
    outcome: str
    if item.kind == ItemKind.MANUAL:
        outcome = OnTimeout.FAIL
        text = "not done before its deadline; the step fails"
    elif item.on_timeout == OnTimeout.APPROVE:
        outcome = Decision.APPROVE
        text = "no decision before the deadline; approved on timeout"
    else:
        outcome = Decision.REJECT
        text = "no decision before the deadline; rejected on timeout"
    deadline = item.deadline
    _close(item, status=ItemStatus.EXPIRED, decision=Decision.TIMEOUT, by=None, comment=text, now=now)
    _event(
        item,
        ItemEventKind.EXPIRED,
        note=f"deadline {_at(deadline)} passed",
        data={"deadline": _iso(deadline), "outcome": outcome},
    )
    _event(item, ItemEventKind.DECIDED, note=text, data={"decision": outcome, "timeout": True})
    if outcome == OnTimeout.FAIL:
        runs.resolve_waiting_step(
            step_run_id=item.step_run_id,
            failed=True,
            error=f"manual task {text}",
            expected_kind=ItemKind.MANUAL,
        )
    else:
        _resume_decision(item, outcome=outcome, by=None, comment=text, now=now)
    notifications.send_on_commit(notifications.notify_outcome, item.pk)
