"""What a run cost: token and cost figures summed over every attempt, sub-workflow runs included."""

from __future__ import annotations

from typing import TypedDict

from orchestration.agents.base import usage_figures
from orchestration.models import Attempt, Run


class RunUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float


def run_tree_ids(run: Run) -> list[int]:
    """The run and every sub-workflow run below it, one query per level of nesting."""
    ids = [run.pk]
    frontier = [run.pk]
    while frontier:
        # "parent_step set" said outright, so PostgreSQL probes the index on it rather than scan every run.
        frontier = list(
            Run.objects.filter(parent_step__isnull=False, parent_step__run_id__in=frontier).values_list("pk", flat=True)
        )
        ids.extend(frontier)
    return ids


def run_usage(run: Run) -> RunUsage:
    """Sum the usage of every attempt, failed ones too: a failed call may still be billed.

    Summed in Python over one query rather than with SQL casts: usage is whatever an agent
    returned, and one python agent's `"prompt_tokens": "n/a"` must not break a run's page.
    """
    totals: RunUsage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0.0}
    rows = Attempt.objects.filter(step_run__run_id__in=run_tree_ids(run)).values_list("usage", flat=True)
    for usage in rows:
        figures = usage_figures(usage)
        totals["prompt_tokens"] += figures.prompt_tokens
        totals["completion_tokens"] += figures.completion_tokens
        totals["total_tokens"] += figures.total_tokens
        totals["cost"] += figures.cost
    totals["cost"] = round(totals["cost"], 6)
    return totals

