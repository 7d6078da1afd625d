"""The overview's template tag: its hourly chart's bars (dashboard/_overview.html).

Built here, as `baton.graph_shapes` builds the run graph, because the template's nested loops
(24 hours, each with a title, a hover column and a rect per outcome) were most of the page's
drawing time. format_html escapes every value.
"""

from __future__ import annotations

from django import template
from django.utils.html import format_html_join
from django.utils.safestring import SafeString, mark_safe

from dashboard.overview_charts import HourlyChart

register = template.Library()

# A constant with no data in it: the failed segments' hatching (the <pattern> in the partial).
HATCHED = mark_safe(' fill="url(#overview-hatch)"')  # noqa: S308


@register.simple_tag
def overview_bars(chart: HourlyChart) -> SafeString:
    """One group per hour with its words as a <title>, a transparent column to hover, and a
    rect per outcome."""
    return format_html_join(
        "\n",
        '<g class="overview-bar" data-hour="{}"><title>{}</title>'
        '<rect class="overview-bar__hit" x="{}" y="{}" width="{}" height="{}"></rect>{}</g>',
        (
            (
                f"{bar.hour:%H}",
                bar.label,
                bar.x,
                chart.plot_top,
                bar.width,
                chart.plot_height,
                format_html_join(
                    "",
                    '<rect class="overview-bar--{}" x="{}" y="{}" width="{}" height="{}"{}></rect>',
                    (
                        (s.outcome, s.x, s.y, s.width, s.height, HATCHED if s.outcome == "failed" else "")
                        for s in bar.segments
                    ),
                ),
            )
            for bar in chart.bars
        ),
    )

