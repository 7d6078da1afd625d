"""What a run cost: token and cost figures summed over every attempt, sub-workflow runs included."""

from __future__ import annotations

from typing import Any, TypedDict

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
        frontier = list(Run.objects.filter(parent_step__run_id__in=frontier).values_list("pk", flat=True))
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
        if not isinstance(usage, dict):
            continue
        prompt = _number(usage.get("prompt_tokens"))
        completion = _number(usage.get("completion_tokens"))
        total = _number(usage.get("total_tokens")) or prompt + completion
        totals["prompt_tokens"] += int(prompt)
        totals["completion_tokens"] += int(completion)
        totals["total_tokens"] += int(total)
        totals["cost"] += _number(usage.get("cost"))
    totals["cost"] = round(totals["cost"], 6)
    return totals


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)
