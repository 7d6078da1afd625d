"""The overview's two small charts, laid out on the server and drawn as inline SVG.

- Runs per hour by outcome over the last 24 hours: one stacked bar per hour (succeeded at the
  bottom, then failed, then cancelled), failed bars hatched as well as red so the chart reads in
  grey too.
- Run duration over the last 7 days: the p50 and p95 of the runs that finished each day, two
  lines (p95 dashed), a day without finished runs breaking both.

Like dashboard/charts.py, this module only computes geometry and labels from plain numbers (it
is tested without a database); `dashboard/_overview.html` draws it (the bars through the
`overview_bars` tag), every label escaped, and the same numbers are given as a table under each chart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from dashboard.charts import _nice_step, _time_step
from orchestration.durations import human_duration

WIDTH = 560
HEIGHT = 190
MARGIN_LEFT = 56
MARGIN_RIGHT = 28
MARGIN_TOP = 12
MARGIN_BOTTOM = 40
Y_TICKS = 4
# Bottom to top: the order the bars stack in and the legend reads.
OUTCOMES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class HourCounts:
    """Runs that finished in one hour, by outcome."""

    hour: datetime
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True)
class Segment:
    outcome: str
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Bar:
    hour: datetime
    segments: list[Segment]
    label: str  # the <title>: "14:00–15:00: 7 succeeded, 1 failed"
    # The whole column, hoverable even when the bar is short or empty.
    x: float
    width: float


@dataclass(frozen=True)
class HourlyChart:
    width: int
    height: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    rows: list[HourCounts]

    @property
    def plot_height(self) -> int:
        return self.plot_bottom - self.plot_top

    @property
    def description(self) -> str:
        total = {o: sum(getattr(r, o) for r in self.rows) for o in OUTCOMES}
        busiest = max(self.rows, key=lambda r: r.total, default=None)
        words = ", ".join(f"{n} {o}" for o, n in total.items())
        if busiest is None or busiest.total == 0:
            return "Runs finished per hour over the last 24 hours: none."
        return (
            f"Runs finished per hour over the last 24 hours: {words}; "
            f"the busiest hour {busiest.hour:%H:00} with {busiest.total}."
        )


def _hour_label(counts: HourCounts) -> str:
    parts = [f"{getattr(counts, o)} {o}" for o in OUTCOMES if getattr(counts, o)]
    end = (counts.hour.hour + 1) % 24
    return f"{counts.hour:%a %H}:00–{end:02d}:00: " + (", ".join(parts) if parts else "no runs finished")


def _count_scale(top: int) -> tuple[float, float]:
    if top <= 0:
        return 4.0, 1.0
    step = max(1.0, _nice_step(top * 1.05, Y_TICKS))
    step = float(math.ceil(step))
    return step * math.ceil(top * 1.05 / step), step


def hourly(rows: Sequence[HourCounts], *, width: int = WIDTH, height: int = HEIGHT) -> HourlyChart:
    """Stacked bars of `rows`, one per hour, oldest first."""
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    y_max, y_step = _count_scale(max((r.total for r in rows), default=0))
    slot = (right - left) / max(len(rows), 1)
    bar_width = round(slot * 0.72, 1)

    def y_of(value: float) -> float:
        return round(bottom - (bottom - top) * min(value, y_max) / y_max, 1)

    bars = []
    for index, counts in enumerate(rows):
        x = round(left + slot * index + (slot - bar_width) / 2, 1)
        segments = []
        below = 0
        for outcome in OUTCOMES:
            n = getattr(counts, outcome)
            if n:
                y = y_of(below + n)
                segments.append(Segment(outcome, x, y, bar_width, round(y_of(below) - y, 1)))
                below += n
        bars.append(Bar(counts.hour, segments, _hour_label(counts), round(left + slot * index, 1), round(slot, 1)))
    y_ticks = []
    tick = 0.0
    while tick <= y_max + 1e-9:
        y_ticks.append(Tick(y_of(tick), f"{tick:g}"))
        tick += y_step
    # Every sixth hour is named, and the current one.
    x_ticks = [
        Tick(round(left + slot * (i + 0.5), 1), f"{r.hour:%H}:00")
        for i, r in enumerate(rows)
        if (len(rows) - 1 - i) % 6 == 0
    ]
    return HourlyChart(width, height, bars, x_ticks, y_ticks, left, right, top, bottom, list(rows))


@dataclass(frozen=True)
class DayDurations:
    """The p50 and p95 duration of the runs that finished on one day (None: none finished)."""

    day: date
    runs: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class DurationChart:
    width: int
    height: int
    p50_path: str
    p95_path: str
    p50_points: list[Point]
    p95_points: list[Point]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    rows: list[DayDurations]

    @property
    def description(self) -> str:
        days = [r for r in self.rows if r.p50 is not None]
        if not days:
            return "Run duration over the last 7 days: no run finished."
        last = days[-1]
        return (
            f"Run duration over the last 7 days, {len(days)} day{'s' if len(days) != 1 else ''} with finished runs; "
            f"latest {last.day:%a %d %b}: p50 {human_duration(last.p50)}, p95 {human_duration(last.p95)}."
        )


def durations(rows: Sequence[DayDurations], *, width: int = WIDTH, height: int = HEIGHT) -> DurationChart:
    """Two lines over `rows` (every day on the axis, oldest first)."""
    left, right = MARGIN_LEFT, width - MARGIN_RIGHT
    top, bottom = MARGIN_TOP, height - MARGIN_BOTTOM
    values = [v for r in rows for v in (r.p50, r.p95) if v is not None]
    highest = max(values, default=0.0)
    step = _time_step(highest * 1.05, Y_TICKS) if highest > 0 else 60.0
    y_max = step * max(1, math.ceil(highest * 1.05 / step))
    count = max(len(rows), 1)

    def x_of(index: int) -> float:
        return (left + right) / 2 if count == 1 else round(left + (right - left) * index / (count - 1), 1)

    def y_of(value: float) -> float:
        return round(bottom - (bottom - top) * min(max(value, 0.0), y_max) / y_max, 1)

    def line(name: str) -> tuple[str, list[Point]]:
        points: list[Point] = []
        segments: list[list[str]] = []
        current: list[str] = []
        for index, row in enumerate(rows):
            value = getattr(row, name)
            if value is None:
                if current:
                    segments.append(current)
                    current = []
                continue
            x, y = x_of(index), y_of(value)
            runs = f"{row.runs} run{'s' if row.runs != 1 else ''}"
            points.append(Point(x, y, f"{row.day:%a %d %b}: {name} {human_duration(value)} ({runs})"))
            current.append(f"{x:g},{y:g}")
        if current:
            segments.append(current)
        return " ".join("M" + " L".join(s) for s in segments), points

    p50_path, p50_points = line("p50")
    p95_path, p95_points = line("p95")
    y_ticks = []
    tick = 0.0
    while tick <= y_max + 1e-9:
        y_ticks.append(Tick(y_of(tick), human_duration(tick) if tick else "0"))
        tick += step
    x_ticks = [Tick(x_of(i), f"{r.day:%a %d}") for i, r in enumerate(rows)]
    return DurationChart(
        width, height, p50_path, p95_path, p50_points, p95_points, x_ticks, y_ticks, left, right, top, bottom, list(rows)
    )
