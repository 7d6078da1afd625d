"""What a committed change touched, and the channel layer groups that hear of it.

Both sources describe a change the same way: with Redis, the after-commit hook reads the unit of
work it is given (every change of a run or its steps appends an event, and the approvals app
records the inbox items it touched); in the embedded set-up, each web process reads the rows
appended to the two event logs since its last look. Either way only ids leave here, turned into
group names; what a page shows is read again, with permission, when the page fetches its part.

Groups:
- `run.<id>`       the run's page (and an item page that shows the run)
- `wf.<id>`        runs lists, workflows page and agents page of whoever sees workflow <id>:
                   a run's own workflow and those of the runs that called it, because a
                   sub-workflow's run is seen by whoever sees its caller (orchestration.access)
- `wf.all`         the same for superusers, who see every workflow without joining each group
- others           registered by other apps (approvals: items and inboxes), see GROUP_SOURCES
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orchestration.access import NESTING_LEVELS
from orchestration.models import Run, RunEvent
from orchestration.work import Work

ALL_WORKFLOWS = "wf.all"


@dataclass
class Changes:
    runs: set[int] = field(default_factory=set)
    items: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.runs or self.items)

    def update(self, other: Changes) -> None:
        self.runs |= other.runs
        self.items |= other.items

    @classmethod
    def from_work(cls, work: Work) -> Changes:
        return cls(runs=work.runs, items=set(work.items))


# Other apps' groups for a change (approvals: an item's page, its assignees' inboxes),
# registered in AppConfig.ready, so that this module never imports them.
GROUP_SOURCES: list[Callable[[Changes], set[str]]] = []


def register_group_source(source: Callable[[Changes], set[str]]) -> None:
    if source not in GROUP_SOURCES:
        GROUP_SOURCES.append(source)


class _Lineage:
    """Run id → the workflows whose viewers see the run (its own and its callers').

    A run never changes workflow or caller, so what was read once is kept: a map of 1,000 items
    reports the same run 1,000 times and costs one query. Bounded, oldest forgotten first.
    """

    SIZE = 10_000

    def __init__(self) -> None:
        self._known: OrderedDict[int, frozenset[int]] = OrderedDict()

    def workflows(self, run_ids: Iterable[int]) -> set[int]:
        wanted = set(run_ids)
        found: set[int] = set()
        for run_id in [r for r in wanted if r in self._known]:
            self._known.move_to_end(run_id)
            found |= self._known[run_id]
        missing = wanted - set(self._known)
        if missing:
            for run_id, workflows in self._read(missing).items():
                self._remember(run_id, workflows)
                found |= workflows
        return found

    def _read(self, run_ids: set[int]) -> dict[int, frozenset[int]]:
        # Level by level up the callers: one query per level, and only runs that have a caller
        # go on to the next one.
        lineage: dict[int, set[int]] = {run_id: set() for run_id in run_ids}
        frontier = {run_id: {run_id} for run_id in run_ids}  # run to read → runs it belongs to
        for _ in range(NESTING_LEVELS + 1):
            if not frontier:
                break
            rows = Run.objects.filter(pk__in=list(frontier)).values_list("pk", "workflow_id", "parent_step__run_id")
            upward: dict[int, set[int]] = {}
            for pk, workflow_id, caller in rows:
                for origin in frontier[pk]:
                    lineage[origin].add(workflow_id)
                if caller is not None:
                    upward.setdefault(caller, set()).update(frontier[pk])
            frontier = upward
        return {run_id: frozenset(workflows) for run_id, workflows in lineage.items()}

    def _remember(self, run_id: int, workflows: frozenset[int]) -> None:
        self._known[run_id] = workflows
        while len(self._known) > self.SIZE:
            self._known.popitem(last=False)


LINEAGE = _Lineage()


def groups_for(changes: Changes) -> set[str]:
    """The groups that hear of this change (reads the database: call it after commit)."""
    groups = {f"run.{run_id}" for run_id in changes.runs}
    workflows = LINEAGE.workflows(changes.runs) if changes.runs else set()
    groups |= {f"wf.{workflow_id}" for workflow_id in workflows}
    if workflows:
        groups.add(ALL_WORKFLOWS)
    for source in GROUP_SOURCES:
        groups |= source(changes)
    return groups


@dataclass(frozen=True)
class EventLog:
    """An append-only table the embedded set-up reads by id.

    `rows(after, limit)` gives (id, ref) for rows with an id above `after`, in id order;
    `rows_with_ids(ids)` the same for those ids; `changes(refs)` says what the rows touched.
    """

    name: str
    latest: Callable[[], int]
    rows: Callable[[int, int], list[tuple[int, int]]]
    rows_with_ids: Callable[[set[int]], list[tuple[int, int]]]
    changes: Callable[[set[int]], Changes]


def _latest_run_event() -> int:
    return RunEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _run_event_rows(after: int, limit: int) -> list[tuple[int, int]]:
    # The primary key's index: a range scan from `after`, however long the log.
    return list(RunEvent.objects.filter(id__gt=after).order_by("id").values_list("id", "run_id")[:limit])


def _run_event_rows_with_ids(ids: set[int]) -> list[tuple[int, int]]:
    return list(RunEvent.objects.filter(id__in=ids).values_list("id", "run_id"))


# The logs the embedded set-up tails; other apps register theirs (approvals: item events).
EVENT_LOGS: list[EventLog] = [
    EventLog(
        "run events",
        _latest_run_event,
        _run_event_rows,
        _run_event_rows_with_ids,
        lambda runs: Changes(runs=set(runs)),
    )
]


def register_event_log(log: EventLog) -> None:
    if all(known.name != log.name for known in EVENT_LOGS):
        EVENT_LOGS.append(log)
