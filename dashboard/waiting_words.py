"""What a waiting run waits for, in the words a list or a run page shows: "waiting: approval by
legal, due in 3 hours", with a link to what it waits on.

Orchestration's own rows say *that* a step waits and on what kind of thing (StepRun.waiting_for,
wake_at, the spec's wait); who must act, by when and where, is the approvals app's to say.
Dashboard never imports approvals, so approvals registers a lookup here in ApprovalsConfig.ready
(as approvals/live.py registers its topics). Every caller gets one query per source whatever the
number of runs: the waiting steps, the inbox items (through the lookup), the sub-workflow runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timeuntil

from orchestration.models import Run, StepRun
from orchestration.status import RUN_FINAL, StepStatus, WaitingFor

# The waits a person ends: their words come from the registered lookup.
PEOPLE = frozenset({WaitingFor.APPROVAL, WaitingFor.MANUAL, WaitingFor.GATE, WaitingFor.EXCEPTION})


@dataclass(frozen=True)
class WaitingSummary:
    text: str
    url: str = ""


@dataclass(frozen=True)
class PersonWait:
    """What a lookup says of one step waiting on people: "approval by legal", its deadline and
    the inbox item's URL."""

    what: str
    deadline: datetime | None
    url: str


# step ids -> what each open inbox item of those steps says; one query for all of them.
PeopleLookup = Callable[[Sequence[int]], dict[int, PersonWait]]

_people: list[PeopleLookup] = []


def register(lookup: PeopleLookup) -> None:
    if lookup not in _people:
        _people.append(lookup)


def waiting_summaries(runs: Iterable[Run]) -> dict[int, WaitingSummary]:
    """For each run among `runs` with a waiting step, what it waits for (its oldest waiting step,
    "and N more" if there are others). Runs should come with their version (select_related)."""
    live = {run.pk: run for run in runs if run.status not in RUN_FINAL}
    if not live:
        return {}
    steps = list(
        StepRun.objects.filter(run__in=list(live), status=StepStatus.WAITING)
        .exclude(waiting_for="")
        .order_by("id")
        .only("id", "run_id", "step_key", "status", "waiting_for", "wake_at", "map_index", "wait_event", "wait_key")
    )
    return run_summaries(live, steps)


def run_summaries(runs: dict[int, Run], steps: Sequence[StepRun]) -> dict[int, WaitingSummary]:
    """waiting_summaries, from step rows the caller already holds."""
    return by_run(steps, step_summaries(runs, steps))


def by_run(steps: Sequence[StepRun], per_step: dict[int, WaitingSummary]) -> dict[int, WaitingSummary]:
    """Each run's oldest waiting step's summary (in the order of `steps`), "and N more" if others wait."""
    grouped: dict[int, list[WaitingSummary]] = {}
    for step in steps:
        if step.pk in per_step:
            grouped.setdefault(step.run_id, []).append(per_step[step.pk])
    return {
        run_id: WaitingSummary(f"{first.text} (and {len(rest)} more)" if rest else first.text, first.url)
        for run_id, (first, *rest) in grouped.items()
    }


def step_summaries(runs: dict[int, Run], steps: Sequence[StepRun]) -> dict[int, WaitingSummary]:
    """What each waiting step among `steps` waits for, by step id."""
    waiting = [s for s in steps if s.status == StepStatus.WAITING and s.waiting_for]
    people: dict[int, PersonWait] = {}
    person_ids = [s.pk for s in waiting if s.waiting_for in PEOPLE]
    if person_ids:
        for lookup in _people:
            people.update(lookup(person_ids))
    children: dict[int, int] = {}
    child_ids = [s.pk for s in waiting if s.waiting_for == WaitingFor.WORKFLOW]
    if child_ids:
        # The latest child of each step: an owner's retry starts a new one.
        children = dict(
            Run.objects.filter(parent_step__in=child_ids).order_by("pk").values_list("parent_step_id", "pk")
        )
    now = timezone.now()
    summaries: dict[int, WaitingSummary] = {}
    for step in waiting:
        summary = _summary(step, runs.get(step.run_id), people.get(step.pk), children.get(step.pk), now)
        if summary is not None:
            summaries[step.pk] = summary
    return summaries


def _summary(step: StepRun, run: Run | None, person: PersonWait | None, child: int | None, now: datetime) -> WaitingSummary | None:
    kind = step.waiting_for
    if kind in PEOPLE:
        if person is None:
            # No open item (yet, or its app is not installed): say what kind of person, no more.
            return WaitingSummary(f"waiting: {WaitingFor(kind).label}")
        return WaitingSummary(f"waiting: {person.what}{_when(person.deadline, now, 'due')}", person.url)
    if kind == WaitingFor.WORKFLOW:
        if child is None:
            return WaitingSummary("waiting: a sub-workflow run")
        return WaitingSummary(f"waiting: sub-workflow run #{child}", reverse("dashboard:run", args=[child]))
    if kind == WaitingFor.EVENT:
        name = step.wait_event or _event_name(run, step.step_key)
        what = f"event {name}" if name else "an event"
        if step.wait_key:
            what += f" with key {step.wait_key[:60]}"
        return WaitingSummary(f"waiting: {what}" + _when(step.wake_at, now, "times out"))
    if kind == WaitingFor.TIMER:
        return WaitingSummary("waiting: a timer" + _when(step.wake_at, now, "wakes"))
    return None


def _event_name(run: Run | None, key: str) -> str:
    if run is None:
        return ""
    for spec in run.version.spec.get("steps", []):
        if spec.get("key") == key:
            return str((spec.get("wait") or {}).get("event") or "")
    return ""


def _when(moment: datetime | None, now: datetime, verb: str) -> str:
    if moment is None:
        return ""
    if moment <= now:
        return f", {verb} now" if verb != "due" else ", overdue"
    return f", {verb} in {timeuntil(moment, now, depth=1)}"
