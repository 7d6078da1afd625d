"""Durations: every form a workflow file may use, every refusal and its words, and the one way
pages, the admin and the inbox show a length of time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from approvals.templatetags.inbox import ago, time_left
from dashboard.templatetags.baton import duration, elapsed, until
from orchestration.admin import seconds_label
from orchestration.durations import format_duration, human_duration, parse_duration

# ---------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("2m", 120),
        ("1h", 3600),
        ("2d", 172_800),
        ("1w", 604_800),
        ("1.5h", 5400),
        ("30", 30),  # no unit: seconds
        (" 2 m ", 120),  # spaces around and between
        ("0", 0),
        (0, 0),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_it_reads_every_form_a_workflow_file_may_use(written: Any, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (True, "True is not a duration"),
        (-1, "-1 is negative"),
        (-0.5, "-0.5 is negative"),
        (float("inf"), "inf is not a duration"),
        (float("nan"), "nan is not a duration"),
        (10**400, "is too large a number to be a duration"),
        ("1" + "0" * 400, "is too large a number to be a duration"),
        ("-5s", "'-5s' is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)"),
        ("5 minutes", "'5 minutes' is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)"),
        ("1e3s", "'1e3s' is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)"),
        ("", "'' is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)"),
        ("soon", "'soon' is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)"),
        (None, "None is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)"),
        ([1, 2], "[1, 2] is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)"),
    ],
)
def test_it_refuses_anything_else_saying_why(written: Any, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_duration(written)
    assert str(refused.value) == message


@pytest.mark.parametrize("seconds", [0, 0.5, 0.0015, 1.5, 30, 60, 90, 3600, 5400, 86_400, 604_800, 1_209_600])
def test_the_file_form_reads_back_as_the_same_number(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_the_file_form_uses_the_largest_whole_unit() -> None:
    assert [format_duration(s) for s in (0, 0.5, 90, 120, 3600, 172_800, 604_800)] == [
        "0s", "500ms", "90s", "2m", "1h", "2d", "1w"
    ]


# ---------------------------------------------------------------------------------------------
# Showing a length of time to people


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (0, "0 s"),
        (0.0004, "<1 ms"),
        (0.004, "4 ms"),
        (0.45, "450 ms"),
        (0.9996, "1 s"),  # rounds up into the next unit, not "1000 ms"
        (1, "1 s"),
        (3.24, "3.2 s"),
        (9.96, "10 s"),
        (42.4, "42 s"),
        (59.4, "59 s"),
        (59.9, "1 min"),  # never "60 s"
        (60, "1 min"),
        (245, "4 min 5 s"),
        (3599.4, "59 min 59 s"),
        (3599.6, "1 h"),
        (3600, "1 h"),
        (7620, "2 h 7 min"),
        (86_399, "1 d"),
        (90_000, "1 d 1 h"),
        (3 * 86_400 + 4 * 3600, "3 d 4 h"),
        (400 * 86_400, "400 d"),
        (-3, "0 s"),  # clocks a little apart: a span is never negative
        (float("nan"), ""),
    ],
)
def test_a_length_of_time_reads_in_at_most_two_units(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_the_admin_the_dashboard_and_the_inbox_say_the_same_four_minutes() -> None:
    now = timezone.now()
    assert seconds_label(245) == duration(245) == "4 min 5 s"
    assert elapsed(now - timedelta(seconds=245), now) == "4 min 5 s"
    assert time_left(now + timedelta(minutes=4), now) == "in 4 min"
    assert ago(now - timedelta(minutes=4), now) == "4 min ago"


def test_the_admin_shows_a_dash_for_what_has_not_finished() -> None:
    assert seconds_label(None) == "—"
    assert duration(None) == ""


def test_the_inbox_counts_deadlines_to_the_minute() -> None:
    now = timezone.now()
    assert time_left(now + timedelta(seconds=20), now) == "in less than a minute"
    assert time_left(now + timedelta(hours=1, minutes=20, seconds=10), now) == "in 1 h 20 min"
    assert time_left(now + timedelta(hours=48) - timedelta(seconds=1), now) == "in 2 d"
    assert time_left(now - timedelta(minutes=20), now) == "overdue by 20 min"
    assert ago(now - timedelta(seconds=30), now) == "just now"


def test_a_moment_already_passed_is_not_ahead() -> None:
    assert until(timezone.now() - timedelta(seconds=1)) == ""
    assert until(None) == ""
