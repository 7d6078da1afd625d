"""The run page's repeated rows, drawn in Python: the steps table, the Gantt timeline's rows and
its table, the event timeline (`_run_live.html`, `_gantt.html`, `_events.html`).

Built here, as `baton.graph_shapes` builds the graph, because the template loops over them were
most of a big run's page: on the bench's 1,000-step run the steps table's hundred rows took the
template ~45 ms, the Gantt's fifty rows ~30 ms and the hundred events ~15 ms, each a few
milliseconds here. The markup is the templates' own, word for word, so the live push's morph,
the htmx swaps, static/js/baton.js and the tests find every id, class and data attribute where
they were. Every text is escaped (`baton._e`, quotes too): step keys, agent names, errors,
messages and outputs are agent or author text, never marked safe; the numbers are the layout's.
The status, agent and JSON cells are baton's tags, the ones their partials call.
"""

from __future__ import annotations

from collections.abc import Iterable

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe

from dashboard.gantt import Gantt
from dashboard.read_models import StepRow
from dashboard.templatetags.baton import _e, badge, json_value, step_agent, step_status, ticking, time_element
from orchestration.durations import human_duration
from orchestration.models import Run, RunEvent, StepRun

register = template.Library()

NONE = '<span class="muted">—</span>'

# What get_kind_display answers, looked up once: it rebuilds the field's choices on every call,
# which was a third of the event timeline's time.
EVENT_KINDS: dict[str, str] = {str(value): str(label) for value, label in RunEvent._meta.get_field("kind").flatchoices}
STEP_KINDS: dict[str, str] = {str(value): str(label) for value, label in StepRun._meta.get_field("kind").flatchoices}


def _safe(parts: Iterable[str]) -> SafeString:
    return mark_safe("\n".join(parts))  # noqa: S308 - every text in the parts went through _e


# ---------------------------------------------------------------------------------------------
# The steps table


@register.simple_tag
def step_rows(run: Run, rows: Iterable[StepRow]) -> SafeString:
    """The steps table's body: for each row, its line and the fold its details open in."""
    return _safe(_step_row(run, row) for row in rows)


def _step_row(run: Run, row: StepRow) -> str:
    step = row.step
    key = _e(step.step_key)
    # Only a for_each's row links to its items.
    items_url = (
        _e(reverse("dashboard:step_items", args=[run.pk, step.step_key])) + (f"?round={step.iteration}" if step.iteration > 1 else "")
        if step.items_total is not None or row.mapped_children_more
        else ""
    )
    name = [f'<span class="strong">{key}</span>']
    if step.kind != "agent":
        name.append(f'<span class="tag">{_e(STEP_KINDS.get(step.kind, step.kind).lower())}</span>')
    if row.child_run_id:
        name.append(
            f'<div class="small"><a href="{_e(reverse("dashboard:run", args=[row.child_run_id]))}">'
            f"run #{row.child_run_id} →</a></div>"
        )
    if row.mapped_children:
        children = "".join(
            f'<li>item {child.index}: <a href="{_e(reverse("dashboard:run", args=[child.run_id]))}">run #{child.run_id}</a> '
            f"{_e(child.workflow)} {badge(child.status)}\n</li>"
            for child in row.mapped_children
        )
        if row.mapped_children_more:
            children += f'<li><a href="{items_url}">and {_e(intcomma(row.mapped_children_more))} more →</a></li>'
        name.append(f'<ul class="small mapped-children" aria-label="Child runs of {key}">{children}</ul>')
    if step.items_total is not None:
        items = (
            f'<a href="{items_url}" title="Browse the items">'
            f"{_e(intcomma(step.items_done))} / {_e(intcomma(step.items_total))} items</a>"
        )
    else:
        items = NONE
    waiting = ""
    if row.waiting:
        text = _e(row.waiting.text)
        waiting = f'<div class="small step-waiting">{f"<a href={_q(row.waiting.url)}>{text}</a>" if row.waiting.url else text}</div>'
    choices = ""
    if row.choices:
        per_item = "per item " if step.items_total is not None else ""
        choices = f'<div class="small muted step-choices">chosen {per_item}from {", ".join(_e(c) for c in row.choices)}</div>'
    started = time_element(step.started_at) if step.started_at else NONE
    duration = ""
    if step.started_at:
        if step.finished_at:
            duration = _e(human_duration(step.duration_seconds))
        elif not step.is_final:
            duration = ticking(step.started_at)
    if step.error:
        result = f'<p class="step-error">{_e(step.error)}</p>'
    elif step.output is not None:
        result = json_value(step.output, row.fold_id, True)
    else:
        result = NONE
    detail_url = _e(reverse("dashboard:step_detail", args=[run.pk, step.pk]))
    if step.items_total is not None:
        summary = f"Input and {_e(intcomma(step.items_total))} items"
    else:
        summary = f"Input, output and {row.attempts} attempt{pluralize(row.attempts)}"
    label = _e(step)
    earlier = "" if row.latest else " row--earlier"
    # The Gantt's labels and the graph's nodes link to the latest round's row.
    anchor = f' id="step-{key}"' if row.latest else ""
    return "\n".join(
        [
            f'<tr{anchor} class="{earlier.strip()}">',
            '<td class="step-name">',
            *name,
            "</td>",
            f'<td class="num" data-label="Round">{step.iteration}</td>',
            f'<td class="num nowrap" data-label="Items">{items}</td>',
            f'<td class="step-status">\n{step_status(step)}\n{waiting}</td>',
            f'<td class="num" data-label="Attempts">{row.attempts if step.kind == "agent" else NONE}</td>',
            f'<td class="agent-col" data-label="Agent">\n{step_agent(step, row)}\n{choices}</td>',
            f'<td class="nowrap hide-md" data-label="Started">{started}</td>',
            f'<td class="num" data-label="Duration">{duration}</td>',
            f'<td class="result-col" data-label="Result">\n{result}\n</td>',
            "</tr>",
            f'<tr class="step-detail{earlier}" data-step="{key}">',
            '<td colspan="9">',
            # The body is fetched when the step is opened (static/js/baton.js), then follows
            # the run's live push by itself.
            f'<details class="fold step-detail__fold" id="{_e(row.detail_id)}" data-step-detail="{detail_url}" '
            f'data-live-topic="run:{run.pk}">',
            f"<summary>{summary} of <strong>{label}</strong></summary>",
            f'<div class="step-detail__body" id="{_e(row.detail_id)}-body">',
            f'<p class="small muted step-detail__loading"><a href="{detail_url}">Open the input, output'
            f"{', attempts, tracebacks and log lines' if step.items_total is None else ''} of {label}</a></p>",
            "</div>",
            "</details>",
            "</td>",
            "</tr>",
        ]
    )


