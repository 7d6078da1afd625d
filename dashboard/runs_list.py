"""The runs list: what its filters mean, one page of it by keyset, and what each row shows.

Pages are cut by a cursor on (created_at, id), the list's own order, never by OFFSET: a page
costs the same at run 100,000 as at run 50, and runs started while someone reads page 3 neither
push a row onto page 4 twice nor hide one. Nothing a user types reaches the database unbounded;
a value that means nothing is reported in words and filters nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import BooleanField, Count, Exists, ExpressionWrapper, OuterRef, Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import QueryDict
from django.utils import timezone

from dashboard.waiting_words import WaitingSummary, waiting_summaries
from orchestration import access
from orchestration.models import Run, StepRun
from orchestration.status import STEP_FINAL, RunStatus, StepStatus

PER_PAGE = 50
# The text search scans each run's input as text; longer needles are refused, not truncated.
SEARCH_MAX = 100
TEXT_MAX = 150
# Not a RunStatus: a running run none of whose steps can move until a person, an event, a timer
# or a child run does (see `waiting_q`).
WAITING = "waiting"
STATUS_CHOICES = [
    (RunStatus.RUNNING.value, "Running"),
    (WAITING, "Waiting on someone or something"),
    *[(value, label) for value, label in RunStatus.choices if value != RunStatus.RUNNING],
]
# The steps that are moving on their own: a worker has them, or will without anyone's help.
ACTIVE_STEP = (StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.THROTTLED)


def waiting_q() -> Q:
    """A run is *waiting* when it is running, at least one of its step rows (a step, or an item
    of a for_each) is WAITING, and none is queued, running, retrying or throttled.

    A for_each head stays "running" while its items run, so it is left out: its items speak for
    it. PENDING rows (a later loop round, items held back by `concurrency`) move only when an
    earlier row does, so they do not make a run active either.
    """
    steps = StepRun.objects.filter(run=OuterRef("pk"))
    moving = steps.filter(status__in=ACTIVE_STEP).exclude(map_index__isnull=True, items_total__isnull=False)
    return Q(status=RunStatus.RUNNING) & Q(Exists(steps.filter(status=StepStatus.WAITING))) & ~Q(Exists(moving))


def waiting_annotation() -> ExpressionWrapper[Q]:
    """`is_waiting` for a queryset of runs, asked of each row the page reads.

    waiting_q itself, correlated with the outer run: wrapped as `pk IN (waiting runs)` instead,
    PostgreSQL computes the set of every waiting run in the table before it returns the first
    page (60 ms at 100,000 runs); this way it checks the page's 51 rows, two probes each of the
    small partial indexes on waiting and moving step rows.
    """
    return ExpressionWrapper(waiting_q(), output_field=BooleanField())


@dataclass
class Filters:
    """The list's filters as the user gave them (to redraw the form) and as understood."""

    workflow: str = ""
    status: str = ""
    starter: str = ""
    trigger: str = ""
    q: str = ""
    window: dict[str, datetime] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.workflow or self.status or self.starter or self.trigger or self.q or self.window)


def _text(query: QueryDict, name: str) -> str:
    # PostgreSQL refuses a NUL in a text parameter; no run's input or name holds one.
    return query.get(name, "").replace("\x00", "").strip()


def parse_filters(query: QueryDict, workflow_keys: set[str]) -> Filters:
    filters = Filters()
    status = _text(query, "status")
    if status:
        if status in dict(STATUS_CHOICES):
            filters.status = status
        else:
            filters.problems.append(f"status: {status[:40]!r} is not a status; pick one from the list")
    workflow = _text(query, "workflow")
    if workflow:
        if workflow in workflow_keys:
            filters.workflow = workflow
        else:
            filters.problems.append(f"workflow: there is no workflow {workflow[:100]!r} that you can see")
    for name in ("starter", "trigger"):
        text = _text(query, name)
        if len(text) > TEXT_MAX:
            filters.problems.append(f"{name}: at most {TEXT_MAX} characters")
        else:
            setattr(filters, name, text)
    text = _text(query, "q")
    if len(text) > SEARCH_MAX:
        filters.problems.append(f"search: at most {SEARCH_MAX} characters; shorten it")
    else:
        filters.q = text
    filters.window, problems = started_window(query)
    filters.problems += problems
    return filters


