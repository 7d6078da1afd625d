"""The overview's charts as geometry: no database, plain numbers in, shapes and words out."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from dashboard.overview_charts import DayDurations, HourCounts, durations, hourly

START = datetime(2026, 12, 1, 16, tzinfo=UTC)


def test_each_hour_is_a_bar_whose_outcomes_stack_in_order_and_say_their_numbers() -> None:
    rows = [HourCounts(START + timedelta(hours=n)) for n in range(24)]
    rows[3] = HourCounts(START + timedelta(hours=3), succeeded=6, failed=2)
    chart = hourly(rows)
    assert len(chart.bars) == 24
    bar = chart.bars[3]
    assert [s.outcome for s in bar.segments] == ["succeeded", "failed"]
    succeeded, failed = bar.segments
    # Failed sits on top of succeeded, and is a third of its height.
    assert failed.y + failed.height == succeeded.y
    assert abs(failed.height * 3 - succeeded.height) < 0.5
    assert bar.label == "Tue 19:00–20:00: 6 succeeded, 2 failed"
    assert chart.bars[0].segments == [] and chart.bars[0].label.endswith("no runs finished")
    assert chart.y_ticks[0].label == "0" and float(chart.y_ticks[-1].label) >= 8
    assert "6 succeeded, 2 failed, 0 cancelled" in chart.description and "19:00 with 8" in chart.description


def test_an_empty_day_still_draws_an_axis_and_says_none() -> None:
    chart = hourly([HourCounts(START + timedelta(hours=n)) for n in range(24)])
    assert all(not bar.segments for bar in chart.bars) and len(chart.y_ticks) > 1
    assert chart.description.endswith("none.")


def test_the_duration_lines_break_on_a_day_without_finished_runs() -> None:
    days = [date(2026, 11, 25) + timedelta(days=n) for n in range(7)]
    rows = [DayDurations(d, 4, 60.0 * (n + 1), 120.0 * (n + 1)) for n, d in enumerate(days)]
    rows[3] = DayDurations(days[3], 0, None, None)
    chart = durations(rows)
    assert chart.p50_path.count("M") == 2 and chart.p95_path.count("M") == 2
    assert len(chart.p50_points) == 6 and chart.p95_points[-1].label == "Tue 01 Dec: p95 14 min (4 runs)"
    # p95 above p50 on the page (smaller y is higher).
    assert all(high.y < low.y for high, low in zip(chart.p95_points, chart.p50_points, strict=True))
    assert "p50 7 min, p95 14 min" in chart.description
