"""The trend chart builder (dashboard/charts.py): pure geometry and labels, no database."""

from __future__ import annotations

from datetime import date, timedelta

from dashboard import charts

DAYS = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]


def figures(values: dict[int, float | None], runs: int = 10) -> list[charts.DayFigure]:
    return [charts.DayFigure(day=DAYS[i], value=v, runs=runs) for i, v in values.items()]


def test_a_point_per_day_with_runs_placed_left_to_right_and_higher_for_bigger_values() -> None:
    values: dict[int, float | None] = {i: 0.5 for i in range(29)}
    values[29] = 1.0
    chart = charts.build(metric="success_rate", title="Success rate", days=DAYS, figures=figures(values), target=0.95)
    first, last = chart.points[0], chart.points[-1]
    assert len(chart.points) == 30
    assert first.x == chart.plot_left and last.x == chart.plot_right
    assert last.y == chart.plot_top and first.y == (chart.plot_top + chart.plot_bottom) / 2
    assert chart.path.startswith(f"M{first.x:g},{first.y:g} L") and chart.path.endswith(f"L{last.x:g},{last.y:g}")
    assert chart.path.count("M") == 1


def test_a_day_without_runs_breaks_the_line_instead_of_drawing_through_it() -> None:
    chart = charts.build(metric="cost_per_run", title="Cost", days=DAYS, figures=figures({0: 0.2, 1: None, 2: 0.3, 3: 0.25}), target=0.5)
    assert len(chart.points) == 3
    assert chart.path.count("M") == 2


def test_the_target_is_a_line_on_the_chart_even_above_every_point() -> None:
    chart = charts.build(
        metric="p95_duration", title="p95", days=DAYS, figures=figures({5: 60.0, 6: 90.0}), target=900,
        comparison="lte", target_note=" over 7 days",
    )
    assert chart.target_y is not None and chart.plot_top <= chart.target_y < chart.plot_bottom
    assert all(p.y > chart.target_y for p in chart.points)
    assert chart.target_label == "Target: at most 15 min over 7 days"


def test_each_point_says_its_day_figure_and_runs_and_whether_it_meets_the_target() -> None:
    chart = charts.build(
        metric="success_rate", title="Success rate", days=DAYS, figures=figures({3: 0.9}, runs=21), target=0.95
    )
    (point,) = chart.points
    assert point.label == "Wed 04 Nov: 90% (21 runs)"
    assert point.passed is False
    at_most = charts.build(metric="retries_per_run", title="Retries", days=DAYS, figures=figures({3: 0.2}), target=0.5, comparison="lte")
    assert at_most.points[0].passed is True


def test_rates_have_a_fixed_percent_axis_and_other_metrics_round_ticks_from_zero() -> None:
    rate = charts.build(metric="success_rate", title="s", days=DAYS, figures=figures({0: 0.97}), target=0.95)
    assert [t.label for t in rate.y_ticks] == ["0%", "25%", "50%", "75%", "100%"]
    loops = charts.build(metric="loops_per_run", title="l", days=DAYS, figures=figures({0: 2.3}), target=1.5)
    labels = [t.label for t in loops.y_ticks]
    assert labels[0] == "0" and float(labels[-1]) >= 2.3
    assert loops.y_ticks[0].position == loops.plot_bottom and loops.y_ticks[-1].position == loops.plot_top


def test_the_day_axis_names_a_day_a_week_ending_on_the_last_day() -> None:
    chart = charts.build(metric="runs", title="Runs", days=DAYS, figures=[], target=3)
    assert [t.label for t in chart.x_ticks] == ["02 Nov", "09 Nov", "16 Nov", "23 Nov", "30 Nov"]


def test_with_no_runs_there_are_no_points_and_the_description_says_so() -> None:
    chart = charts.build(metric="runs", title="Runs", days=DAYS, figures=[], target=3)
    assert chart.points == [] and chart.path == "" and chart.rows == []
    assert "no runs" in chart.description


def test_the_numbers_are_given_as_a_table_too() -> None:
    chart = charts.build(metric="cost_per_run", title="Cost", days=DAYS, figures=figures({0: 0.123, 2: 0.004}, runs=3), target=0.5)
    assert chart.rows == [(DAYS[0], "$0.12", 3), (DAYS[2], "$0.004", 3)]


def test_figures_read_as_people_read_them() -> None:
    assert charts.format_value("success_rate", 0.965) == "96.5%"
    assert charts.format_value("success_rate", 1.0) == "100%"
    assert charts.format_value("approval_wait", 14400) == "4 h"
    assert charts.format_value("loops_per_run", 1.5) == "1.50 per run"
    assert charts.format_value("runs", 21.0) == "21"
    assert charts.format_value("cost_per_run", None) == "no data"


def test_a_duration_axis_steps_in_units_a_clock_reads() -> None:
    chart = charts.build(metric="p95_duration", title="p95", days=DAYS, figures=figures({0: 700.0}), target=900, comparison="lte")
    assert [t.label for t in chart.y_ticks] == ["0 s", "5 min", "10 min", "15 min", "20 min"]