def started_window(query: QueryDict) -> tuple[dict[str, datetime], list[str]]:
    """`started_after` / `started_before` (an ISO date or date and time, in TIME_ZONE when it
    names none), and a message per value that is not one; a bad value filters nothing.

    The rollouts pages link here with these two names.
    """
    window: dict[str, datetime] = {}
    problems: list[str] = []
    for name in ("started_after", "started_before"):
        text = _text(query, name)
        if not text:
            continue
        moment = _moment(text)
        if moment is None:
            problems.append(f"{name}: {text[:40]!r} is not a date or time; write it like 2026-11-30 or 2026-11-30T09:00")
            continue
        window[name] = moment
    return window, problems


def _moment(text: str) -> datetime | None:
    if len(text) > 40:
        return None
    try:
        # A "+01:00" offset arrives as " 01:00" when a link did not escape the plus sign.
        moment = datetime.fromisoformat(text.replace(" ", "+") if "T" in text else text)
    except ValueError:
        return None
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


def apply(queryset: QuerySet[Run], filters: Filters) -> QuerySet[Run]:
    if filters.status == WAITING:
        queryset = queryset.filter(waiting_q())
    elif filters.status:
        queryset = queryset.filter(status=filters.status)
    if filters.workflow:
        queryset = queryset.filter(workflow__key=filters.workflow)
    if filters.starter:
        queryset = queryset.filter(started_by__username=filters.starter)
    if filters.trigger:
        queryset = queryset.filter(trigger=filters.trigger)
    if "started_after" in filters.window:
        queryset = queryset.filter(created_at__gte=filters.window["started_after"])
    if "started_before" in filters.window:
        queryset = queryset.filter(created_at__lt=filters.window["started_before"])
    if filters.q:
        number = filters.q.removeprefix("#")
        if number.isdigit() and len(number) < 19:
            queryset = queryset.filter(pk=int(number))
        else:
            # A scan of the input's JSON text (input::text ILIKE on PostgreSQL), bounded by
            # SEARCH_MAX and by the other filters; good enough at 100,000 runs, no index.
            queryset = queryset.annotate(input_text=Cast("input", TextField())).filter(input_text__icontains=filters.q)
    return queryset


# ---------------------------------------------------------------------------------------------
# Keyset pages


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    pk: int

    def __str__(self) -> str:
        return f"{self.created_at.isoformat()}~{self.pk}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        moment_text, _, pk_text = text.partition("~")
        moment = _moment(moment_text)
        if moment is None or not pk_text.isdigit() or len(pk_text) > 18:
            return None
        return cls(moment, int(pk_text))

    @classmethod
    def of(cls, run: Run) -> Cursor:
        return cls(run.created_at, run.pk)


@dataclass
class Page:
    runs: list[Run]
    # Cursors for the Older and Newer links, None when there is nothing that way.
    older: Cursor | None
    newer: Cursor | None


def page_of(queryset: QuerySet[Run], query: QueryDict, problems: list[str]) -> Page:
    """One page: newest first from the top, or older than `after`, or newer than `before`.

    One query of PER_PAGE + 1 rows: the extra row says whether there is another page.
    """
    direction, text = next(((name, _text(query, name)) for name in ("after", "before") if query.get(name)), ("", ""))
    cursor = Cursor.parse(text) if text else None
    if text and cursor is None:
        problems.append(f"{direction}: {text[:60]!r} is not a page of this list; showing the newest runs")
        direction = ""
    if direction == "before" and cursor is not None:
        later = Q(created_at__gt=cursor.created_at) | Q(created_at=cursor.created_at, pk__gt=cursor.pk)
        rows = list(queryset.filter(later).order_by("created_at", "id")[: PER_PAGE + 1])
        more = len(rows) > PER_PAGE
        runs = rows[:PER_PAGE][::-1]
        return Page(runs, older=Cursor.of(runs[-1]) if runs else None, newer=Cursor.of(runs[0]) if runs and more else None)
    if direction == "after" and cursor is not None:
        queryset = queryset.filter(
            Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, pk__lt=cursor.pk)
        )
    rows = list(queryset.order_by("-created_at", "-id")[: PER_PAGE + 1])
    runs = rows[:PER_PAGE]
    older = Cursor.of(runs[-1]) if len(rows) > PER_PAGE else None
    newer = Cursor.of(runs[0]) if runs and cursor is not None else None
    return Page(runs, older=older, newer=newer)


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class MapProgress:
    step_key: str
    done: int
    total: int


