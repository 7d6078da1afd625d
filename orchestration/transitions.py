"""Every change to a run's state goes through a function here.

Views, the API, management commands, django-q2 tasks and the ticker all call these. Each one
opens one unit of work (`change()`): a transaction that holds the run's row lock, checks the
state it starts from (compare-and-set), lets the engine and the guards decide and record, and
writes the change's RunEvent rows. After commit, `apply` alone does what the change asked of
the world: messages to workers, parent runs to resume, the hooks other apps registered.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache, partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from orchestration import dispatch, engine, guards, limits, reads, rows, version_choice
from orchestration.agents.base import usage_figures
from orchestration.models import Agent, Attempt, Event, Run, StepKind, StepRun, Workflow, WorkflowVersion
from orchestration.specs import step_spec
from orchestration.status import (
    RUN_FINAL,
    AttemptStatus,
    ErrorClass,
    EventKind,
    RunStatus,
    StepStatus,
    WaitingFor,
)
from orchestration.work import Work

logger = logging.getLogger("baton.transitions")


class InvalidTransition(Exception):
    """The object is not in a state that allows this change; the message says why."""


# ---------------------------------------------------------------------------------------------
# The unit of work


@contextmanager
def change(work: Work | None = None) -> Iterator[Work]:
    """The transaction of one state change and its unit of work.

    Given the unit of work of an enclosing change, this joins it: the outermost change writes
    the events and applies the effects, once. Otherwise the events are written just before
    commit, and `apply` runs once the outermost transaction has committed (at once when there
    is none around this one), so nobody hears of a change that could still roll back.
    """
    if work is not None:
        with transaction.atomic():
            yield work
        return
    work = Work()
    with transaction.atomic():
        yield work
        work.write_events()
        transaction.on_commit(partial(apply, work))


# What other apps do after a change commits (the live push), registered in AppConfig.ready so
# that this module never imports them. Each is given the committed unit of work.
AFTER_COMMIT: list[Callable[[Work], None]] = []


def register_after_commit(hook: Callable[[Work], None]) -> None:
    if hook not in AFTER_COMMIT:
        AFTER_COMMIT.append(hook)


def apply(work: Work) -> None:
    """Do what a committed change asked of the world; each effect is tried on its own.

    A message that cannot be sent is not lost: its step stays queued in our table and the
    ticker re-sends it. A parent that cannot be resumed now is found by the ticker too.
    """
    # Recovered work (a due retry, a step taken back from a lost or stopping worker) goes to
    # the head of the queue instead of waiting behind a backlog of fresh work.
    effects: list[tuple[str, Callable[[], Any]]] = []
    if work.send_first:
        effects.append(("sending recovered steps", partial(dispatch.send_steps, work.send_first, first=True)))
    if work.send:
        effects.append(("sending steps", partial(dispatch.send_steps, work.send)))
    effects += [("sending map items", partial(dispatch.send_mapped, items)) for items in work.send_mapped]
    effects += [
        ("sending map items", partial(dispatch.send_mapped, items, in_slots=True)) for items in work.send_mapped_in_slots
    ]
    effects += [
        (f"resuming the parent of run {child}", partial(finish_child_run, child_run_id=child))
        for child in work.child_runs_ended
    ]
    effects += [(f"after-commit hook {getattr(hook, '__name__', hook)}", partial(hook, work)) for hook in AFTER_COMMIT]
    for what, effect in effects:
        try:
            effect()
        except Exception:
            logger.exception("after commit: %s failed", what)


def lock_run(run_id: int) -> Run:
    """For other apps' transitions: take the run's lock first, then lock their own rows."""
    return _lock_run(run_id)


def _lock_run(run_id: int) -> Run:
    # Lock order: a run before its steps; a parent run before its children. Child-to-parent
    # notifications happen in a separate transaction after commit, so the order never inverts.
    # FOR NO KEY UPDATE, not FOR UPDATE: transitions of one run still queue behind each other,
    # but rows that merely reference the run (events, attempts inserted by a claim) need only
    # a KEY SHARE lock for their foreign-key check at commit, and must not wait for us: with
    # FOR UPDATE, a claim holding an agent's lock and a transition holding the run's lock and
    # wanting that agent's lock deadlocked. OF the run alone: the ORM's select_related form
    # locked the workflow's row too, so every transition of every run of a workflow queued
    # behind each other. Written out, because this is on every hand-off and building the
    # ORM's query cost three times the round trip.
    found = list(Run.objects.raw(_lock_sql(transaction.get_connection().vendor), [run_id]))
    if not found:
        raise Run.DoesNotExist(f"run {run_id} does not exist")
    return found[0]


@lru_cache(maxsize=4)
def _lock_sql(vendor: str) -> str:
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    run, workflow = quote(Run._meta.db_table), quote(Workflow._meta.db_table)
    lock = " FOR NO KEY UPDATE OF r" if connection.features.has_select_for_update_of else ""
    # workflow_key: what templates see as run.workflow, without a second query.
    return (
        f"SELECT r.*, w.{quote('key')} AS workflow_key FROM {run} r "
        f"LEFT JOIN {workflow} w ON w.{quote('id')} = r.{quote('workflow_id')} WHERE r.{quote('id')} = %s{lock}"
    )


# ---------------------------------------------------------------------------------------------
# Runs


def start_run(
    *,
    workflow: Workflow | str,
    input: Any = None,
    started_by: Any = None,
    trigger: str = "manual",
    version: WorkflowVersion | None = None,
) -> Run:
    """Start a run of the latest published version (or the given one).

    Raises ValueError naming every bad input field, and LookupError for an unknown or
    unpublished workflow; nothing is written in either case.
    """
    if isinstance(workflow, str):
        found = Workflow.objects.filter(key=workflow).first()
        if found is None:
            raise LookupError(f"workflow '{workflow}' does not exist")
        workflow = found
    version = version or workflow.latest_version
    if version is None:
        raise LookupError(f"workflow '{workflow.key}' has no published version")
    values = engine.validate_run_input(version.spec, input)
    with change() as work:
        run = _start(work, workflow, version, values, started_by=started_by, trigger=trigger)
    return run


def _start(
    work: Work, workflow: Workflow, version: WorkflowVersion, values: dict[str, Any], *, started_by: Any, trigger: str, rerun_of: Run | None = None
) -> Run:
    run = Run.objects.create(
        workflow=workflow,
        version=version,
        input=values,
        started_by=started_by if getattr(started_by, "is_authenticated", False) else None,
        trigger=trigger,
        rerun_of=rerun_of,
    )
    again = f", rerun of run {rerun_of.pk}" if rerun_of else ""
    work.event(run, EventKind.RUN_STARTED, to_status=run.status, actor=started_by, message=f"version {version.number}, trigger {trigger}{again}")
    engine.advance(work, run)
    return run


def rerun(*, run_id: int, actor: Any = None, input: Any = None, latest: bool = False) -> Run:
    """Start a new run of the run's version (or its workflow's latest), with its input or an
    edited one (checked against that version's inputs, as the start form checks), linked to it.

    Raises LookupError for an unknown run, ValueError naming every bad input field, and
    InvalidTransition when the workflow has no published version to run.
    """
    original = Run.objects.select_related("workflow", "version").filter(pk=run_id).first()
    if original is None:
        raise LookupError(f"run {run_id} does not exist")
    if original.parent_step_id:
        # Its own run would be a top-level run of the sub-workflow, which whoever operates the
        # calling run need not be allowed to start.
        parent_run = StepRun.objects.only("run_id").get(pk=original.parent_step_id).run_id
        raise InvalidTransition(f"run {run_id} is a sub-workflow run of run {parent_run}: rerun run {parent_run}")
    version = original.workflow.latest_version if latest else original.version
    if version is None:
        raise InvalidTransition(f"workflow '{original.workflow.key}' has no published version")
    if version.trial:
        # Whoever operates the workflow may rerun its runs, but only its owner may run a draft
        # (definitions.try_draft).
        raise InvalidTransition(
            f"run {run_id} is a trial of the draft: try the draft again from the workflow's page, "
            "or rerun it on the latest version"
        )
    values = engine.validate_run_input(version.spec, original.input if input is None else input)
    with change() as work:
        run = _start(work, original.workflow, version, values, started_by=actor, trigger="rerun", rerun_of=original)
        edited = " with edited input" if input is not None else ""
        work.event(
            original,
            EventKind.RUN_RERUN,
            actor=actor,
            message=f"rerun as run {run.pk} (version {version.number}){edited}",
            data={"rerun": run.pk, "version": version.number, "edited_input": input is not None},
        )
    return run


def cancel_run(*, run_id: int, actor: Any = None, reason: str = "") -> Run:
    limits.check_text(reason, field="reason")
    with change() as work:
        try:
            run = _lock_run(run_id)
        except Run.DoesNotExist:
            raise LookupError(f"run {run_id} does not exist") from None
        if run.status in RUN_FINAL:
            raise InvalidTransition(f"run {run_id} already {run.status}")
        if run.status == RunStatus.COMPENSATING:
            raise InvalidTransition(f"run {run_id} is undoing its completed steps; it ends when they finish")
        who = getattr(actor, "username", None) or "an operator"
        engine.fail_run(work, run, reason or f"cancelled by {who}", status=RunStatus.CANCELLED, actor=actor)
    return run


def retry_run(*, run_id: int, actor: Any = None, reason: str = "", inputs: dict[str, Any] | None = None) -> Run:
    """An operator resumes a failed or cancelled run from its failure (engine.retry_from_failure),
    optionally with edited input for failed steps (step key -> input, each checked like a run's).

    Raises LookupError for an unknown run, ValueError naming a bad input, InvalidTransition
    saying why a run cannot resume (not failed or cancelled, compensated, a sub-workflow run).
    """
    limits.check_text(reason, field="reason")
    inputs = dict(inputs or {})
    limit = limits.max_input_bytes()
    for key, value in inputs.items():
        limits.check_json_value(value, field=f"input of step '{key}'", max_bytes=limit)
    with change() as work:
        try:
            run = _lock_run(run_id)
        except Run.DoesNotExist:
            raise LookupError(f"run {run_id} does not exist") from None
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise InvalidTransition(f"run {run_id} is {run.status}: only a failed or cancelled run can be retried")
        who = getattr(actor, "username", None) or "an operator"
        why = f"retried by {who}" + (f": {reason}" if reason else "")
        try:
            engine.retry_from_failure(work, run, inputs=inputs, why=why, actor=actor)
        except engine.CannotRetry as exc:
            raise InvalidTransition(str(exc)) from None
    return run


# ---------------------------------------------------------------------------------------------
# Agent steps, as seen from a worker


@dataclass(frozen=True)
class Claim:
    step_run_id: int
    run_id: int
    token: str
    attempt: int
    step_key: str
    iteration: int
    map_index: int | None
    agent_name: str
    input: Any
    item: Any = None
    parent_id: int | None = None
    version_id: int = 0
    kind: str = StepKind.AGENT
    # The agent version the run uses for this agent (None: the agent's own config), and its
    # config, laid over the agent's when the worker calls it.
    agent_version_id: int | None = None
    version_config: dict[str, Any] = field(default_factory=dict)


def claim_step(*, step_run_id: int, worker: str) -> Claim | None:
    """Take a queued step for this worker; None if someone else has it or it is not queued.

    Compare-and-set on status makes a duplicate delivery of the same message harmless: only
    one worker moves the row from queued to running.
    """
    claims = claim_steps(step_run_ids=[step_run_id], worker=worker)
    return claims[0] if claims else None


def claim_steps(*, step_run_ids: list[int], worker: str) -> list[Claim]:
    """Take every still-queued step of a list in one transaction (a chunk of for_each items)."""
    with change() as work:
        return _claim(work, step_run_ids, worker)


def _claim(work: Work, step_run_ids: list[int], worker: str) -> list[Claim]:
    now = timezone.now()
    token = secrets.token_hex(16)
    lease = timedelta(seconds=settings.BATON_LEASE_SECONDS)
    won = StepRun.objects.filter(pk__in=step_run_ids, status=StepStatus.QUEUED).update(
        status=StepStatus.RUNNING,
        attempts=F("attempts") + 1,
        claim_token=token,
        lease_expires_at=now + lease,
        started_at=Coalesce(F("started_at"), now),
        next_attempt_at=None,
    )
    if not won:
        return []
    claimed = list(
        StepRun.objects.filter(pk__in=step_run_ids, claim_token=token).select_related("run").order_by("id")
    )
    steps, refused = guards.gate(work, claimed, now)
    for refusal in refused:
        engine.divert(work, refusal)
    # One choice per run and agent, for a chunk of map items too; none asked for an agent
    # without versions.
    chosen = version_choice.choose(steps)
    Attempt.objects.bulk_create(
        [
            Attempt(
                step_run=step,
                number=step.attempts,
                worker=worker,
                agent_name=step.agent_name,
                agent_version_id=_version_of(chosen, step),
                started_at=now,
            )
            for step in steps
        ]
    )
    for step in steps:
        work.event(
            step.run,
            EventKind.STEP_STARTED,
            step=step,
            from_status=StepStatus.QUEUED,
            to_status=StepStatus.RUNNING,
            message=f"attempt {step.attempts} on {worker}",
        )
    return [
        _claim_of(step, version_id=step.run.version_id, chosen=chosen.get((step.run_id, step.agent_name)))
        for step in steps
    ]


def _version_of(chosen: dict[tuple[int, str], version_choice.Chosen], step: StepRun) -> int | None:
    found = chosen.get((step.run_id, step.agent_name))
    return found.version_id if found else None


def _claim_of(step: StepRun, *, version_id: int, chosen: version_choice.Chosen | None = None) -> Claim:
    """What the worker that holds a step (RUNNING under its claim token) needs to run it."""
    return Claim(
        step_run_id=step.pk,
        run_id=step.run_id,
        token=step.claim_token,
        attempt=step.attempts,
        step_key=step.step_key,
        iteration=step.iteration,
        map_index=step.map_index,
        agent_name=step.agent_name,
        input=step.input,
        item=step.item,
        parent_id=step.parent_id,
        version_id=version_id,
        kind=step.kind,
        agent_version_id=chosen.version_id if chosen else None,
        version_config=chosen.config if chosen else {},
    )


def renew_lease(*, step_run_ids: list[int], token: str) -> int:
    """Extend the lease of the steps a worker holds; returns how many it still holds."""
    lease = timedelta(seconds=settings.BATON_LEASE_SECONDS)
    return StepRun.objects.filter(pk__in=step_run_ids, status=StepStatus.RUNNING, claim_token=token).update(
        lease_expires_at=timezone.now() + lease
    )


def _held_filter(held: list[tuple[int, str]]) -> Q:
    # One (id, token) pair per claim: a worker's slots hold steps claimed one by one, each
    # under its own token, and chunks of items under a shared one.
    by_token: dict[str, list[int]] = {}
    for pk, token in held:
        by_token.setdefault(token, []).append(pk)
    condition = Q(pk__in=[])
    for token, ids in by_token.items():
        condition |= Q(pk__in=ids, claim_token=token)
    return condition


def renew_leases(*, held: list[tuple[int, str]]) -> set[int]:
    """renew_lease for the claims in a worker's slots, all at once: the ids still held."""
    if not held:
        return set()
    lease = timedelta(seconds=settings.BATON_LEASE_SECONDS)
    still = StepRun.objects.filter(_held_filter(held), status=StepStatus.RUNNING)
    still.update(lease_expires_at=timezone.now() + lease)
    # order_by(): a set needs no order, so none is sorted.
    return set(still.order_by().values_list("pk", flat=True))


def still_held_of(*, held: list[tuple[int, str]]) -> set[int]:
    """Of the claims in a worker's slots, the ids still held: the others were cancelled (their
    run or map stopped) or taken over, and their calls are stopped."""
    if not held:
        return set()
    # Asked every WATCH_SECONDS by each worker process; order_by(): a set needs no order.
    return set(
        StepRun.objects.filter(_held_filter(held), status=StepStatus.RUNNING).order_by().values_list("pk", flat=True)
    )


def still_held(*, step_run_id: int, token: str) -> bool:
    """Whether this worker still holds the step: false once its run or its map failed or was
    cancelled. Asked before each item of a chunk, so no item starts after that."""
    return StepRun.objects.filter(pk=step_run_id, status=StepStatus.RUNNING, claim_token=token).exists()


@dataclass(frozen=True)
class Success:
    claim: Claim
    output: Any
    usage: dict[str, Any]
    started_at: Any
    finished_at: Any
    # The attempt's log lines (orchestration/agents/logs.py), stored with its result.
    log: list[Any] = field(default_factory=list)


def record_success(
    *, claim: Claim, output: Any, usage: dict[str, Any] | None = None, log: list[Any] | None = None
) -> bool:
    """Store a worker's result; False (and nothing written) if the claim is no longer valid."""
    with change() as work:
        return _record_success(work, claim, output, usage, log=log)


def record_success_and_take_next(
    *, claim: Claim, output: Any, usage: dict[str, Any] | None = None, log: list[Any] | None = None, worker: str
) -> Claim | None:
    """Store a result and, when the engine picks this run's next step for this worker, claim
    it in the same transaction: the worker runs it next with no broker round trip.

    Durable as any claim: the step is RUNNING under this worker's lease, so if the worker dies
    before running it the lease runs out and the ticker gives it to another worker. Mostly
    the engine inserts the step already claimed (engine.Taker); otherwise it is claimed here.
    """
    taker = engine.Taker(
        worker=worker, token=secrets.token_hex(16), lease=timedelta(seconds=settings.BATON_LEASE_SECONDS)
    )
    with change() as work:
        work.continue_for_run = claim.run_id
        if not _record_success(work, claim, output, usage, taker, log=log) or work.continue_with is None:
            return None
        if taker.step is not None and taker.step.pk == work.continue_with:
            return _claim_of(taker.step, version_id=claim.version_id, chosen=taker.chosen)
        # Refused when a guard throttled or diverted it (and the guard did what it had to).
        claims = _claim(work, [work.continue_with], worker)
    return claims[0] if claims else None


def _record_success(
    work: Work,
    claim: Claim,
    output: Any,
    usage: dict[str, Any] | None,
    taker: engine.Taker | None = None,
    *,
    log: list[Any] | None = None,
) -> bool:
    now = timezone.now()
    run, won, heads = _lock_run_and_finish(claim, output, usage or {}, now, log or [])
    if not won:
        # A late or duplicate delivery: the lease expired and another attempt owns the
        # step, or the run was cancelled. Its result must not count.
        return False
    limited = guards.record_outcome(claim.agent_name, succeeded=True, now=now)
    if claim.parent_id is not None:
        # A for_each item: what follows needs only its parent, so skip re-reading the row.
        item = StepRun(pk=claim.step_run_id, run_id=claim.run_id, parent_id=claim.parent_id)
        work.event(run, EventKind.STEP_SUCCEEDED, step=item, from_status=StepStatus.RUNNING, to_status=StepStatus.SUCCEEDED)
        _items_succeeded(work, run, claim.parent_id, 1)
    else:
        # What follows needs only these fields; re-reading the row would cost a round trip
        # on the handoff path (after_success reads the full row itself if the step must fail).
        step = StepRun(
            pk=claim.step_run_id,
            run_id=claim.run_id,
            step_key=claim.step_key,
            iteration=claim.iteration,
            kind=claim.kind,
            agent_name=claim.agent_name,
            status=StepStatus.SUCCEEDED,
            output=output,
        )
        work.event(run, EventKind.STEP_SUCCEEDED, step=step, from_status=StepStatus.RUNNING, to_status=step.status)
        engine.after_success(work, run, step, taker=taker, heads=heads)
    if limited is not None:
        # After this run's own next step was chosen: a freed slot goes to whoever waited
        # longest for it, through the broker.
        engine.release_throttled(work, limited)
    return True


def _lock_run_and_finish(
    claim: Claim, output: Any, usage: dict[str, Any], now: Any, log: list[Any]
) -> tuple[Run, bool, list[StepRun] | None]:
    """Lock the claim's run, then record its success if the claim still holds (compare-and-set
    on the step's status and token) and end its attempt: the run, whether it held, and on
    PostgreSQL the run's heads as the engine reads them, read after that record.

    On PostgreSQL this is one round trip. The lock, the record and the attempt are one
    statement, whose parts are ordered by what they read, so the lock order stays "run, then
    its steps": the step's UPDATE matches only rows of the run the first part has locked (it
    waits for the lock before it touches the step), and the attempt's UPDATE only the step
    the second part changed. READ COMMITTED re-checks the step's row after that wait, so a
    step cancelled meanwhile is not matched, as with separate statements. The heads are a
    second statement in the same message: it starts once the first has its lock, so its
    snapshot holds whatever the transition we waited for committed (a parallel step that
    just finished, which a join must see), and this record.
    """
    step_where = {"id": claim.step_run_id, "status": StepStatus.RUNNING, "claim_token": claim.token}
    step_values = {
        "status": StepStatus.SUCCEEDED,
        "output": output,
        "usage": usage,
        "error": "",
        "error_class": "",
        "finished_at": now,
        "lease_expires_at": None,
    }
    attempt_where = {"number": claim.attempt}
    attempt_values = {"status": AttemptStatus.SUCCEEDED, "finished_at": now, "log": log, **_usage_values(usage)}
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        run = _lock_run(claim.run_id)
        won = rows.update_where(StepRun, where=step_where, values=step_values)
        if won:
            rows.update_where(Attempt, where={"step_run_id": claim.step_run_id, **attempt_where}, values=attempt_values)
        return run, bool(won), None
    step_sql, step_params = rows.update_statement(StepRun, where=step_where, values=step_values)
    attempt_sql, attempt_params = rows.update_statement(Attempt, where=attempt_where, values=attempt_values)
    quote = connection.ops.quote_name
    sql = (
        f"WITH locked AS ({_lock_sql(connection.vendor)}), "
        f"step AS ({step_sql} AND {quote('run_id')} = (SELECT {quote('id')} FROM locked) RETURNING {quote('id')}), "
        f"attempt AS ({attempt_sql} AND {quote('step_run_id')} = (SELECT {quote('id')} FROM step)) "
        f"SELECT locked.*, EXISTS (SELECT 1 FROM step) AS won FROM locked; {engine.heads_sql()}"
    )
    with connection.cursor() as cursor:
        # Two statements in one execute: psycopg's client-side binding sends them as one
        # simple query, and each has its own snapshot.
        cursor.execute(sql, [claim.run_id, *step_params, *attempt_params, claim.run_id])
        found = rows.model_rows(Run, [column[0] for column in cursor.description], cursor.fetchall())
        cursor.nextset()
        heads = reads.head_rows_from(cursor)
    if not found:
        raise Run.DoesNotExist(f"run {claim.run_id} does not exist")
    run = found[0]
    return run, bool(run.__dict__.pop("won")), heads


def _usage_values(usage: dict[str, Any]) -> dict[str, Any]:
    """An attempt's usage as the agent gave it, and as the numbers rollups sum in SQL."""
    figures = usage_figures(usage)
    return {"usage": usage, "total_tokens": figures.total_tokens, "cost": figures.cost}


def record_item_successes(*, successes: list[Success]) -> int:
    """Store the results of for_each items of one map step in one transaction: a chunk's, or
    whichever items a worker's slots finished together, each claimed under its own token.

    Returns how many counted; results whose claim is no longer valid (cancelled, taken over)
    are dropped, exactly as record_success drops a single late result.
    """
    if not successes:
        return 0
    first = successes[0].claim
    assert first.parent_id is not None and all(s.claim.parent_id == first.parent_id for s in successes)
    with change() as work:
        run = _lock_run(first.run_id)
        # Under the run lock nothing else can move these rows out of RUNNING: every transition
        # that could (cancel, lease expiry, failure) takes the same lock. Compare-and-set on
        # each item's own claim token.
        held = [(s.claim.step_run_id, s.claim.token) for s in successes]
        valid = set(
            StepRun.objects.filter(_held_filter(held), status=StepStatus.RUNNING).order_by().values_list("pk", flat=True)
        )
        kept = [s for s in successes if s.claim.step_run_id in valid]
        if not kept:
            return 0
        rows.update_rows(
            StepRun,
            key=["id"],
            rows=[
                {
                    "id": s.claim.step_run_id,
                    "output": s.output,
                    "usage": s.usage or {},
                    "started_at": s.started_at,
                    "finished_at": s.finished_at,
                }
                for s in kept
            ],
            constant={"status": StepStatus.SUCCEEDED, "lease_expires_at": None, "error": "", "error_class": ""},
        )
        rows.update_rows(
            Attempt,
            key=["step_run_id", "number"],
            rows=[
                {
                    "step_run_id": s.claim.step_run_id,
                    "number": s.claim.attempt,
                    **_usage_values(s.usage or {}),
                    "log": s.log,
                    "started_at": s.started_at,
                    "finished_at": s.finished_at,
                }
                for s in kept
            ],
            constant={"status": AttemptStatus.SUCCEEDED},
            where={"status": AttemptStatus.RUNNING},
        )
        limited = guards.record_outcome(first.agent_name, succeeded=True, now=timezone.now())
        for s in kept:
            item = StepRun(pk=s.claim.step_run_id, run_id=s.claim.run_id, parent_id=s.claim.parent_id)
            work.event(run, EventKind.STEP_SUCCEEDED, step=item, from_status=StepStatus.RUNNING, to_status=StepStatus.SUCCEEDED)
        _items_succeeded(work, run, first.parent_id, len(kept))
        if limited is not None:
            engine.release_throttled(work, limited)
    return len(kept)


def _items_succeeded(work: Work, run: Run, parent_id: int, count: int) -> None:
    engine.items_succeeded(work, run, parent_id, count)


def record_failure(
    *,
    claim: Claim,
    error_class: str,
    message: str,
    traceback: str = "",
    usage: dict[str, Any] | None = None,
    retry_after: float | None = None,
    log: list[Any] | None = None,
) -> bool:
    """A failed attempt: the engine retries the step later by its policy, hands it to a
    fallback or fails it for good. False (nothing written) if the claim is no longer valid.
    `log` is the attempt's log lines, stored with its error in the same transaction."""
    now = timezone.now()
    with change() as work:
        run = _lock_run(claim.run_id)
        step = StepRun.objects.filter(
            pk=claim.step_run_id, status=StepStatus.RUNNING, claim_token=claim.token
        ).first()
        if step is None:
            return False
        Attempt.objects.filter(step_run=step, number=claim.attempt).update(
            status=AttemptStatus.FAILED,
            finished_at=now,
            error_class=error_class,
            error=message[:2000],
            traceback=traceback[-20000:],
            log=log or [],
            **_usage_values(usage or {}),
        )
        limited = guards.record_outcome(step.agent_name, succeeded=False, error_class=error_class, now=now)
        engine.after_failure(work, run, step, error_class=error_class, message=message, retry_after=retry_after, now=now)
        if limited is not None:
            engine.release_throttled(work, limited)
    return True


# ---------------------------------------------------------------------------------------------
# Waiting steps: people, events, timers and child runs


def resolve_waiting_step(
    *,
    step_run_id: int,
    output: Any = None,
    failed: bool = False,
    error: str = "",
    actor: Any = None,
    expected_kind: str | None = None,
    why: str = "",
) -> StepRun:
    """Finish a step that waits (approval, manual task, event, timer, child run)."""
    step_run = StepRun.objects.only("run_id").get(pk=step_run_id)
    with change() as work:
        run = _lock_run(step_run.run_id)
        step = StepRun.objects.get(pk=step_run_id)
        if step.status != StepStatus.WAITING:
            raise InvalidTransition(f"step '{step.step_key}' is {step.status}, not waiting")
        if expected_kind and step.kind != expected_kind:
            raise InvalidTransition(f"step '{step.step_key}' is a {step.kind} step, not {expected_kind}")
        if failed:
            engine.fail_step(work, run, step, error or "failed", ErrorClass.PERMANENT)
            return step
        engine.finish_waiting(work, run, step, output, message=why, actor=actor)
    return step


def _waiting_step(run: Run, step_run_id: int, waiting_for: str) -> StepRun:
    step = StepRun.objects.get(pk=step_run_id)
    if step.status != StepStatus.WAITING or step.waiting_for != waiting_for:
        raise InvalidTransition(f"step '{step.step_key}' is {step.status}, not waiting for {waiting_for}")
    if run.status != RunStatus.RUNNING:
        raise InvalidTransition(f"run {run.pk} is {run.status}")
    return step


def release_gate(*, step_run_id: int, actor: Any = None, note: str = "") -> StepRun:
    """The gate's approvers approved the exact action: the agent step runs now."""
    step_run = StepRun.objects.only("run_id").get(pk=step_run_id)
    with change() as work:
        run = _lock_run(step_run.run_id)
        step = _waiting_step(run, step_run_id, WaitingFor.GATE)
        step.waiting_for = ""
        # What was approved, so that a later retry with another input cannot run under it.
        work.event(
            run,
            EventKind.STEP_RELEASED,
            step=step,
            from_status=StepStatus.WAITING,
            actor=actor,
            message=note or "approved",
            data={"input_sha256": guards.action_digest(step.input)},
        )
        spec = step_spec(run, step.step_key)
        engine.start_agent(work, run, spec, step, engine.template_context(run, iteration=step.iteration))
    return step


def refuse_gate(*, step_run_id: int, actor: Any = None, reason: str) -> StepRun:
    """The gate was rejected (or timed out): the action never runs and the step fails."""
    step_run = StepRun.objects.only("run_id").get(pk=step_run_id)
    with change() as work:
        run = _lock_run(step_run.run_id)
        step = _waiting_step(run, step_run_id, WaitingFor.GATE)
        # A refused action is a decision, not an accident: it is not escalated as an exception.
        engine.fail_step(work, run, step, reason, ErrorClass.PERMANENT, escalate=False)
    return step


def retry_escalated_step(*, step_run_id: int, actor: Any = None, input: Any = None, edit_input: bool = False) -> StepRun:
    """The owner retries a step that failed for good, optionally with edited input."""
    step_run = StepRun.objects.only("run_id").get(pk=step_run_id)
    with change() as work:
        run = _lock_run(step_run.run_id)
        step = _waiting_step(run, step_run_id, WaitingFor.EXCEPTION)
        edited = " with edited input" if edit_input else ""
        engine.retry_escalated(
            work, run, step, input=input if edit_input else step.input, why=f"retried by the owner{edited}", actor=actor
        )
    return step


def skip_escalated_step(*, step_run_id: int, actor: Any = None, output: Any = None) -> StepRun:
    """The owner skips a failed step, supplying the output later steps will see."""
    step_run = StepRun.objects.only("run_id").get(pk=step_run_id)
    with change() as work:
        run = _lock_run(step_run.run_id)
        step = _waiting_step(run, step_run_id, WaitingFor.EXCEPTION)
        step.waiting_for = ""
        engine.finish_waiting(work, run, step, output, message="skipped by the owner, who supplied its output", actor=actor)
    return step


def abort_run(*, run_id: int, actor: Any = None, reason: str = "") -> Run:
    """The owner gives up on a run (from an exception item): it fails, compensating if it can."""
    with change() as work:
        run = _lock_run(run_id)
        if run.status != RunStatus.RUNNING:
            raise InvalidTransition(f"run {run_id} is {run.status}")
        who = getattr(actor, "username", None) or "the owner"
        engine.fail_run(work, run, reason or f"aborted by {who}", actor=actor)
    return run


def signal_event(*, run_id: int, event_name: str, payload: Any = None, actor: Any = None) -> int:
    """Deliver a named event to one run; returns how many waiting steps it resolved. The
    step's output is the event's payload."""
    waiting = StepRun.objects.filter(run_id=run_id, kind=StepKind.WAIT, status=StepStatus.WAITING, wait_event=event_name)
    return _resume_waiting(list(waiting.values_list("pk", flat=True)), payload, actor=actor, why=f"event '{event_name}'")


def _resume_waiting(step_ids: list[int], payload: Any, *, actor: Any, why: str) -> int:
    resolved = 0
    for pk in step_ids:
        try:
            resolve_waiting_step(step_run_id=pk, output=payload, actor=actor, expected_kind=StepKind.WAIT, why=why)
            resolved += 1
        except InvalidTransition:
            pass  # resolved by someone else (or timed out) between our read and our lock
    return resolved


@dataclass
class Delivered:
    """What an event came to: the steps it resumed (run id, step key) and whether it was kept
    for a step that has not begun to wait yet."""

    event: Event
    resumed: list[tuple[int, str]]
    kept: bool


MAX_EVENT_STEPS = 1_000


def deliver_event(
    *, name: str, key: str = "", payload: Any = None, actor: Any = None, may_resume: Callable[[Run], bool] | None = None
) -> Delivered:
    """An outside event: every step waiting for `name` (with this key, or with no key of its
    own) takes the payload as its output, each once, each in its own transaction; when none is
    waiting, the event is kept for BATON_EVENT_KEEP_SECONDS for the first step that comes to
    wait for it.

    `may_resume(run)` says whether the sender may resume that run (the API's permission
    check); runs it refuses are left waiting as if the event had not come.
    """
    now = timezone.now()
    waiting = (
        StepRun.objects.filter(kind=StepKind.WAIT, status=StepStatus.WAITING, wait_event=name)
        .filter(Q(wait_key=key) | Q(wait_key=""))
        .select_related("run__workflow")
        .order_by("pk")[:MAX_EVENT_STEPS]
    )
    steps = [step for step in waiting if may_resume is None or may_resume(step.run)]
    why = f"event '{name}'" + (f" with key '{key}'" if key else "")
    resumed = [(step.run_id, step.step_key) for step in steps if _resume_waiting([step.pk], payload, actor=actor, why=why)]
    keep = timedelta(seconds=0 if resumed else settings.BATON_EVENT_KEEP_SECONDS)
    event = Event.objects.create(
        name=name,
        key=key,
        payload=payload,
        sent_by=actor if getattr(actor, "is_authenticated", False) else None,
        received_at=now,
        keep_until=now + keep,
    )
    return Delivered(event, resumed, kept=not resumed and keep.total_seconds() > 0)


def wake_timer(*, step_run_id: int) -> bool:
    step_run = StepRun.objects.only("run_id").get(pk=step_run_id)
    with change() as work:
        run = _lock_run(step_run.run_id)
        step = StepRun.objects.get(pk=step_run_id)
        if step.status != StepStatus.WAITING or step.wake_at is None or step.wake_at > timezone.now():
            return False
        wait = step_spec(run, step.step_key).get("wait", {})
        if wait.get("event") and wait.get("on_timeout", "fail") == "fail":
            engine.fail_step(work, run, step, f"event '{wait['event']}' did not arrive within {wait.get('timeout')}", ErrorClass.TIMEOUT)
            return True
        if wait.get("event"):
            message = f"event '{wait['event']}' did not arrive within {wait.get('timeout')}; the run goes on (on_timeout: continue)"
            engine.finish_waiting(work, run, step, {"timed_out": True}, message=message)
            return True
        engine.finish_waiting(work, run, step, {"waited": wait.get("for")}, message="timer elapsed")
    return True


def finish_child_run(*, child_run_id: int) -> bool:
    """A sub-workflow's run ended: its parent step takes its output or its failure."""
    child = Run.objects.only("parent_step_id", "status").get(pk=child_run_id)
    if child.parent_step_id is None or child.status not in RUN_FINAL:
        return False
    parent_step = StepRun.objects.only("run_id").get(pk=child.parent_step_id)
    with change() as work:
        run = _lock_run(parent_step.run_id)
        step = StepRun.objects.get(pk=child.parent_step_id)
        child = Run.objects.get(pk=child_run_id)
        if step.status != StepStatus.WAITING:
            return False
        if child.status == RunStatus.SUCCEEDED:
            engine.finish_waiting(work, run, step, child.output, message=f"sub-workflow run {child.pk} succeeded")
        else:
            engine.fail_step(work, run, step, f"sub-workflow run {child.pk} {child.status}: {child.error}", ErrorClass.PERMANENT)
    return True


# ---------------------------------------------------------------------------------------------
# Recovery, called by the ticker


def expire_lease(*, step_run_id: int, token: str, attempt: int, run_id: int) -> bool:
    """The worker holding this step stopped renewing its lease: count the attempt as lost."""
    claim = Claim(
        step_run_id=step_run_id,
        run_id=run_id,
        token=token,
        attempt=attempt,
        step_key="",
        iteration=0,
        map_index=None,
        agent_name="",
        input=None,
    )
    return record_failure(
        claim=claim,
        error_class=ErrorClass.LOST,
        message=f"attempt {attempt}: the worker stopped responding (lease expired); it was probably killed",
    )


def queue_due_retry(*, step_run_id: int) -> bool:
    now = timezone.now()
    with change() as work:
        won = StepRun.objects.filter(
            pk=step_run_id, status=StepStatus.RETRYING, next_attempt_at__lte=now
        ).update(status=StepStatus.QUEUED, queued_at=now)
        if won:
            step = StepRun.objects.select_related("run").get(pk=step_run_id)
            work.event(
                step.run,
                EventKind.STEP_QUEUED,
                step=step,
                from_status=StepStatus.RETRYING,
                to_status=StepStatus.QUEUED,
                message=f"attempt {step.attempts + 1}: its retry is due",
            )
            # A retry (of a failed attempt or one lost with its worker) has waited its backoff
            # already: it goes to the head of the queue, not behind a backlog of fresh steps.
            work.send_first.append(step_run_id)
    return bool(won)


def resend_lost_message(*, step_run_id: int, queued_at: Any) -> bool:
    """A step queued long ago was never claimed: the broker lost the message, send it again.

    Compare-and-set on queued_at means two tickers re-send it once, not twice; a duplicate
    that does arrive later is refused by claim_step.
    """
    now = timezone.now()
    with change() as work:
        won = StepRun.objects.filter(
            pk=step_run_id, status=StepStatus.QUEUED, queued_at=queued_at
        ).update(queued_at=now)
        if won:
            step = StepRun.objects.select_related("run").get(pk=step_run_id)
            work.event(step.run, EventKind.MESSAGE_RESENT, step=step, message="no worker took the step; message sent again")
            work.send_first.append(step_run_id)
    return bool(won)


def release_steps(*, step_run_ids: list[int], workers: list[str], why: str) -> int:
    """Give back steps a stopping worker holds but will not finish: queued again at once for
    another worker, without waiting for the lease to run out. The interrupted attempt is
    recorded as failed (lost), but the step is not failed or delayed for it.

    Only steps whose current attempt belongs to one of `workers` (processes that have exited)
    are taken back; compare-and-set on the claim token makes a release racing a result harmless.
    """
    now = timezone.now()
    released = 0
    held = list(
        StepRun.objects.filter(pk__in=step_run_ids, status=StepStatus.RUNNING).values_list("pk", "run_id", "claim_token", "attempts")
    )
    for pk, run_id, token, attempts in held:
        with change() as work:
            run = _lock_run(run_id)
            worker = Attempt.objects.filter(step_run_id=pk, number=attempts, worker__in=workers).values_list("worker", flat=True).first()
            if worker is None:
                continue
            step = StepRun.objects.filter(pk=pk, status=StepStatus.RUNNING, claim_token=token).first()
            if step is None:
                continue
            Attempt.objects.filter(step_run=step, number=attempts).update(
                status=AttemptStatus.FAILED, finished_at=now, error_class=ErrorClass.LOST, error=why[:2000]
            )
            step.status = StepStatus.QUEUED
            step.queued_at = now
            step.claim_token = ""
            step.lease_expires_at = None
            step.save(update_fields=["status", "queued_at", "claim_token", "lease_expires_at"])
            work.event(
                run,
                EventKind.STEP_QUEUED,
                step=step,
                from_status=StepStatus.RUNNING,
                to_status=StepStatus.QUEUED,
                message=f"released by {worker}: {why}; queued for another worker",
            )
            work.send_first.append(pk)
            released += 1
    return released


def release_throttled(*, agent: Agent) -> int:
    """Queue the agent's throttled steps for its free slots: the ticker's catch for a release
    that was missed (a cancelled run's steps, a worker that died holding a slot)."""
    with change() as work:
        return engine.release_throttled(work, agent)


def throttled_agents() -> list[Agent]:
    return guards.throttled_agents()


def attempts_in_hand(*, workers: list[str]) -> QuerySet[Attempt]:
    """The running attempts of these worker processes that are their step's current one (a
    cancelled step's attempt may stay "running" for ever)."""
    return Attempt.objects.filter(
        status=AttemptStatus.RUNNING,
        worker__in=workers,
        step_run__status=StepStatus.RUNNING,
        number=F("step_run__attempts"),
    )


def steps_held_by(*, workers: list[str]) -> list[int]:
    """Running steps whose current attempt belongs to one of these worker processes."""
    return list(attempts_in_hand(workers=workers).values_list("step_run_id", flat=True).distinct())
