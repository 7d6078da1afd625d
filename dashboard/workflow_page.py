"""What a workflow's page shows: its published graph, its versions and a diff of any two, its
last runs, how its runs went over 30 days, whether the reader may start or roll it back, and
for those who may change it, the form that tries its draft.

Nothing here writes; the caller has checked that `user` may see the workflow.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Count, F, Q
from django.http import QueryDict
from django.utils import timezone

from dashboard import graph, inputs, rollout_reads, runs_list
from orchestration import access
from orchestration.models import Run, Workflow, WorkflowVersion
from orchestration.spec import dump_document
from orchestration.status import RUN_FINAL, RunStatus
from orchestration.triggers import reads as trigger_reads

# The page lists this many versions, newest first; older ones are still in the admin.
VERSIONS_SHOWN = 100
RECENT_RUNS = 10
STATS_DAYS = 30


@dataclass(frozen=True)
class DiffLine:
    # "same", "changed", "removed" (only on the left) or "added" (only on the right).
    kind: str
    left_number: int | None
    left: str
    right_number: int | None
    right: str

    @property
    def mark(self) -> str:
        # A shape as well as a colour: the diff reads the same in grey.
        return {"same": "", "changed": "~", "removed": "−", "added": "+"}[self.kind]


def version_yaml(version: WorkflowVersion) -> str:
    """The version's spec as the export writes it (without the agents, which are not versioned
    with the workflow)."""
    return dump_document([], version.spec)


def side_by_side(left: str, right: str) -> list[DiffLine]:
    """A line diff of two texts, as rows of two columns."""
    a, b = left.splitlines(), right.splitlines()
    rows: list[DiffLine] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            rows += [DiffLine("same", i + 1, a[i], j + 1, b[j]) for i, j in zip(range(i1, i2), range(j1, j2), strict=True)]
            continue
        # A replaced block pairs its lines up; the longer side's rest is removed or added.
        for offset in range(max(i2 - i1, j2 - j1)):
            i, j = i1 + offset, j1 + offset
            has_left, has_right = i < i2, j < j2
            kind = "changed" if has_left and has_right else "removed" if has_left else "added"
            rows.append(
                DiffLine(
                    kind,
                    i + 1 if has_left else None,
                    a[i] if has_left else "",
                    j + 1 if has_right else None,
                    b[j] if has_right else "",
                )
            )
    return rows


@dataclass(frozen=True)
class Stats:
    runs: int
    finished: int
    succeeded: int
    p50_seconds: float | None

    @property
    def success_percent(self) -> int | None:
        return round(100 * self.succeeded / self.finished) if self.finished else None


def stats_for(workflow: Workflow) -> Stats:
    """Runs started in the last 30 days: how many, how many of the finished ones succeeded, and
    the median duration of the finished ones. Two queries whatever the number of runs: counts,
    then the one middle row by duration (the index on created_at bounds the scan)."""
    since = timezone.now() - timedelta(days=STATS_DAYS)
    # Trials of the draft say nothing about how the published workflow does.
    recent = Run.objects.filter(workflow=workflow, created_at__gte=since).exclude(version__trial=True)
    counts = recent.aggregate(
        runs=Count("id"),
        finished=Count("id", filter=Q(status__in=RUN_FINAL, finished_at__isnull=False)),
        succeeded=Count("id", filter=Q(status=RunStatus.SUCCEEDED)),
    )
    p50: float | None = None
    if counts["finished"]:
        middle = (
            recent.filter(status__in=RUN_FINAL, finished_at__isnull=False)
            .annotate(took=F("finished_at") - F("created_at"))
            .order_by("took", "id")
            .values_list("took", flat=True)[(counts["finished"] - 1) // 2]
        )
        p50 = middle.total_seconds()
    return Stats(counts["runs"], counts["finished"], counts["succeeded"], p50)


def _number(query: QueryDict, name: str, numbers: set[int], default: int | None, problems: list[str]) -> int | None:
    text = query.get(name, "").strip()
    if not text:
        return default
    value = int(text) if text.isdigit() and len(text) < 10 else None
    if value not in numbers:
        problems.append(f"{name}: {text[:20]!r} is not a version of this workflow; showing v{default}")
        return default
    return value


@dataclass(frozen=True)
class TryDraft:
    """The "try this draft" form: a start form for the draft's inputs, and what stopped the
    last attempt (the draft's problems, as publishing names them)."""

    form: inputs.StartForm
    problems: list[str]

    @property
    def has_errors(self) -> bool:
        return bool(self.problems) or self.form.has_errors


def draft_schema(workflow: Workflow) -> dict[str, dict[str, Any]]:
    """The draft's inputs as far as a form can show them without validating the draft (which
    the page does not do: it would cost a dozen queries). An entry that is not a mapping is
    left out; trying the draft then names it."""
    raw = workflow.inputs if isinstance(workflow.inputs, dict) else {}
    return {str(name): definition for name, definition in raw.items() if isinstance(definition, dict)}


def try_draft_form(
    workflow: Workflow,
    schema: dict[str, dict[str, Any]] | None = None,
    data: QueryDict | None = None,
    errors: dict[str, str] | None = None,
    problems: list[str] | None = None,
) -> TryDraft:
    return TryDraft(inputs.build_form(draft_schema(workflow) if schema is None else schema, data, errors), problems or [])


def workflow_page(
    workflow: Workflow, user: Any, query: QueryDict, form: inputs.StartForm | None = None, trial: TryDraft | None = None
) -> dict[str, Any]:
    # Trials of the draft are not versions one compares, rolls back to or starts runs on.
    versions = list(
        workflow.versions.filter(trial=False).select_related("published_by").order_by("-number")[:VERSIONS_SHOWN]
    )
    latest = versions[0] if versions else None
    by_number = {v.number: v for v in versions}
    problems: list[str] = []
    # Default: what the latest version changed.
    a = _number(query, "v_a", set(by_number), versions[1].number if len(versions) > 1 else None, problems)
    b = _number(query, "v_b", set(by_number), latest.number if latest else None, problems)
    diff: list[DiffLine] = []
    if a is not None and b is not None:
        diff = side_by_side(version_yaml(by_number[a]), version_yaml(by_number[b]))
    recent = list(
        Run.objects.filter(workflow=workflow)
        .select_related("workflow", "version", "started_by", "parent_step")
        .annotate(is_waiting=runs_list.waiting_annotation())
        .order_by("-created_at", "-id")[:RECENT_RUNS]
    )
    schema = (latest.spec.get("inputs") or {}) if latest is not None else {}
    can_change = access.can_change(user, workflow)
    return {
        "workflow": workflow,
        "version": latest,
        "versions": versions,
        "graph": graph.build(latest.spec, {}) if latest is not None else None,
        "v_a": a,
        "v_b": b,
        "diff": diff,
        "diff_changes": sum(1 for line in diff if line.kind != "same"),
        "diff_problems": problems,
        "rows": runs_list.rows_for(user, recent),
        "stats": stats_for(workflow),
        "trends": rollout_reads.workflow_trends(workflow.pk, timezone.localdate()),
        "stats_days": STATS_DAYS,
        "can_start": latest is not None and access.can_operate(user, workflow),
        "can_change": can_change,
        "form": form or inputs.build_form(schema),
        "triggers": trigger_reads.for_workflow(workflow, with_firings=can_change),
        "trial": (trial or try_draft_form(workflow)) if can_change else None,
    }
