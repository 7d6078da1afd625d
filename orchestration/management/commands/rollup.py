"""Rebuild the rollout metrics' daily snapshots of a range of days from the raw rows."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from orchestration.rollouts import metrics

# A rebuild is one snapshot per day; ten years is far more than anyone has, and bounds a typo.
MAX_DAYS = 3660


def _day(option: str, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option}: '{value}' is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = "Rebuilds the daily snapshots (per workflow version, workflow and agent version) of a range of days."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--since", required=True, metavar="YYYY-MM-DD", help="The first day to rebuild.")
        parser.add_argument("--until", metavar="YYYY-MM-DD", help="The last day to rebuild (default: today).")

    def handle(self, *args: Any, since: str, until: str | None, **options: Any) -> None:
        first = _day("--since", since)
        last = _day("--until", until) if until else timezone.localdate()
        if last < first:
            raise CommandError(f"--until: {last} is before --since {first}")
        days = metrics.days_between(first, last)
        if len(days) > MAX_DAYS:
            raise CommandError(f"--since: {len(days):,} days is more than {MAX_DAYS:,} at once")
        now = timezone.now()
        total = 0
        for day in days:
            written = metrics.snapshot_day(day, now=now)
            total += written
            if written:
                self.stdout.write(f"{day}: {written} snapshot row{'s' if written != 1 else ''}")
        self.stdout.write(f"rebuilt {len(days)} day{'s' if len(days) != 1 else ''} from {first} to {last}: {total} rows")
