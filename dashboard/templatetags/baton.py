"""Filters for showing run data: durations, and agent JSON as escaped, foldable text.

None of these mark agent data safe: agent output is untrusted text and reaches the page only
through Django's autoescaping (`ticking` builds its element with format_html, from a number;
`graph_shapes` builds the graph's shapes escaping every label with the standard library).
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from dashboard.graph import Graph
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
    nodes = "\n".join(
        f'<a class="node node--{_e(node.status)}{" node--highlight" if highlight and node.key == highlight else ""}" '
        f'href="#step-{_e(node.key)}" data-step="{_e(node.key)}" data-status="{_e(node.status)}">'
        f"<title>{_e(node.key)}: {_e(node.status_label)}</title>"
        f'<rect x="{node.x}" y="{node.y}" width="{node.width}" height="{node.height}" rx="10"></rect>'
        f'<text class="node__title" x="{node.title_x}" y="{node.title_y}">{_e(node.title)}</text>'
        f'<text class="node__glyph" x="{node.glyph_x}" y="{node.title_y}" aria-hidden="true">{_e(node.glyph)}</text>'
        f'<text class="node__detail" x="{node.title_x}" y="{node.detail_y}">{_e(node.detail)}</text>'
        "</a>"
        for node in graph.nodes
    )
    return mark_safe(f"{edges}\n{nodes}")  # noqa: S308 - every text above went through _e


def _e(value: Any) -> str:
    """Text for HTML, quotes included (the standard library's escape: the graph's thousands of
    values made Django's lazy-aware one a visible part of a big run's page)."""
    return html.escape(str(value), quote=True)
