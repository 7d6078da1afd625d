"""Filters and tags for showing run data: durations, statuses, and agent JSON as escaped,
foldable text.

None of these mark agent data safe: agent output is untrusted text and reaches the page only
escaped (`ticking` builds its element with format_html, from a number; `graph_shapes` and the
markup tags below escape every text with the standard library's escape, `_e`, quotes too).

`badge`, `json_value`, `step_status` and `step_agent` are the markup of `_badge.html`,
`_json.html`, `_step_status.html` and `_step_agent.html`: those partials call them, and so do
the run page's rows drawn in Python (dashboard/templatetags/run_page.py), so each piece of
markup is written once.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

from django import template
from django.conf import settings
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.template.defaultfilters import date as date_filter
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from dashboard.graph import Graph, Node
from orchestration.durations import human_duration

register = template.Library()

FOLD_CHARS = 240
FOLD_LINES = 8
PREVIEW_CHARS = 72
COMPACT_CHARS = 48


@register.filter
def duration(seconds: float | None) -> str:
    """A length of time, measured or configured: 3.2 s, 4 min 5 s (orchestration.durations)."""
    return human_duration(seconds)


@register.filter
def circuit_label(state: str) -> str:
    return "half-open" if state == "half_open" else state


@register.simple_tag
def elapsed(start: datetime | None, end: datetime | None = None) -> str:
    """Time from start to end, or to now for something still going."""
    if start is None:
        return ""
    return human_duration(((end or timezone.now()) - start).total_seconds())


@register.simple_tag
def ticking(start: datetime | None) -> SafeString | str:
    """Time since start for something still going, counted on in the browser (static/js/baton.js).

    A page is refetched only when something changes, so a step waiting a minute on a language
    model would show "2 s" for that minute; the element carries the seconds at render time and
    the page adds what has passed since.
    """
    if start is None:
        return ""
    seconds = max(0.0, (timezone.now() - start).total_seconds())
    return format_html('<span class="muted" data-elapsed="{}">{}</span>', f"{seconds:.3f}", human_duration(seconds))


@register.simple_tag
def until(moment: datetime | None) -> str:
    """Time from now to a moment ahead (a retry, a circuit reopening); "" once it has passed."""
    if moment is None:
        return ""
    seconds = (moment - timezone.now()).total_seconds()
    return human_duration(seconds) if seconds > 0 else ""


@register.filter
def money(amount: float | None) -> str:
    """$12.30, and four places below a cent, where a single LLM call usually lands ($0.0042)."""
    if amount is None:
        return ""
    amount = float(amount)
    if amount == 0:
        return "$0"
    if amount < 0.0001:
        return "<$0.0001"
    if amount < 0.01:
        return f"${amount:.4f}".rstrip("0")
    return f"${amount:,.2f}"


@register.filter
def pretty_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@register.filter
def is_long(text: str, compact: bool = False) -> bool:
    """Whether to fold a block; `compact` (a table cell) folds anything past one short line."""
    if compact:
        return len(text) > COMPACT_CHARS or "\n" in text
    return len(text) > FOLD_CHARS or text.count("\n") >= FOLD_LINES


@register.filter
def preview(value: Any) -> str:
    """One line of a value, for the summary of a folded block."""
    if isinstance(value, str):
        text = " ".join(value.split())
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


@register.filter
def entries(value: Any) -> list[tuple[str, Any]] | None:
    """A mapping's items, or None for anything else.

    `value.items` in a template would look up a key named "items" first, and agent output
    may well have one.
    """
    if isinstance(value, dict) and value:
        return [(str(key), item) for key, item in value.items()]
    return None


@register.simple_tag
def graph_shapes(graph: Graph, highlight: str = "") -> SafeString:
    """The arrows and the nodes of `dashboard/_graph.html`'s SVG.

    Built here rather than by two template loops: a 1,000-step workflow's graph took the
    template about 100 ms to draw; format_html_join still took ~30 ms, these f-strings a few. Every text is escaped (`_e`, quotes too); the numbers are the layout's own.
    """
    edges = "\n".join(
        f'<path class="edge{" edge--loop" if edge.loop else ""}" d="{_e(edge.path)}" '
        f'marker-end="url(#graph-arrow{"-loop" if edge.loop else ""})"></path>'
        for edge in graph.edges
    )
    nodes = "\n".join(_node(node, highlight) for node in graph.nodes)
    return mark_safe(f"{edges}\n{nodes}")  # noqa: S308 - every text above went through _e


@register.simple_tag
def badge(status: Any, large: Any = False) -> SafeString:
    """A status as a coloured word (`_badge.html`)."""
    status = _e(status)
    size = " badge--large" if large else ""
    return mark_safe(f'<span class="badge badge--{status}{size}" data-status="{status}">{status}</span>')  # noqa: S308 - escaped


@register.simple_tag
def json_value(value: Any, fold_id: Any = "", inline: Any = "") -> SafeString:
    """Agent data as escaped text (`_json.html`): pretty JSON, folded under a one-line preview
    when long; `inline` (a table cell) folds anything past one short line."""
    text = pretty_json(value)
    if is_long(text, bool(inline)):
        fold = f' id="{_e(fold_id)}"' if fold_id else ""
        return mark_safe(  # noqa: S308 - escaped
            f'<details class="fold"{fold}><summary><code>{_e(preview(value))}</code></summary>'
            f'<pre class="json">{_e(text)}</pre></details>'
        )
    return mark_safe(f'<pre class="json{" json--inline" if inline else ""}">{_e(text)}</pre>')  # noqa: S308 - escaped


@register.simple_tag
def step_status(step: Any) -> SafeString:
    """A step's status (`_step_status.html`), with why it failed or is waiting and, for a retry,
    when it goes again."""
    parts = [badge(step.status), ""]
    if step.error_class and step.status in ("failed", "retrying"):
        error_class = _e(step.error_class)
        parts[1] = (
            f'<span class="tag tag--error tag--error-{error_class}" data-error-class="{error_class}">'
            f"{_e(str(step.get_error_class_display()).lower())}</span>"
        )
    if step.status == "retrying" and step.next_attempt_at:
        wait = until(step.next_attempt_at)
        words = f"next attempt in {_e(wait)}" if wait else "next attempt due now"
        parts.append(f'<div class="small muted step-next">{time_element(step.next_attempt_at, words)}</div>')
    else:
        parts.append("")
    return mark_safe("\n".join(parts))  # noqa: S308 - escaped


@register.simple_tag
def step_agent(step: Any, row: Any = None) -> SafeString:
    """The agent that produced a step's result (`_step_agent.html`), the version of it the run
    used and, when a fallback took over, whose place it took; `row` (a read model's row) says
    the version, whether it is simulated and whether the primary was called."""
    if not step.agent_name:
        return mark_safe('<span class="muted">—</span>')
    name = _e(step.agent_name)
    version = getattr(row, "version_label", "")
    text = f'<span class="agent-cell__name">{name}'
    if version:
        text += f' <span class="agent-cell__version">· version {_e(version)}</span>'
    if getattr(row, "agent_simulated", False):
        text += ' <span class="tag tag--sim">simulated</span>'
    text += "</span>\n"
    if step.fallback_from:
        why = "failed" if getattr(row, "primary_called", False) else "not called: circuit open"
        text += (
            f'<div class="small fallback-note">via fallback <strong>{name}</strong> '
            f"(primary <strong>{_e(step.fallback_from)}</strong> {why})</div>"
        )
    return mark_safe(text)  # noqa: S308 - escaped


def time_element(moment: datetime, text: str | None = None, *, css_class: str = "") -> str:
    """`<time>` for a moment, as the templates write it: machine-readable, the exact time on
    hover, and `text` (HTML, escaped by the caller) or "3 minutes ago"."""
    # In the current time zone, as a template shows a time.
    local = timezone.localtime(moment) if settings.USE_TZ and timezone.is_aware(moment) else moment
    shown = _e(naturaltime(moment)) if text is None else text
    attribute = f' class="{_e(css_class)}"' if css_class else ""
    return f'<time{attribute} datetime="{_e(local.isoformat())}" title="{_e(_exact_time(local))}">{shown}</time>'


def _exact_time(local: datetime) -> str:
    """The templates' `date:'Y-m-d H:i:s T'`, written out: Django's formatter took 30 µs a
    call, a tenth of a big run's steps table. A naive time, or one a clock change makes
    ambiguous (whose zone Django leaves out), goes through Django's filter itself."""
    if local.tzinfo is None or local.replace(fold=not local.fold).utcoffset() != local.utcoffset():
        return str(date_filter(local, "Y-m-d H:i:s T"))
    return (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d} "
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d} {local.tzname()}"
    )


def _node(node: Node, highlight: str) -> str:
    # Each text escaped once, however often it appears.
    key, status = _e(node.key), _e(node.status)
    return (
        f'<a class="node node--{status}{" node--highlight" if highlight and node.key == highlight else ""}" '
        f'href="#step-{key}" data-step="{key}" data-status="{status}">'
        f"<title>{key}: {_e(node.status_label)}</title>"
        f'<rect x="{node.x}" y="{node.y}" width="{node.width}" height="{node.height}" rx="10"></rect>'
        f'<text class="node__title" x="{node.title_x}" y="{node.title_y}">{_e(node.title)}</text>'
        f'<text class="node__glyph" x="{node.glyph_x}" y="{node.title_y}" aria-hidden="true">{_e(node.glyph)}</text>'
        f'<text class="node__detail" x="{node.title_x}" y="{node.detail_y}">{_e(node.detail)}</text>'
        "</a>"
    )


def _e(value: Any) -> str:
    """Text for HTML, quotes included (the standard library's escape: the graph's thousands of
    values made Django's lazy-aware one a visible part of a big run's page)."""
    return html.escape(str(value), quote=True)
