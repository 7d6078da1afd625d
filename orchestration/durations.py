"""Durations: read from workflow files, written back to them, and shown to people.

Workflow files say 500ms, 30s, 2m, 1h, 2d, 1w (`parse_duration`, and `format_duration` for the
export, which parses back to the same number). Pages, the admin and the inbox show a length of
time through `human_duration` alone, so the same four minutes read "4 min 5 s" everywhere.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d|w)?\s*$")


def parse_duration(value: object) -> float:
    """Seconds in a duration; raises ValueError with a readable message."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("is too large a number to be a duration") from None
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a duration")
        if seconds < 0:
            raise ValueError(f"{value!r} is negative")
        return seconds
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            seconds = float(match.group("n")) * _UNITS[match.group("unit") or "s"]
            # float("1" + "0" * 400) is inf, not an error: refuse it as the number branch does.
            if not math.isfinite(seconds):
                raise ValueError("is too large a number to be a duration")
            return seconds
    raise ValueError(f"{value!r} is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)")


def format_duration(seconds: float) -> str:
    """The workflow-file form of a duration: the largest whole unit, so it parses back exactly."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    if seconds == 0:
        return "0s"
    millis = seconds * 1000
    if float(millis).is_integer():
        return f"{int(millis)}ms"
    return f"{seconds}s"


def _two_units(count: int, size: int, big: str, small: str) -> str:
    whole, rest = divmod(count, size)
    return f"{whole} {big} {rest} {small}" if rest else f"{whole} {big}"


def human_duration(seconds: float | None) -> str:
    """A length of time for people: 450 ms, 3.2 s, 42 s, 4 min 5 s, 2 h 7 min, 3 d 4 h.

    Two units at most, the second dropped when it is zero (1 min, 2 h); precise for short
    steps, readable for long runs. Rounding comes first and picks the unit, so 59.9 s is
    "1 min", never "60 s". None (not measured yet) is "", a negative span (clocks apart) 0 s.
    """
    if seconds is None or not math.isfinite(seconds):
        # Nothing measured; an infinite span is nothing a row can hold, so it never reaches here.
        return ""
    seconds = max(0.0, float(seconds))
    if seconds == 0:
        return "0 s"
    millis = round(seconds * 1000)
    if millis < 1:
        return "<1 ms"
    if millis < 1000:
        return f"{millis} ms"
    tenths = round(seconds, 1)
    if tenths < 10:
        return f"{tenths:g} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return _two_units(whole, 60, "min", "s")
    minutes = round(seconds / 60)
    if minutes < 24 * 60:
        return _two_units(minutes, 60, "h", "min")
    return _two_units(round(seconds / 3600), 24, "d", "h")