@dataclass(frozen=True)
class RunRow:
    run: Run
    done: int
    total: int
    # Whether the run that called this sub-workflow run may be shown (and linked to).
    parent_visible: bool = False
    # What the run waits for, in words and with a link (see waiting_q), when it is waiting.
    waiting: WaitingSummary | None = None
    maps: tuple[MapProgress, ...] = ()

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


def progress_for(runs: Sequence[Run]) -> dict[int, int]:
    """Finished steps per run, in one aggregate query over the runs' head rows.

    A step counts as finished when every head row it has is final: with a loop, a step sent
    back for round 2 has a final round-1 row and an open round-2 row, and is not done.
    """
    rows = (
        StepRun.objects.filter(run__in=[r.pk for r in runs], map_index__isnull=True)
        .order_by()
        .values("run_id")
        .annotate(
            steps=Count("step_key", distinct=True),
            open=Count("step_key", distinct=True, filter=~Q(status__in=STEP_FINAL)),
        )
    )
    return {row["run_id"]: row["steps"] - row["open"] for row in rows}


def map_progress_for(runs: Sequence[Run]) -> dict[int, list[MapProgress]]:
    """The open for_each steps of these runs, items done / total (one query)."""
    heads = (
        StepRun.objects.filter(run__in=[r.pk for r in runs], map_index__isnull=True, items_total__isnull=False)
        .exclude(status__in=STEP_FINAL)
        .order_by("run_id", "id")
        .values_list("run_id", "step_key", "items_done", "items_total")
    )
    found: dict[int, list[MapProgress]] = {}
    for run_id, key, done, total in heads:
        found.setdefault(run_id, []).append(MapProgress(key, done, total or 0))
    return found


def rows_for(user: Any, runs: Sequence[Run]) -> list[RunRow]:
    """The rows of one page in four queries at most, whatever its size."""
    done = progress_for(runs) if runs else {}
    maps = map_progress_for(runs) if runs else {}
    waiting_ids = [run for run in runs if getattr(run, "is_waiting", False)]
    waiting = waiting_summaries(waiting_ids) if waiting_ids else {}
    # A sub-workflow run may be seen through its own workflow while its caller is not: then
    # the page says nothing about the caller.
    parents = access.visible_among(user, {run.parent_step.run_id for run in runs if run.parent_step is not None})
    return [
        RunRow(
            run=run,
            done=done.get(run.pk, 0),
            total=len(run.version.spec.get("steps", [])),
            parent_visible=run.parent_step is not None and run.parent_step.run_id in parents,
            waiting=waiting.get(run.pk, WaitingSummary("waiting")) if getattr(run, "is_waiting", False) else None,
            maps=tuple(maps.get(run.pk, ())),
        )
        for run in runs
    ]


def runs_page(user: Any, query: QueryDict) -> dict[str, Any]:
    """Everything the runs page and its table partial show."""
    workflows = list(access.visible_workflows(user).order_by("name").values_list("key", "name"))
    filters = parse_filters(query, {key for key, _ in workflows})
    queryset = apply(
        access.visible_runs(user).select_related("workflow", "version", "started_by", "parent_step"), filters
    ).annotate(is_waiting=waiting_annotation())
    page = page_of(queryset, query, filters.problems)
    kept = query.copy()
    for name in ("after", "before"):
        kept.pop(name, None)
    return {
        "rows": rows_for(user, page.runs),
        "page": page,
        "filters": filters,
        "statuses": STATUS_CHOICES,
        "workflows": workflows,
        "filter_query": kept.urlencode(),
        "filtered": filters.active,
        "window": filters.window,
        "window_problems": filters.problems,
    }
