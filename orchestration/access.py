"""Who sees a workflow and its runs, and who may operate them: the one rule, asked here.

The dashboard pages, the admin, the API and the live push's topics (dashboard/live) call
these functions; templates only mirror their answers. Management commands do not ask: whoever
runs them has the server's shell.

The rule:
- Superusers see and operate every workflow and run.
- A workflow's owner and the members of its operator groups see it and its runs, start runs,
  cancel them (and retry them).
- Members of its viewer groups see it and its runs, and change nothing.
- A sub-workflow's run is seen by whoever sees the run that called it (so a manager workflow's
  viewers follow it into its workers), and operated by whoever operates that run, as well as
  by those the child's own workflow names.
- Nobody else: a direct URL answers 403, and lists, counts, filters, start forms, usage figures
  and the API show no trace of the workflow or its runs. Inactive and anonymous users see
  nothing.

Approval items have their own rule (approvals/access.py): an assignee sees the item, and what
the item shows, without seeing the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from orchestration.models import Run, Workflow

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    Person = User | AnonymousUser
else:
    Person = Any

# How many callers up a sub-workflow run looks for one the user may see. The database puts no
# bound on nesting (only recursion is refused), but each level costs two joins on every run
# list, so the rule is written down with this bound: a run nested deeper than this is seen
# only through its own workflow or its nearer callers.
NESTING_LEVELS = 8


def _active(user: Person) -> bool:
    return bool(user.is_authenticated and user.is_active)


def _pk(user: Person) -> int:
    return int(user.pk or 0)


def _workflow_q(user: Person, *, operate: bool) -> Q:
    # Subqueries rather than joins over the two group tables: no duplicate rows, so callers
    # may count, paginate and annotate freely.
    via_operators = Workflow.operator_groups.through.objects.filter(group__user=_pk(user)).values("workflow_id")
    q = Q(owner=_pk(user)) | Q(pk__in=via_operators)
    if not operate:
        via_viewers = Workflow.viewer_groups.through.objects.filter(group__user=_pk(user)).values("workflow_id")
        q |= Q(pk__in=via_viewers)
    return q


def visible_workflows(user: Person) -> QuerySet[Workflow]:
    """The workflows this user sees: the Workflows page, filters, the admin's list."""
    if not _active(user):
        return Workflow.objects.none()
    if user.is_superuser:
        return Workflow.objects.all()
    return Workflow.objects.filter(_workflow_q(user, operate=False))


def operable_workflows(user: Person) -> QuerySet[Workflow]:
    """The workflows this user may start runs of and whose runs they may cancel."""
    if not _active(user):
        return Workflow.objects.none()
    if user.is_superuser:
        return Workflow.objects.all()
    return Workflow.objects.filter(_workflow_q(user, operate=True))


def _nested_runs(ids: list[int]) -> QuerySet[Run]:
    """Sub-workflow runs called (at any level up to NESTING_LEVELS) by a run of these workflows."""
    callers = Q()
    path = ""
    for _ in range(NESTING_LEVELS):
        path += "parent_step__run__"
        callers |= Q(**{f"{path}workflow__in": ids})
    return Run.objects.filter(parent_step__isnull=False).filter(callers)


def _runs_q(workflows: QuerySet[Workflow]) -> Q:
    """Runs of these workflows, and runs called (at any level up to NESTING_LEVELS) by one."""
    # The workflows' ids as values, not a subquery: the list is short, and one subquery
    # repeated at every level would be planned (and on SQLite run) once per level.
    ids = list(workflows.values_list("pk", flat=True))
    # The callers' walk joins two tables per level; as a subquery over sub-workflow runs only
    # (few, and the database computes the set once) it leaves the test on top-level runs a
    # plain one on their workflow, which is what keeps the runs list fast.
    return Q(workflow__in=ids) | Q(pk__in=_nested_runs(ids).values("pk"))


