"""Shared by the rollout page tests: a rollout of `digest` and runs behind it."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

from django.utils import timezone

from orchestration.models import Workflow
from orchestration.rollouts import history, metrics
from orchestration.rollouts import transitions as rollouts
from orchestration.rollouts.models import Metric, Rollout
from orchestration.status import RunStatus


def start_rollout(owner: Any, key: str = "digest") -> Rollout:
    return rollouts.start_rollout(workflow=Workflow.objects.get(key=key), owner=owner, actor=owner)


def succeeding(day: date, index: int, rng: random.Random) -> history.RunPlan:
    # Started in the first minutes of their day and half a minute long: finished by now.
    return history.RunPlan(status=RunStatus.SUCCEEDED, start=60.0 * index, duration=30.0)


def passing_history(rollout: Rollout, actor: Any, *, days: int = 8, per_day: int = 5) -> None:
    """Enough quick successful runs for every default criterion to pass. digest has no
    approvals, so its owner turns the approval wait off, as the shared design says they do."""
    history.make_history(workflow=rollout.workflow, days=days, runs_per_day=per_day, outcomes=succeeding)
    criterion = rollout.criteria.get(metric=Metric.APPROVAL_WAIT)
    rollouts.change_criterion(criterion=criterion, actor=actor, enabled=False)
    metrics.rollup(timezone.localdate() - timedelta(days=days))
