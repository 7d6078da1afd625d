"""What the dashboard's live partials show, computed from (object, user) without a request.

The full page, the htmx action that returns the partial alone, and the refresh the live push
asks for after a commit all call the same function here, so the three can never show a
run differently. Nothing here writes; who may see what is orchestration.access's call, and the
caller has already checked that `user` may see the object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.paginator import Page, Paginator
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery

from dashboard import agent_status, gantt, graph, waiting_words
from orchestration import access
from orchestration.models import Agent, AgentKind, Attempt, Run, RunEvent, StepKind, StepRun
from orchestration.reads import head_rows, latest_heads
from orchestration.status import STEP_DONE_OK, STEP_FINAL, StepStatus
from orchestration.usage import run_usage

# A for_each over thousands of items writes thousands of events: the run page shows the latest
# page of the history, and the history's own page (dashboard:run_events) browses the rest.
EVENTS_PER_PAGE = 100
ITEMS_PER_PAGE = 50
# The steps table draws at most this many rows unless the reader asks for all (?steps=all):
# drawing a 1,000-step run's rows took over a second, most of the page's time. The graph still
# shows every step.
STEP_ROWS_SHOWN = 100

# The items list's filter: which item statuses each choice shows ("all" filters nothing).
ITEM_FILTERS: dict[str, tuple[str, ...]] = {
    "failed": (StepStatus.FAILED,),
    "running": (StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.THROTTLED),
    "waiting": (StepStatus.PENDING, StepStatus.WAITING),
}


# A map over a sub-workflow lists this many of its child runs on the run page; its items page
# lists them all.
CHILDREN_SHOWN = 20


@dataclass(frozen=True)
class MappedChild:
    index: int
    run_id: int
    status: str
    workflow: str


@dataclass(frozen=True)
class StepRow:
    step: StepRun
    agent_simulated: bool
    latest: bool
    child_run_id: int | None
    attempts: int
    # With fallback_from set: whether the primary agent was called and failed, or was never
    # called because its circuit was open.
    primary_called: bool = False
    # The agent version its attempts ran ("" for the agent's own config).
    version_label: str = ""
    # What it waits for, when it waits: "waiting: approval by legal, due in 3 hours".
    waiting: waiting_words.WaitingSummary | None = None
    # A step that chooses its agent (or sub-workflow) at run time: the set it chooses from.
    choices: tuple[str, ...] = ()
    # A map over a sub-workflow: its items' child runs, lowest index first (at most CHILDREN_SHOWN).
    mapped_children: tuple[MappedChild, ...] = ()
    mapped_children_more: int = 0

    @property
    def fold_id(self) -> str:
        # Lets static/js/baton.js keep an opened output open when the partial is swapped whole.
        return f"step-output-{self.step.pk}"

    @property
    def detail_id(self) -> str:
        return f"step-detail-{self.step.pk}"


def attempts_by_step(step_runs: QuerySet[Attempt]) -> dict[int, list[Attempt]]:
    """Attempts grouped by their step row, oldest first, in one query."""
    grouped: dict[int, list[Attempt]] = {}
    for attempt in step_runs.select_related("agent_version").order_by("step_run_id", "number"):
        grouped.setdefault(attempt.step_run_id, []).append(attempt)
    return grouped


# What the run page reads of every head row: enough to order them, choose the table's rows,
# colour the graph, count the finished steps and say what a waiting step waits for. Reading
# every column of a 1,000-step run's thousand rows (and making models of them) was a third of
# its page's time; the rows the table shows are read again whole (SHOWN_COLUMNS).
HEAD_COLUMNS = (
    "run_id", "step_key", "iteration", "kind", "status", "agent_name", "fallback_from", "items_total",
    "waiting_for", "wake_at", "wait_event", "wait_key",
)  # fmt: skip
# What the run page reads of the rows its table shows. A step's input and its attempts' log
# lines and tracebacks are shown when the reader opens the step (step_detail): a 1,000-step
# run's JSON columns were a third of the page's database time.
SHOWN_COLUMNS = tuple(f.attname for f in StepRun._meta.concrete_fields if f.attname not in {"input", "item", "usage"})


def event_page(run: Run, *, page: Any = None, newest_first: bool = False) -> Page[RunEvent]:
    """One page of the run's whole event history: two queries (the count and the page), with
    what `_events.html` shows of each event, its step and who acted (a hundred events' step rows
    read whole, their inputs and outputs too, were most of the timeline's time)."""
    events = (
        RunEvent.objects.filter(run=run)
        .select_related("step_run", "actor")
        .only(
            "run_id", "step_run_id", "kind", "to_status", "message", "actor_id", "created_at",
            "step_run__step_key", "step_run__iteration", "step_run__map_index",
            f"actor__{get_user_model().USERNAME_FIELD}",
        )  # fmt: skip
    )
    return Paginator(events.order_by("-id" if newest_first else "id"), EVENTS_PER_PAGE).get_page(page)


def rows_shown(rows: list[StepRun], limit: int) -> list[StepRun]:
    """At most `limit` of `rows`, in their order: first those a reader must look at (every row
    not succeeded or skipped: running, waiting, failed, ...), then the others, earliest first."""
    if len(rows) <= limit:
        return rows
    open_first = [row for row in rows if row.status not in STEP_DONE_OK] + [row for row in rows if row.status in STEP_DONE_OK]
    keep = {row.pk for row in open_first[:limit]}
    return [row for row in rows if row.pk in keep]


def run_page(run: Run, user: Any, notice: str = "", *, all_steps: bool = False) -> dict[str, Any]:
    """What the run page (`_run_live.html`) shows `user`, who may see `run`: every step in the
    graph, and in the table at most STEP_ROWS_SHOWN rows unless `all_steps`."""
    spec = run.version.spec
    order = {s["key"]: i for i, s in enumerate(spec.get("steps", []))}
    light = head_rows(run, only=HEAD_COLUMNS)
    # Compensations ("<key>.undo") are not steps of the spec: they get their own section.
    compensations = [row for row in light if row.kind == StepKind.COMPENSATION]
    step_rows = sorted(
        (row for row in light if row.kind != StepKind.COMPENSATION),
        key=lambda s: (order.get(s.step_key, len(order)), s.iteration, s.pk),
    )
    step_rows_total = len(step_rows)
    if not all_steps:
        step_rows = rows_shown(step_rows, STEP_ROWS_SHOWN)
    shown = [row.pk for row in (*step_rows, *compensations)]
    # The shown rows whole (the table's Result column: their outputs too), in one query. Every
    # list below holds these in place of their light rows, so nothing reads a column the light
    # ones lack (which would cost a query a row); a row gone in between (its run deleted) is
    # left out rather than read again.
    whole = {row.pk: row for row in StepRun.objects.filter(pk__in=shown).only(*SHOWN_COLUMNS)}
    rows = [whole.get(row.pk, row) for row in light]
    step_rows = [whole[row.pk] for row in step_rows if row.pk in whole]
    compensations = [whole[row.pk] for row in compensations if row.pk in whole]
    heads = latest_heads(rows)
    simulated = set(
        Agent.objects.filter(
            name__in={s.agent_name for s in rows if s.agent_name}, kind=AgentKind.SIMULATED
        ).values_list("name", flat=True)
    )
    # A for_each head is never attempted itself; its items are.
    # One grouped count of the items by head and status serves the Gantt timeline as well.
    items = gantt.item_counts(run)
    item_attempts = {pk: counts.attempts for pk, counts in items.items()}
    # One query over the run's attempts answers two questions, whatever the number of steps:
    # which agent version each step ran (a for_each head's through its items; a run keeps one
    # version per agent, so one label per step), counting only attempts of the step's current
    # agent, so a fallback's row never shows its primary's version; and, for a step a fallback
    # took over, whether its primary was called (and failed) or never was (circuit open).
    versions: dict[int, str] = {}
    primary_called: set[int] = set()
    for step_id, parent_id, agent_name, step_agent, fallback_from, label in (
        Attempt.objects.filter(step_run__run=run)
        .filter(
            Q(agent_version__isnull=False, agent_name=F("step_run__agent_name"))
            | (Q(step_run__fallback_from=F("agent_name")) & ~Q(step_run__fallback_from=""))
        )
        .order_by("id")
        .values_list(
            "step_run_id",
            "step_run__parent_id",
            "agent_name",
            "step_run__agent_name",
            "step_run__fallback_from",
            "agent_version__label",
        )
    ):
        if fallback_from and agent_name == fallback_from:
            primary_called.add(step_id)
        if label is not None and agent_name == step_agent:
            versions[parent_id or step_id] = label
    # The attempts of the head rows the timeline draws, in one query; a for_each's items keep
    # theirs for the items list.
    attempts = gantt.drawn_attempts([*step_rows, *compensations])
    # "parent_step set" said outright: without it PostgreSQL joins the run's steps to every run
    # in the table (a sequential scan, 60 ms at 100,000 runs) rather than probe the few that have one.
    # The same query brings the child runs of maps over a sub-workflow (their parent steps are
    # the map's items, rows of this run too), for the map's row.
    children: dict[int, int] = {}
    mapped: dict[int, list[MappedChild]] = {}
    for step_id, child_id, status, workflow_key, map_head, index in (
        Run.objects.filter(parent_step__isnull=False, parent_step__run=run)
        .order_by("pk")
        .values_list("parent_step_id", "pk", "status", "workflow__key", "parent_step__parent_id", "parent_step__map_index")
    ):
        children[step_id] = child_id
        if map_head is not None:
            mapped.setdefault(map_head, []).append(MappedChild(index or 0, child_id, status, workflow_key))
    for listed in mapped.values():
        # A retried item may have had more than one child run: its latest counts.
        newest = {child.index: child for child in listed}
        listed[:] = sorted(newest.values(), key=lambda child: child.index)
    steps_spec = {s["key"]: s for s in spec.get("steps", [])}
    # The latest hundred events, drawn oldest first as the run unfolded.
    latest = event_page(run, newest_first=True)
    events = list(latest.object_list)[::-1]
    usage = run_usage(run)
    # One query more only when a step waits on people or on a sub-workflow run.
    waiting = waiting_words.step_summaries({run.pk: run}, rows)
    compensations.sort(key=lambda c: c.pk)
    return {
        "run": run,
        "graph": graph.build(spec, heads),
        # One query more (the steps' status events), whatever the run's size.
        "gantt": gantt.build(
            run,
            step_rows + compensations,
            attempts,
            spec_keys=list(order),
            items=items,
            waiting={pk: summary.text for pk, summary in waiting.items()},
        ),
        "steps": [
            StepRow(
                step=row,
                agent_simulated=row.agent_name in simulated,
                latest=heads[row.step_key] is row,
                child_run_id=children.get(row.pk),
                attempts=item_attempts.get(row.pk, row.attempts),
                primary_called=row.pk in primary_called,
                version_label=versions.get(row.pk, ""),
                waiting=waiting.get(row.pk),
                choices=_choices(steps_spec.get(row.step_key, {})),
                mapped_children=tuple(mapped.get(row.pk, [])[:CHILDREN_SHOWN]),
                mapped_children_more=max(len(mapped.get(row.pk, [])) - CHILDREN_SHOWN, 0),
            )
            for row in step_rows
        ],
        # Newest first, as the engine undoes them.
        "compensations": [
            StepRow(
                step=row,
                agent_simulated=row.agent_name in simulated,
                latest=True,
                child_run_id=None,
                attempts=row.attempts,
                version_label=versions.get(row.pk, ""),
            )
            for row in compensations
        ],
        "waiting": waiting_words.by_run(rows, waiting).get(run.pk),
        "events": events,
        "events_total": latest.paginator.count,
        "events_first": latest.paginator.count - len(events) + 1,
        "step_rows_total": step_rows_total,
        "steps_hidden": step_rows_total - len(step_rows),
        "steps_all": all_steps,
        "steps_total": len(order),
        "steps_done": sum(1 for key in order if key in heads and heads[key].status in STEP_FINAL),
        "usage": usage if usage["total_tokens"] or usage["cost"] else None,
        "notice": notice,
        "can_operate": access.can_operate_run(user, run),
        # Seen through its own workflow, a sub-workflow run names no caller the user may not see.
        "parent_visible": run.parent_step is not None and bool(access.visible_among(user, [run.parent_step.run_id])),
    }


def step_detail(run: Run, step: StepRun) -> dict[str, Any]:
    """What an opened step of the run page shows (`_step_detail.html`): its input and output
    and every attempt with its traceback and log lines (a for_each head: a link to its items,
    which have the attempts). Two queries: the step's columns were read with it, then its
    attempts."""
    return {
        "run": run,
        "step": step,
        "detail_id": f"step-detail-{step.pk}",
        "attempt_list": []
        if step.items_total is not None
        else list(Attempt.objects.filter(step_run=step).select_related("agent_version").order_by("number")),
    }


def _choices(step: dict[str, Any]) -> tuple[str, ...]:
    """The agents (or sub-workflows) a step chooses from at run time; () for one that names one."""
    return tuple(step.get("agents") or step.get("workflows") or ())


def agents_page(user: Any) -> dict[str, Any]:
    """What the agents page (`_agents.html`) shows `user`."""
    # Agents are shared, so every signed-in user sees them; what they are doing is counted
    # over the runs this user sees (superusers: all), so no figure reveals a hidden run.
    runs = None if user.is_superuser else access.visible_runs(user)
    rows = agent_status.agent_rows(runs=runs)
    return {
        "rows": rows,
        "open_circuits": sum(1 for row in rows if row.circuit_state != "closed"),
        "in_flight": sum(row.in_flight for row in rows),
        "throttled": sum(row.throttled for row in rows),
        "workers": agent_status.worker_slots(runs=runs),
        "slots_per_worker": settings.BATON_SLOTS,
        "all_runs": user.is_superuser,
    }


@dataclass(frozen=True)
class ItemRow:
    item: StepRun
    attempt_list: tuple[Attempt, ...]

    @property
    def detail_id(self) -> str:
        return f"item-detail-{self.item.pk}"


def step_items(run: Run, head: StepRun, *, status: str = "all", page: Any = None) -> dict[str, Any]:
    """One page of a for_each step's items (`_step_items.html`), filtered by `status` (a key of
    ITEM_FILTERS; anything else shows all), each with its attempts: four queries whatever the
    number of items (filter counts, the page's count, the page, its attempts)."""
    items = StepRun.objects.filter(parent=head)
    counts = items.aggregate(
        all=Count("id"), **{name: Count("id", filter=Q(status__in=statuses)) for name, statuses in ITEM_FILTERS.items()}
    )
    chosen = status if status in ITEM_FILTERS else "all"
    if chosen != "all":
        items = items.filter(status__in=ITEM_FILTERS[chosen])
    if head.kind == StepKind.WORKFLOW:
        # Each item's (latest) child run, in the page's own query.
        child = Run.objects.filter(parent_step=OuterRef("pk")).order_by("-pk")
        items = items.annotate(child_run_id=Subquery(child.values("pk")[:1]), child_run_status=Subquery(child.values("status")[:1]))
    items_page = Paginator(items.order_by("map_index", "id"), ITEMS_PER_PAGE).get_page(page)
    page_items = list(items_page.object_list)
    attempts = attempts_by_step(Attempt.objects.filter(step_run__in=[item.pk for item in page_items]))
    return {
        "run": run,
        "head": head,
        "page": items_page,
        "rows": [ItemRow(item=item, attempt_list=tuple(attempts.get(item.pk, ()))) for item in page_items],
        "status": chosen,
        # What the pager's links keep of the query string.
        "query": f"status={chosen}" + (f"&round={head.iteration}" if head.iteration > 1 else ""),
        "filters": [(name, counts[name]) for name in ("all", *ITEM_FILTERS)],
    }
