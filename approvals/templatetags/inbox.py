"""How the inbox shows time and state: "in 3 h", "overdue by 20 min", a bar of time used.

Deadlines are shown relative to now (people decide by how long they have left) with the exact
time in a title attribute. Nothing here marks text safe: titles, details and agent data reach
the page only through Django's autoescaping.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import template
from django.utils import timezone

from orchestration.durations import human_duration

register = template.Library()

# Under this share of the allowed time left, a deadline is shown as close (amber).
SOON_SHARE = 0.25
# ...and always once this little time is left, however long the item was given.
SOON_AT_MOST = timedelta(hours=1)

KIND_LABELS = {"approval": "approval", "gate": "gate", "manual": "manual task", "exception": "exception"}
# Which status colour (static/css/baton.css) each item status borrows.
STATUS_TONES = {
    "pending": "waiting",
    "approved": "succeeded",
    "submitted": "succeeded",
    "resolved": "succeeded",
    "rejected": "failed",
    "expired": "retrying",
    "cancelled": "cancelled",
}
DECISION_WORDS = {
    "approve": "approved",
    "reject": "rejected",
    "submit": "submitted",
    "retry": "retried",
    "skip": "skipped",
    "abort": "aborted the run",
    "timeout": "timed out",
}


def _span(start: datetime, end: datetime) -> str:
    """How long from start to end, to the minute: '20 min', '1 h 20 min', '1 d 23 h'.

    Deadlines are hours or days apart; seconds would only flicker. The words are
    orchestration.durations', the same as on every other page.
    """
    minutes = round(max(0.0, (end - start).total_seconds()) / 60)
    if minutes < 1:
        return "less than a minute"
    return human_duration(minutes * 60)


@register.filter
def time_left(deadline: datetime | None, now: datetime | None = None) -> str:
    """'in 3 h', 'overdue by 20 min'; '' without a deadline."""
    if deadline is None:
        return ""
    now = now or timezone.now()
    if deadline > now:
        return f"in {_span(now, deadline)}"
    return f"overdue by {_span(deadline, now)}"


@register.filter
def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'4 min ago', 'just now'."""
    if moment is None:
        return ""
    now = now or timezone.now()
    if (now - moment).total_seconds() < 60:
        return "just now"
    return f"{_span(moment, now)} ago"


def time_used(created: datetime, deadline: datetime | None, now: datetime | None = None) -> int:
    """Percent of the time between creation and deadline already gone, 0..100."""
    if deadline is None:
        return 0
    now = now or timezone.now()
    allowed = (deadline - created).total_seconds()
    if allowed <= 0:
        return 100
    return max(0, min(100, round(100 * (now - created).total_seconds() / allowed)))


def urgency(created: datetime, deadline: datetime | None, now: datetime | None = None) -> str:
    """'none' (no deadline), 'ok', 'soon' or 'overdue': the colour of the time-left bar."""
    if deadline is None:
        return "none"
    now = now or timezone.now()
    left = deadline - now
    if left.total_seconds() <= 0:
        return "overdue"
    if left <= SOON_AT_MOST or left.total_seconds() <= SOON_SHARE * (deadline - created).total_seconds():
        return "soon"
    return "ok"


@register.filter
def kind_label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


@register.filter
def status_tone(status: str) -> str:
    return STATUS_TONES.get(status, "queued")


@register.filter
def decision_word(decision: str) -> str:
    return DECISION_WORDS.get(decision, decision)


@register.filter
def field_error(errors: dict[str, str] | None, name: str) -> str:
    """The message for one form field, from an errors mapping the transitions raised."""
    return (errors or {}).get(name, "")


@register.simple_tag
def clock(item: Any) -> dict[str, Any]:
    """Everything the time-left cell draws for one item, computed against one `now`."""
    now = timezone.now()
    return {
        "text": time_left(item.deadline, now),
        "used": time_used(item.created_at, item.deadline, now),
        "urgency": urgency(item.created_at, item.deadline, now),
    }


@register.filter
def other_errors(errors: dict[str, str] | None, shown: str) -> list[str]:
    """Messages for fields the form does not show next to a control (comma-separated names)."""
    names = set(shown.split(","))
    return [message if not key else f"{key}: {message}" for key, message in (errors or {}).items() if key not in names]


@register.filter
def sentence(message: str) -> str:
    """'say why you reject it' -> 'Say why you reject it.': transitions word errors as fragments."""
    message = str(message).strip()
    if not message:
        return ""
    message = message[0].upper() + message[1:]
    return message if message[-1] in ".!?" else message + "."
