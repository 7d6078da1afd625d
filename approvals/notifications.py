"""Emails about inbox items: assignment, reminder, escalation and outcome.

Always sent after the transaction that decided them has committed (send_on_commit), and a
mail server that is down never undoes a decision: the failure is logged and the item's history
simply has no "email sent" row for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from approvals.models import Item, ItemEvent, ItemEventKind

logger = logging.getLogger("baton.approvals")


def base_url() -> str:
    # Read late so tests and deployments can change it.
    return str(getattr(settings, "BATON_BASE_URL", "http://127.0.0.1:8000")).rstrip("/")


def item_url(item: Item | int) -> str:
    """The item's page; logging in on the way there comes straight back to it (?next=)."""
    pk = item if isinstance(item, int) else item.pk
    return f"{base_url()}/approvals/{pk}/"


def send_on_commit(notify: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    transaction.on_commit(partial(notify, *args, **kwargs))


def assignee_emails(item: Item) -> list[str]:
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    direct = users.filter(assigned_items=item)
    via_groups = users.filter(groups__assigned_items=item)
    return sorted(
        set(direct.values_list("email", flat=True)) | set(via_groups.values_list("email", flat=True))
    )


def _emails_of(users: Iterable[Any]) -> set[str]:
    return {u.email for u in users if u is not None and u.is_active and u.email}


def _when(value: Any) -> str:
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M %Z}" if value else "none"


def _load(item_id: int) -> Item:
    return Item.objects.select_related(
        "run__workflow__owner", "run__started_by", "step_run", "decided_by"
    ).get(pk=item_id)


def _summary(item: Item) -> str:
    lines = [
        f"{item.get_kind_display()}: {item.title}",
        f"Workflow: {item.run.workflow.name} (run {item.run_id}, step '{item.step_run.step_key}')",
        f"Requested by: {item.run.started_by.get_username() if item.run.started_by else 'a trigger'}",
        f"Deadline: {_when(item.deadline)}",
    ]
    if item.risk != "low":
        lines.append(f"Risk: {item.risk}")
    return "\n".join(lines)


def _send(item: Item, about: str, subject: str, body: str, recipients: Iterable[str]) -> None:
    to = sorted(set(recipients))
    if not to:
        return
    try:
        send_mail(f"[Baton] {subject}"[:200], body, None, to)
    except Exception:
        logger.exception("could not email %s about item %s (%s)", to, item.pk, about)
        return
    ItemEvent.objects.create(
        item=item,
        kind=ItemEventKind.NOTIFIED,
        note=f"{about}: emailed {', '.join(to)}",
        data={"about": about, "to": to},
    )


def notify_assigned(item_id: int, *, note: str = "", to: list[str] | None = None) -> None:
    item = _load(item_id)
    extra = f"\nNote: {note}\n" if note else ""
    body = f"{_summary(item)}\n{extra}\nIt waits for you: {item_url(item)}\n"
    _send(
        item,
        "assigned",
        f"Waiting for you: {item.title}",
        body,
        to if to is not None else assignee_emails(item),
    )


def notify_reminder(item_id: int) -> None:
    item = _load(item_id)
    body = f"{_summary(item)}\n\nReminder: it is still waiting and its deadline is close.\n{item_url(item)}\n"
    _send(
        item, "reminder", f"Reminder: {item.title} (due {_when(item.deadline)})", body, assignee_emails(item)
    )


def notify_escalated(item_id: int) -> None:
    item = _load(item_id)
    body = (
        f"{_summary(item)}\n\nNobody decided it before its deadline, so it has been escalated to you "
        f"with a new deadline.\n{item_url(item)}\n"
    )
    _send(item, "escalated", f"Escalated to you: {item.title}", body, assignee_emails(item))


def notify_outcome(item_id: int) -> None:
    """To whoever asked (the run's starter), the owner and the assignees, except the decider."""
    item = _load(item_id)
    who = item.decided_by.get_username() if item.decided_by else "nobody (deadline passed)"
    comment = f"\nComment: {item.comment}\n" if item.comment else ""
    body = f"{_summary(item)}\n\nOutcome: {item.get_status_display()} by {who} at {_when(item.decided_at)}.\n{comment}\n{item_url(item)}\n"
    recipients = _emails_of([item.run.started_by, item.run.workflow.owner]) | set(assignee_emails(item))
    if item.decided_by is not None:
        recipients.discard(item.decided_by.email)
    _send(item, "outcome", f"{item.get_status_display()}: {item.title}", body, recipients)