def visible_runs_q(user: Person, *, nested_within: Q) -> Q | None:
    """The runs this user sees, as a condition on Run that other queries can join through
    (`step__run__...`) rather than test against a subquery of every run: None for superusers
    (every run). The sub-workflow runs it admits are read now, by id, among those matching
    `nested_within` only (the overview asks about recent and running runs, and need not list
    every sub-workflow run ever called). Two queries: the workflows, the sub-workflow runs."""
    if not _active(user):
        return Q(pk__in=[])
    if user.is_superuser:
        return None
    ids = list(visible_workflows(user).values_list("pk", flat=True))
    nested = list(_nested_runs(ids).filter(nested_within).values_list("pk", flat=True))
    return Q(workflow__in=ids) | Q(pk__in=nested) if nested else Q(workflow__in=ids)


def visible_runs(user: Person) -> QuerySet[Run]:
    """The runs this user sees, sub-workflow runs included: the runs list, the admin."""
    if not _active(user):
        return Run.objects.none()
    if user.is_superuser:
        return Run.objects.all()
    return Run.objects.filter(_runs_q(visible_workflows(user)))


def operable_runs(user: Person) -> QuerySet[Run]:
    """The runs this user may cancel (and retry)."""
    if not _active(user):
        return Run.objects.none()
    if user.is_superuser:
        return Run.objects.all()
    return Run.objects.filter(_runs_q(operable_workflows(user)))


def visible_among(user: Person, run_ids: Iterable[int]) -> set[int]:
    """Which of these runs the user sees, in one query (none when there are no ids)."""
    ids = set(run_ids)
    if not ids or not _active(user):
        return set()
    if user.is_superuser:
        return ids
    return set(visible_runs(user).filter(pk__in=ids).values_list("pk", flat=True))


def can_view(user: Person, workflow: Workflow) -> bool:
    if not _active(user):
        return False
    return bool(user.is_superuser) or visible_workflows(user).filter(pk=workflow.pk).exists()


def can_operate(user: Person, workflow: Workflow) -> bool:
    """Whether this user may start runs of the workflow and cancel (and retry) them."""
    if not _active(user):
        return False
    return bool(user.is_superuser) or operable_workflows(user).filter(pk=workflow.pk).exists()


def can_change(user: Person, workflow: Workflow) -> bool:
    """Whether this user may change the workflow itself (roll it back): its owner, superusers.
    Operator groups run a workflow; they do not redefine it."""
    if not _active(user):
        return False
    return bool(user.is_superuser) or (workflow.owner_id is not None and workflow.owner_id == _pk(user))


def can_view_run(user: Person, run: Run) -> bool:
    """The question a websocket consumer asks before joining a run's group."""
    if not _active(user):
        return False
    if user.is_superuser:
        return True
    # A top-level run is its workflow's; only a sub-workflow run needs the callers' walk.
    if run.parent_step_id is None:
        return can_view(user, run.workflow)
    return visible_runs(user).filter(pk=run.pk).exists()


def can_operate_run(user: Person, run: Run) -> bool:
    if not _active(user):
        return False
    if user.is_superuser:
        return True
    if run.parent_step_id is None:
        return can_operate(user, run.workflow)
    return operable_runs(user).filter(pk=run.pk).exists()


def get_workflow_for_user(user: Person, key: str, *, operate: bool = False) -> Workflow:
    """The workflow, or 404 if there is none, or PermissionDenied if it is not this user's."""
    workflow = get_object_or_404(Workflow, key=key)
    if operate and not can_operate(user, workflow):
        raise PermissionDenied("You may not start runs of this workflow: ask its owner to add you to an operator group.")
    if not operate and not can_view(user, workflow):
        raise PermissionDenied("You may not see this workflow.")
    return workflow


def get_run_for_user(user: Person, pk: int, *, operate: bool = False) -> Run:
    """The run, or 404 if there is none, or PermissionDenied if this user may not see it (or,
    with operate=True, may not cancel or retry it)."""
    run = get_object_or_404(Run.objects.select_related("workflow", "version", "started_by", "parent_step"), pk=pk)
    if not can_view_run(user, run):
        raise PermissionDenied("You may not see this run.")
    if operate and not can_operate_run(user, run):
        raise PermissionDenied("You may see this run but not change it: ask its workflow's owner to add you to an operator group.")
    return run