def _q(url: str) -> str:
    """An attribute value in quotes, escaped."""
    return f'"{_e(url)}"'


# ---------------------------------------------------------------------------------------------
# The Gantt timeline


def _g(number: float) -> str:
    # The templates' `stringformat:'g'` ("%g" % number), the layout's numbers as the SVG takes them.
    return f"{number:g}"


@register.simple_tag
def gantt_rows(gantt: Gantt) -> SafeString:
    """The timeline's rows: a label (a link to the step's row in the table) and a track of
    segments, each with its words as a <title> (`_gantt.html`)."""
    height = gantt.row_height
    grid = "".join(
        f'<line class="gantt__grid" x1="{_g(tick.x)}" y1="0" x2="{_g(tick.x)}" y2="{height}"></line>' for tick in gantt.ticks
    )
    bar_y, thin_y = _g(gantt.bar_y), _g(gantt.thin_y)
    now = (
        f'<line class="gantt__now" x1="{_g(gantt.now_x)}" y1="0" x2="{_g(gantt.now_x)}" y2="{height}"></line>'
        if gantt.now_x is not None
        else ""
    )
    out = []
    for row in gantt.rows:
        status = _e(row.status or "notstarted")
        label = _e(row.label)
        summary = _e(row.summary)
        if row.step:
            head = f'<a class="gantt__label" href="#{_e(row.anchor)}" title="{summary}">{label}</a>'
        else:
            head = f'<span class="gantt__label gantt__label--notstarted" title="{_e(row.key)}: not started">{label}</span>'
        lines = [
            f'<div class="gantt__row gantt__row--{status}" data-step="{_e(row.key)}" data-round="{row.iteration}" data-status="{status}">',
            head,
            f'<svg class="gantt__track" width="{gantt.track_width}" height="{height}" viewBox="0 0 {gantt.track_width} {height}" '
            f'role="img" aria-label="{summary}">',
            grid,
        ]
        for segment in row.segments:
            kind = _e(segment.kind)
            outcome = _e(segment.outcome)
            x, width = _g(segment.x), _g(segment.width)
            lines.append(
                f'<g class="seg seg--{kind}{f" seg--{outcome}" if outcome else ""}{" seg--open" if segment.open else ""}" '
                f'data-kind="{kind}"{f" data-outcome={_q(segment.outcome)}" if outcome else ""}>'
            )
            lines.append(f"<title>{label}: {_e(segment.label)}</title>")
            lines.append(f'<rect class="seg__hit" x="{x}" y="0" width="{width}" height="{height}"></rect>')
            if segment.thin:
                lines.append(f'<rect class="seg__bar" x="{x}" y="{thin_y}" width="{width}" height="6" rx="1"></rect>')
            else:
                lines.append(f'<rect class="seg__bar" x="{x}" y="{bar_y}" width="{width}" height="16" rx="3"></rect>')
                pattern = {"waiting": "gantt-hatch", "throttled": "gantt-dots"}.get(segment.kind)
                if pattern:
                    lines.append(
                        f'<rect class="seg__pattern" x="{x}" y="{bar_y}" width="{width}" height="16" rx="3" fill="url(#{pattern})"></rect>'
                    )
            if segment.outcome == "failed":
                lines.append(f'<text class="seg__mark" x="{_g(segment.mark_x)}" y="{height - 10}" aria-hidden="true">✕</text>')
            lines.append("</g>")
        if row.end_glyph:
            lines.append(
                f'<text class="gantt__end gantt__end--{_e(row.status)}" x="{_g(row.end_x)}" y="{height - 9}">'
                f"<title>{label}: {_e(row.status_words)} at +{_e(human_duration(row.end_at))}</title>{_e(row.end_glyph)}</text>"
            )
        lines += [now, "</svg>", "</div>"]
        out.append("\n".join(lines))
    return _safe(out)


