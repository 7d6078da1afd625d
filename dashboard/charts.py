"""Trend charts of a rollout's metrics, laid out on the server and drawn as inline SVG.

One chart per criterion metric: a point per day (the workflow's DailySnapshot of that day),
the target as a dashed line, labelled axes. This module only computes geometry and labels,
from plain numbers, so it is tested without a database; `dashboard/rollouts/_trend_chart.html`
draws it, every label passing through Django's autoescaping. No chart library: a polyline
and a few ticks is all a daily trend needs, and the numbers are also given as a table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from orchestration.durations import human_duration

WIDTH = 560
HEIGHT = 210
MARGIN_LEFT = 64
MARGIN_RIGHT = 26
MARGIN_TOP = 14
MARGIN_BOTTOM = 44
Y_TICKS = 4

# How each metric is counted, which says how its numbers read and what its axis is.
RATES = frozenset({"success_rate", "intervention_rate"})
SECONDS = frozenset({"p95_duration", "approval_wait"})
PER_RUN = frozenset({"retries_per_run", "loops_per_run"})
MONEY = frozenset({"cost_per_run"})

UNITS = {"rate": "share of runs", "seconds": "duration", "per_run": "per run", "money": "cost per run", "count": "runs"}


def unit_of(metric: str) -> str:
    if metric in RATES:
        return "rate"
    if metric in SECONDS:
        return "seconds"
    if metric in PER_RUN:
        return "per_run"
    if metric in MONEY:
        return "money"
    return "count"


def format_value(metric: str, value: float | None) -> str:
    """A metric's figure as a person reads it: 96.5%, 4 min 10 s, 0.42 per run, $0.31, 21."""
    if value is None:
        return "no data"
    unit = unit_of(metric)
    if unit == "rate":
        return f"{value * 100:.1f}%".replace(".0%", "%")
    if unit == "seconds":
        return human_duration(value)
    if unit == "per_run":
        return f"{value:.2f} per run"
    if unit == "money":
        if value == 0:
            return "$0"
        return f"${value:.4f}".rstrip("0") if value < 0.01 else f"${value:,.2f}"
    return f"{value:g}" if value != int(value) else str(int(value))


def _tick_label(metric: str, value: float) -> str:
    unit = unit_of(metric)
    if unit == "rate":
        return f"{value * 100:.0f}%"
    if unit == "per_run":
        return f"{value:g}"
    return format_value(metric, value)


@dataclass(frozen=True)
class DayFigure:
    """One day's figure of a metric and how many runs it came from (None: no runs to say)."""

    day: date
    value: float | None
    runs: int


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    day: date
    value: float
    label: str  # the <title>: "2026-11-03: 96% (24 runs)"
    passed: bool | None  # against the target, if there is one


@dataclass(frozen=True)
class Tick:
    position: float  # x for the day axis, y for the value axis
    label: str


@dataclass(frozen=True)
class Chart:
    metric: str
    title: str
    unit: str
    width: int
    height: int
    points: list[Point]
    path: str  # the line through the points; a day without runs breaks it
    target_y: float | None
    target_label: str
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    rows: list[tuple[date, str, int]]  # the same numbers as a table: day, figure, runs

    @property
    def description(self) -> str:
        if not self.points:
            return f"{self.title}: no runs in these days." + (f" {self.target_label}." if self.target_label else "")
        days = len(self.points)
        latest = self.points[-1].label
        target = f" {self.target_label}." if self.target_label else ""
        return f"{self.title}: {days} day{'s' if days != 1 else ''} with runs, latest {latest}.{target}"


def _nice_step(span: float, ticks: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about `ticks` intervals."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = float(10 ** math.floor(math.log10(raw)))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return 10 * power


# Steps a clock reads well: seconds, minutes, hours.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400)


def _time_step(span: float, ticks: int) -> float:
    raw = span / ticks
    return float(next((step for step in TIME_STEPS if raw <= step), _nice_step(span, ticks)))


def value_scale(metric: str, values: Sequence[float], target: float | None) -> tuple[float, float]:
    """The value axis's top and step: rates run 0..100%; the rest from 0 to a round number
    above the largest figure and the target, so the target line is always on the chart."""
    if unit_of(metric) == "rate":
        return 1.0, 0.25
    top = max([*values, target or 0.0, 0.0])
    if top <= 0:
        top = 1.0
    if unit_of(metric) == "seconds":
        step = _time_step(top * 1.05, Y_TICKS)
    else:
        step = _nice_step(top * 1.05, Y_TICKS)
    return step * math.ceil(top * 1.05 / step), step


def build(
    *,
    metric: str,
    title: str,
    days: Sequence[date],
    figures: Sequence[DayFigure],
    target: float | None,
    comparison: str = "gte",
    target_note: str = "",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """The chart of `figures` over `days` (every day on the axis, oldest first)."""
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    by_day = {f.day: f for f in figures}
    values = [f.value for f in figures if f.value is not None]
    y_max, y_step = value_scale(metric, values, target)
    count = max(len(days), 1)

    def x_of(index: int) -> float:
        if count == 1:
            return (left + right) / 2
        return round(left + (right - left) * index / (count - 1), 1)

    def y_of(value: float) -> float:
        return round(bottom - (bottom - top) * min(max(value, 0.0), y_max) / y_max, 1)

    points: list[Point] = []
    segments: list[list[str]] = []
    current: list[str] = []
    for index, day in enumerate(days):
        figure = by_day.get(day)
        if figure is None or figure.value is None:
            if current:
                segments.append(current)
                current = []
            continue
        x, y = x_of(index), y_of(figure.value)
        passed = None
        if target is not None:
            passed = figure.value >= target if comparison == "gte" else figure.value <= target
        runs = f"{figure.runs} run{'s' if figure.runs != 1 else ''}"
        points.append(
            Point(x=x, y=y, day=day, value=figure.value, label=f"{day:%a %d %b}: {format_value(metric, figure.value)} ({runs})", passed=passed)
        )
        current.append(f"{x:g},{y:g}")
    if current:
        segments.append(current)
    path = " ".join("M" + " L".join(segment) for segment in segments)

    y_ticks = []
    tick = 0.0
    while tick <= y_max + 1e-9:
        y_ticks.append(Tick(position=y_of(tick), label=_tick_label(metric, tick)))
        tick += y_step
    # A label every week keeps the day axis readable at 30 days; the last day is always named.
    x_ticks = [Tick(position=x_of(i), label=f"{d:%d %b}") for i, d in enumerate(days) if (len(days) - 1 - i) % 7 == 0]

    word = "at least" if comparison == "gte" else "at most"
    # A workflow's own trends (its page) have no target to name; a rollout's criterion always has.
    target_label = f"Target: {word} {format_value(metric, target)}{target_note}" if target is not None else ""
    return Chart(
        metric=metric,
        title=title,
        unit=UNITS[unit_of(metric)],
        width=width,
        height=height,
        points=points,
        path=path,
        target_y=y_of(target) if target is not None else None,
        target_label=target_label,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        plot_left=left,
        plot_right=right,
        plot_top=top,
        plot_bottom=bottom,
        rows=[(d, format_value(metric, by_day[d].value), by_day[d].runs) for d in days if d in by_day],
    )
