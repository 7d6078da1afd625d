"""Durations as people write them in workflow files: 500ms, 30s, 2m, 1h, 2d, 1w."""

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
            return float(match.group("n")) * _UNITS[match.group("unit") or "s"]
    raise ValueError(f"{value!r} is not a duration (examples: 500ms, 30s, 2m, 1h, 2d)")


def format_duration(seconds: float) -> str:
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
