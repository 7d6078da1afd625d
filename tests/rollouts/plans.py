"""Generated history with chosen plans: which runs start when, and what each of them does."""

from __future__ import annotations

import random
from datetime import date, datetime
from typing import Any

from django.utils import timezone

from orchestration.models import Workflow
from orchestration.rollouts import history
from orchestration.rollouts.history import RunPlan

HOUR = 3600.0


def by_plan(plans: dict[date, list[RunPlan]]) -> Any:
    def plan(day: date, index: int, rng: random.Random) -> RunPlan:
        return plans[day][index]

    return plan


def generate(workflow: Workflow, plans: dict[date, list[RunPlan]], *, now: datetime) -> history.HistoryReport:
    """The runs of `plans` (day -> its runs' plans), for days up to today (in TIME_ZONE)."""
    first = min(plans)
    return history.make_history(
        workflow=workflow,
        days=(timezone.localdate(now) - first).days + 1,
        runs_per_day=lambda day: len(plans.get(day, [])),
        now=now,
        outcomes=by_plan(plans),
    )
