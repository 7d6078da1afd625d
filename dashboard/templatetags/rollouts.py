"""Filters for the rollout pages: a metric's figure as people read it (dashboard/charts.py)."""

from __future__ import annotations

from django import template

from dashboard import charts

register = template.Library()


@register.filter
def metric_value(value: float | None, metric: str) -> str:
    """`{{ drift.recent|metric_value:drift.metric }}`: 96.5%, 4 min 10 s, 0.42 per run, $0.31."""
    return charts.format_value(metric, value)