@register.simple_tag
def gantt_table_rows(gantt: Gantt) -> SafeString:
    """The timeline as a table's body (`_gantt.html`): a line per segment, then the step's end
    (or, for a step with no segment, its status)."""
    out = []
    for row in gantt.rows:
        key, label = _e(row.key), _e(row.label)
        for segment in row.segments:
            until = "now" if segment.open else f"+{_e(human_duration(segment.end))}"
            out.append(
                f'<tr data-step="{key}" data-kind="{_e(segment.kind)}">\n<td>{label}</td>\n<td>{_e(segment.words)}</td>\n'
                f'<td class="num nowrap">+{_e(human_duration(segment.start))}</td>\n'
                f'<td class="num nowrap">{until}</td>\n'
                f'<td class="num nowrap">{_e(human_duration(segment.seconds))}{" so far" if segment.open else ""}</td>\n'
                f"<td>{_e(segment.label)}</td>\n</tr>"
            )
        if row.end_glyph:
            out.append(
                f'<tr data-step="{key}" data-kind="end">\n<td>{label}</td>\n<td>{_e(row.status_words)}</td>\n'
                f'<td class="num nowrap">+{_e(human_duration(row.end_at))}</td>\n'
                f'<td class="num">{NONE}</td>\n<td class="num">{NONE}</td>\n<td>{_e(row.summary)}</td>\n</tr>'
            )
        elif not row.segments:
            out.append(
                f'<tr data-step="{key}" data-kind="none">\n<td>{label}</td>\n<td>{_e(row.status_words)}</td>\n'
                f'<td class="num">{NONE}</td>\n<td class="num">{NONE}</td>\n<td class="num">{NONE}</td>\n<td>{NONE}</td>\n</tr>'
            )
    return _safe(out)


# ---------------------------------------------------------------------------------------------
# The event timeline


@register.simple_tag
def event_items(events: Iterable[RunEvent]) -> SafeString:
    """A run's events, in the order given (`_events.html`: the run page's timeline and the
    history's pages)."""
    out = []
    for event in events:
        lines = [
            f'<li class="timeline__item timeline__item--{_e(event.to_status or "note")}">',
            '<div class="timeline__line">',
            f'<span class="timeline__kind">{_e(EVENT_KINDS.get(event.kind, event.kind))}</span>',
        ]
        if event.step_run:
            lines.append(f'<code class="timeline__step">{_e(event.step_run)}</code>')
        lines += [time_element(event.created_at, css_class="timeline__time"), "</div>"]
        if event.message:
            lines.append(f'<p class="timeline__message">{_e(event.message)}</p>')
        if event.actor:
            lines.append(f'<p class="timeline__actor small muted">by {_e(event.actor.get_username())}</p>')
        lines.append("</li>")
        out.append("\n".join(lines))
    return _safe(out)
