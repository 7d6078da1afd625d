"""The one place that decides what runs next.

Every function here runs inside a transition's transaction (orchestration.transitions), which
holds the run's row lock, so two workers finishing parallel steps at the same moment cannot
both start the step that joins them. The engine records the state it decides (step and run
rows) in that transaction and puts everything else in the unit of work it is handed: the
events, the steps to send to workers, the ended child runs whose parents resume, and the one
step a worker continues with. It never talks to the broker; the transition applies the unit
of work after commit.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, OuterRef, QuerySet, Subquery
from django.utils import timezone

from orchestration import guards, limits, reads, version_choice, waiting
from orchestration.agents import NETWORK_KINDS
from orchestration.durations import parse_duration
from orchestration.models import Agent, Attempt, Event, Run, StepKind, StepRun, Workflow
from orchestration.rows import insert_row, insert_rows
from orchestration.spec import (
    DEFAULT_RETRY,
    case_text,
    check_input_value,
    chosen_at_run_time,
    loop_body,
    step_agents,
)
from orchestration.specs import UNDO, load_agent, loop_waits, route_steps, spec_for, step_spec, steps_by_key
from orchestration.status import (
    STEP_FINAL,
    AttemptStatus,
    ErrorClass,
    EventKind,
    Risk,
    RunStatus,
    StepStatus,
    WaitingFor,
)
from orchestration.templating import TemplateError, evaluate, render
from orchestration.work import Work

logger = logging.getLogger("baton.engine")


class StepFailed(Exception):
    """A step cannot start (bad template, bad for_each value...): it fails for good."""


# ---------------------------------------------------------------------------------------------
# Inputs


def validate_run_input(spec: dict[str, Any], given: Any) -> dict[str, Any]:
    """Apply defaults and check types; raises ValueError naming every bad field."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ValueError("input: must be a JSON object")
    schema = spec.get("inputs") or {}
    problems = []
    limit = limits.max_input_bytes()
    for name, value in given.items():
        try:
            limits.check_json_value(name, field="input name")
            limits.check_json_value(value, field=f"input `{name}`", max_bytes=limit)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    values = dict(given)
    for name in sorted(set(given) - set(schema)):
        if schema:
            problems.append(f"input `{name}`: not an input of this workflow")
    for name, definition in schema.items():
        if name not in values or values[name] is None:
            if "default" in definition:
                values[name] = definition["default"]
            elif definition.get("required"):
                problems.append(f"input `{name}`: required")
            continue
        error = check_input_value(definition, values[name])
        if error:
            problems.append(f"input `{name}`: {error}")
    if problems:
        raise ValueError("; ".join(problems))
    # Each field fits; together (defaults included) they must too. The mapping is one level.
    limits.check_json_value(values, field="input", max_bytes=limit, max_depth=limits.MAX_JSON_DEPTH + 1)
    return values


# ---------------------------------------------------------------------------------------------
# Reading a run's state


# What advancing a run reads of its head rows: their state and what templates see. The rest
# (inputs, items, timestamps, usage) is read only if a step is changed, by Django itself; at
# 40 heads the full rows cost several milliseconds of every hand-off.
HEAD_FIELDS = ("id", "run_id", "step_key", "kind", "status", "iteration", "output", "error", "error_class", "agent_name")


def head_rows(run: Run) -> list[StepRun]:
    return reads.head_rows(run, only=HEAD_FIELDS)


def heads_sql() -> str:
    """The statement head_rows sends (one parameter: the run's id), for a caller that reads
    the heads in a round trip of its own: its rows are made into heads by reads.head_rows_from."""
    return reads.heads_sql(HEAD_FIELDS)


def template_context(
    run: Run, *, iteration: int = 1, item: Any = None, index: int | None = None, rows: list[StepRun] | None = None
) -> dict[str, Any]:
    """What templates see: input, steps.<key>.output/.status, run.id, iteration, item, index.

    `steps.<key>` is the latest *finished* iteration of that step, so a writer sent back by an
    editor sees the editor's last verdict.
    """
    steps: dict[str, dict[str, Any]] = {}
    if rows is None:
        rows = head_rows(run)
    for row in rows:
        if row.status in STEP_FINAL:
            steps[row.step_key] = {
                "output": row.output,
                "status": row.status,
                "iteration": row.iteration,
                "error": row.error,
            }
    for key in route_steps(run.version_id):
        decided = steps.get(key)
        if decided is None or decided["status"] != StepStatus.SUCCEEDED or not isinstance(decided["output"], dict):
            continue
        # A route is seen as the branch it took, once that branch's step has finished, so
        # the join after the branches reads one name whichever ran (`steps.<route>.output`).
        branch = decided["output"].get("branch")
        steps[key] = {**steps.get(str(branch), decided), "branch": branch}
    context: dict[str, Any] = {
        "input": run.input,
        "steps": steps,
        "run": {"id": run.pk, "workflow": _workflow_key(run)},
        "iteration": iteration,
    }
    if index is not None:
        context["item"] = item
        context["index"] = index
    return context


def _workflow_key(run: Run) -> str:
    # A run read under its lock carries its workflow's key (transitions._lock_run).
    key = getattr(run, "workflow_key", None)
    if key is None:
        key = run.workflow.key if run.workflow_id else ""
    return str(key)


def default_input(run: Run, step: dict[str, Any], context: dict[str, Any]) -> Any:
    # No `input:` given: a first step gets the run's input, a later step the outputs of the
    # steps it comes after, by key.
    if not step["after"]:
        return run.input
    return {key: context["steps"].get(key, {}).get("output") for key in step["after"]}


def retry_policy(agent_retry: dict[str, Any] | None, step: dict[str, Any]) -> dict[str, Any]:
    policy = dict(DEFAULT_RETRY)
    policy.update(agent_retry or {})
    policy.update(step.get("retry") or {})
    return policy


# ---------------------------------------------------------------------------------------------
# Advancing


@dataclass
class Taker:
    """The worker that records its step's success and would run its run's next step itself.

    Given to the engine by that transition: when the next step is the lone one this run
    queues, the engine inserts it already claimed for this worker (RUNNING under `token`,
    with a lease and its attempt, exactly as a claim would leave it) and says so in `step`,
    which spares the hand-off the claim's own statements. Left None, the step is queued and
    the transition claims it as any other (a guarded agent, a step that existed already).
    """

    worker: str
    token: str
    lease: timedelta
    step: StepRun | None = None
    # The agent version that step runs with, when its agent has versions.
    chosen: version_choice.Chosen | None = None


def advance(work: Work, run: Run, *, taker: Taker | None = None, heads: list[StepRun] | None = None) -> None:
    """Start every step whose dependencies are met; finish the run when nothing is left.

    `heads`: the run's head rows (HEAD_FIELDS), when the caller read them in this transaction
    after its last write to the run's steps; otherwise they are read here.
    """
    if run.status != RunStatus.RUNNING:
        return
    spec = spec_for(run)
    by_key = steps_by_key(run.version_id)
    waits = loop_waits(run.version_id)
    to_send: list[int] = []
    rows = head_rows(run) if heads is None else heads
    current = reads.latest_heads(rows)
    progressed = True
    while progressed and run.status == RunStatus.RUNNING:
        progressed = False
        # Which steps may start is decided before any starts: a step that merely starts
        # (queued, waiting) makes no other step ready, and one that finishes as it starts ends
        # the pass (the heads are read afresh).
        ready = [step for step in spec["steps"] if _ready(step, current, waits)]
        for step in ready:
            head = current.get(step["key"]) or StepRun(run=run, step_key=step["key"], kind=step["kind"])
            deps = [current.get(key) for key in step["after"]]
            not_taken = _not_taken(step, current, by_key)
            if not_taken:
                _skip(work, run, head, not_taken)
            elif deps and all(_skipped(dep, current, by_key) for dep in deps if dep):
                _skip(work, run, head, "every step it comes after was skipped")
            else:
                # The lone step this run queues goes to the calling worker (see _queue): if
                # nothing was queued before it and no other step is ready, it is that one.
                lone = len(ready) == 1 and not to_send and work.continue_for_run == run.pk and work.continue_with is None
                _start(work, run, step, head, to_send, rows, taker if lone else None)
            if head.status in STEP_FINAL:
                # Starting it finished it (a false `when`, an empty for_each, a bad template),
                # which may have advanced the run from inside, and steps after it may start
                # now: read the heads afresh and look again. A step that merely started lets
                # nothing else start, so it needs no second look (one pass per hand-off).
                rows = head_rows(run)
                current = reads.latest_heads(rows)
                progressed = True
                break
            current[step["key"]] = head
    _queue(work, run, to_send)
    if run.status == RunStatus.RUNNING and all(
        current.get(s["key"]) is not None and current[s["key"]].status in STEP_FINAL
        for s in spec["steps"]
    ):
        finish_run(work, run, current)


def _ready(step: dict[str, Any], current: dict[str, StepRun], waits: dict[str, tuple[str, ...]]) -> bool:
    """Whether a step not started yet may start: what it comes after has finished, none of it
    failed, and a loop it comes after has finished its last round."""
    head = current.get(step["key"])
    if head is not None and head.status != StepStatus.PENDING:
        return False
    deps = [current.get(key) for key in step["after"]]
    if any(dep is None or dep.status not in STEP_FINAL for dep in deps):
        return False
    # After a loop's body step but outside the loop: wait until the loop has finished.
    judges = [current.get(key) for key in waits.get(step["key"], ())]
    if any(judge is None or judge.status not in STEP_FINAL for judge in judges):
        return False
    return not any(dep.status in (StepStatus.FAILED, StepStatus.CANCELLED) for dep in deps if dep)


def _not_taken(step: dict[str, Any], current: dict[str, StepRun], by_key: dict[str, dict[str, Any]]) -> str | None:
    """Why a branch of a route is skipped: the route it comes after took another branch."""
    for key in step["after"]:
        route = by_key.get(key, {}).get("route")
        decided = current.get(key)
        if route is None or decided is None or decided.status != StepStatus.SUCCEEDED:
            continue
        taken = decided.output.get("branch") if isinstance(decided.output, dict) else None
        if step["key"] in (*route["cases"].values(), route["default"]) and taken != step["key"]:
            return f"route '{key}' took branch '{taken}'"
    return None


def _skipped(dep: StepRun, current: dict[str, StepRun], by_key: dict[str, dict[str, Any]]) -> bool:
    """Whether a skipped step switches off the steps after it. An `end` step that did not end
    the run (its `when` was false) does not: the run goes on past it. One skipped because
    everything before it was skipped still does."""
    if dep.status != StepStatus.SKIPPED:
        return False
    step = by_key.get(dep.step_key)
    if step is None or step["kind"] != StepKind.END:
        return True
    before = [current.get(key) for key in step["after"]]
    return bool(before) and all(b is not None and _skipped(b, current, by_key) for b in before)


def _skip(work: Work, run: Run, head: StepRun, reason: str) -> None:
    head.status = StepStatus.SKIPPED
    head.finished_at = timezone.now()
    head.error = ""
    head.save()
    work.event(run, EventKind.STEP_SKIPPED, step=head, to_status=head.status, message=reason)


def _start(
    work: Work,
    run: Run,
    step: dict[str, Any],
    head: StepRun,
    to_send: list[int],
    rows: list[StepRun] | None = None,
    taker: Taker | None = None,
) -> None:
    now = timezone.now()
    context = template_context(run, iteration=head.iteration, rows=rows)
    try:
        if step.get("when") and not evaluate(step["when"], context):
            _skip(work, run, head, f"`when` was false: {step['when']}")
            return
        if step.get("for_each"):
            payload = None  # each item renders its own input
        elif "input" in step:
            payload = render(step["input"], context)
        else:
            payload = default_input(run, step, context)
        _check_rendered(payload, "input")
    except TemplateError as exc:
        # Recorded in the transaction that finished the step before it: that success stands,
        # and this step fails for good with the template's error.
        head.save()
        fail_step(work, run, head, f"{exc}", ErrorClass.PERMANENT)
        return
    head.input = payload
    if step["kind"] == StepKind.AGENT:
        if step.get("for_each"):
            # A map that chooses each item's agent has none of its own: its items have theirs.
            head.agent_name = "" if chosen_at_run_time(step["agent"]) else step["agent"]
        else:
            try:
                head.agent_name = chosen_name(step, "agent", context)
            except TemplateError as exc:
                head.save()
                fail_step(work, run, head, str(exc), ErrorClass.PERMANENT)
                return
        if needs_gate(step, head.agent_name):
            _wait_for_gate(work, run, step, head, context)
            return
        _start_agent(work, run, step, head, context, to_send, taker)
        return
    if step["kind"] == StepKind.ROUTE:
        _route(work, run, step, head, context)
        return
    if step["kind"] == StepKind.END:
        _end(work, run, step, head, context)
        return
    if step["kind"] == StepKind.WORKFLOW and step.get("for_each"):
        head.started_at = now
        _start_map(work, run, step, head, context, to_send)
        return
    head.status = StepStatus.WAITING
    head.started_at = now
    if step["kind"] == StepKind.WAIT:
        wait = step["wait"]
        head.waiting_for = WaitingFor.EVENT if wait.get("event") else WaitingFor.TIMER
        limit = wait.get("for") or wait.get("timeout")
        if limit is not None:
            head.wake_at = now + timedelta(seconds=parse_duration(limit))
        if wait.get("event"):
            head.wait_event = wait["event"]
            try:
                head.wait_key = _event_key(render(wait["match"], context)) if "match" in wait else ""
            except (TemplateError, ValueError) as exc:
                head.status = StepStatus.PENDING
                head.save()
                fail_step(work, run, head, f"wait.match: {exc}", ErrorClass.PERMANENT)
                return
    else:
        # A person (approval, manual) or a sub-workflow run: the kind says which.
        head.waiting_for = WaitingFor(step["kind"])
    head.save()
    work.event(run, EventKind.STEP_WAITING, step=head, to_status=head.status, message=_waiting_for(step, head))
    if head.wait_event:
        _take_kept_event(work, run, head)
    if step["kind"] == StepKind.WORKFLOW:
        _start_child(work, run, step, head, context)
    elif step["kind"] in (StepKind.APPROVAL, StepKind.MANUAL):
        waiting.open_wait(work, run=run, step=head, spec=step, context=context, kind=step["kind"])


def _insert_items(head: StepRun, rows: list[tuple[int, Any, Any]], *, limit: int, now: Any) -> None:
    """Write a map's item rows (index, item, input): the first `limit` queued, the rest pending.

    bulk_create prepares every field of every row in Python (some 30 fields x 10,000 items,
    3.4 s of a write-locked transaction on SQLite). Here the columns that are the same for
    every item are prepared once; only the index, item, input, status and queued_at vary.
    Each batch of BATCH_SIZE rows is one call: an executemany on SQLite, one statement whose
    rows arrive as a single JSON document on PostgreSQL.
    """
    connection = transaction.get_connection()
    fields = [f for f in StepRun._meta.concrete_fields if not f.primary_key]
    varying = ("map_index", "input", "item", "status", "queued_at")
    fixed = [f for f in fields if f.attname not in varying]
    model = StepRun(
        run_id=head.run_id,
        step_key=head.step_key,
        iteration=head.iteration,
        parent_id=head.pk,
        kind=head.kind,
        agent_name=head.agent_name,
    )
    constant = [f.get_db_prep_save(f.pre_save(model, True), connection) for f in fixed]
    by_name = {f.attname: f for f in fields}
    queued_at = by_name["queued_at"].get_db_prep_save(now, connection)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in [*fixed, *(by_name[name] for name in varying)])
    insert = f"INSERT INTO {quote(StepRun._meta.db_table)} ({columns}) "
    batches = [rows[start : start + limits.BATCH_SIZE] for start in range(0, len(rows), limits.BATCH_SIZE)]
    queued, pending = StepStatus.QUEUED.value, StepStatus.PENDING.value
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            # sqlite3 runs executemany in C: one short statement per row, never near a
            # build's variable limit.
            json_input, json_item = by_name["input"], by_name["item"]
            sql = insert + f"VALUES ({', '.join(['%s'] * (len(fixed) + len(varying)))})"
            for batch in batches:
                cursor.executemany(
                    sql,
                    [
                        [
                            *constant,
                            index,
                            json_input.get_db_prep_save(payload, connection),
                            json_item.get_db_prep_save(item, connection),
                            queued if index < limit else pending,
                            queued_at if index < limit else None,
                        ]
                        for index, item, payload in batch
                    ],
                )
            return
        # PostgreSQL: a row per statement costs a parse and plan each, and thousands of
        # placeholders cost the driver more than the rows; one JSON parameter carries a batch.
        # (A JSON null input or item becomes SQL NULL, as a JSONField stores None.)
        casts = ", ".join(f"%s::{f.cast_db_type(connection)}" for f in fixed)
        sql = insert + (
            f"SELECT {casts}, x.map_index, x.input, x.item, "
            "CASE WHEN x.map_index < %s THEN %s ELSE %s END, "
            "CASE WHEN x.map_index < %s THEN %s::timestamptz END "
            "FROM jsonb_to_recordset(%s::jsonb) AS x(map_index integer, input jsonb, item jsonb)"
        )
        for batch in batches:
            document = json.dumps([{"map_index": i, "input": payload, "item": item} for i, item, payload in batch])
            cursor.execute(sql, [*constant, limit, queued, pending, limit, queued_at, document])


def _check_rendered(value: Any, what: str) -> None:
    """A rendered value that could not be stored (a NUL, a lone surrogate) fails its step
    here, instead of failing the whole transaction when the row is saved."""
    try:
        limits.check_json_value(value, field=what, max_depth=limits.MAX_JSON_DEPTH * 4)
    except ValueError as exc:
        raise TemplateError(str(exc)) from None


def _too_many_items(step: dict[str, Any], items: list[Any]) -> str | None:
    limit = limits.max_map_items()
    if len(items) <= limit:
        return None
    return (
        f"`for_each` gave {len(items):,} items; step '{step['key']}' may map over at most "
        f"{limit:,} (BATON_MAX_MAP_ITEMS)"
    )


def start_agent(work: Work, run: Run, step: dict[str, Any], head: StepRun, context: dict[str, Any]) -> None:
    """Queue an agent step (or start its map) now: its gate, if any, has been passed."""
    to_send: list[int] = []
    _start_agent(work, run, step, head, context, to_send)
    _queue(work, run, to_send)


def _queue(work: Work, run: Run, step_ids: list[int]) -> None:
    """Send steps this run has just queued, or keep a lone one for the calling worker.

    A worker that records its own step's success may run the next step itself with no round
    trip through the broker (work.continue_for_run says which run). Only a lone step of that
    same run is kept, once: steps of other runs (a slot freed for a throttled step) and
    several at once (a fan-out, for other workers to share) always go to the broker.
    """
    if not step_ids:
        return
    if len(step_ids) == 1 and work.continue_for_run == run.pk and work.continue_with is None:
        work.continue_with = step_ids[0]
        return
    work.send.extend(step_ids)


def _start_agent(
    work: Work,
    run: Run,
    step: dict[str, Any],
    head: StepRun,
    context: dict[str, Any],
    to_send: list[int],
    taker: Taker | None = None,
) -> None:
    now = timezone.now()
    if step.get("for_each"):
        head.started_at = now
        _start_map(work, run, step, head, context, to_send)
        return
    # started_at is set when a worker claims the step; queued_at says when it was sent.
    head.status = StepStatus.QUEUED
    head.queued_at = now
    if head.pk is None and taker is not None and not guards.watches(head.agent_name):
        _insert_claimed(work, run, head, taker, now)
        to_send.append(head.pk)
        return
    if head.pk is None:
        insert_row(head)  # the hand-off path: the next step of a sequence
    else:
        head.save()
    work.event(run, EventKind.STEP_QUEUED, step=head, to_status=head.status)
    to_send.append(head.pk)


def _insert_claimed(work: Work, run: Run, head: StepRun, taker: Taker, now: datetime) -> None:
    """Insert the next step already claimed by the worker that finished the one before it.

    The row and its attempt are what transitions' claim would leave (RUNNING under the
    worker's token and lease, attempt 1 on that worker), and the timeline records both moves,
    queued then started, so a worker that dies before running it loses nothing: its lease
    runs out and the ticker gives the step to another worker. Only for an agent no guard
    watches (no circuit, no max_concurrency): a guarded one is claimed the usual way, under
    its agent's lock.
    """
    head.status = StepStatus.RUNNING
    head.attempts += 1
    head.claim_token = taker.token
    head.lease_expires_at = now + taker.lease
    head.started_at = now
    chosen = version_choice.choose([head]).get((run.pk, head.agent_name))
    attempt = Attempt(
        number=head.attempts,
        worker=taker.worker,
        agent_name=head.agent_name,
        agent_version_id=chosen.version_id if chosen else None,
        started_at=now,
    )
    # The worker is given the input as the database gives it back (JSON's types and, on
    # PostgreSQL, jsonb's key order), exactly as a claim reads the row it took.
    insert_rows(head, attempt, link="step_run", read_back=("input",))
    work.event(run, EventKind.STEP_QUEUED, step=head, to_status=StepStatus.QUEUED)
    work.event(
        run,
        EventKind.STEP_STARTED,
        step=head,
        from_status=StepStatus.QUEUED,
        to_status=StepStatus.RUNNING,
        message=f"attempt {head.attempts} on {taker.worker}",
    )
    taker.step = head
    taker.chosen = chosen


def needs_gate(step: dict[str, Any], agent_name: str = "") -> bool:
    """A `gate:` on the step, or a high-risk agent: nothing runs without approval of the action.

    `agent_name`: the agent chosen for the step; without one (a map that chooses each item's
    agent), any high-risk agent the step may choose gates it."""
    if step.get("gate") is not None:
        return True
    for name in [agent_name] if agent_name else step_agents(step):
        agent = load_agent(name)
        if agent is not None and agent.risk == Risk.HIGH:
            return True
    return False


def chosen_name(step: dict[str, Any], field: str, context: dict[str, Any]) -> str:
    """The agent (`field` "agent") or sub-workflow ("workflow") a step runs: its name, or the
    value of its expression, which must be one of the step's declared set (`agents`,
    `workflows`); TemplateError naming the value and the set otherwise."""
    name = step[field]
    if not chosen_at_run_time(name):
        return str(name)
    value = evaluate(name, context)
    allowed = step.get(f"{field}s") or []
    if not isinstance(value, str) or value not in allowed:
        raise TemplateError(
            f"field `{field}`: {value!r} is not one of the {field}s this step may choose ({', '.join(allowed)})"
        )
    return value


def _route(work: Work, run: Run, step: dict[str, Any], head: StepRun, context: dict[str, Any]) -> None:
    """A route decides at once: exactly one of its branches runs (advance skips the others)."""
    route = step["route"]
    try:
        value = evaluate(route["by"], context)
        _check_rendered(value, "route.by")
    except TemplateError as exc:
        head.save()
        fail_step(work, run, head, f"`route.by` {exc}", ErrorClass.PERMANENT)
        return
    branch = route["cases"].get(case_text(value))
    why = "" if branch is not None else " (no case matched: the default)"
    branch = branch or route["default"]
    now = timezone.now()
    head.status = StepStatus.SUCCEEDED
    head.output = {"value": value, "branch": branch}
    head.started_at = head.finished_at = now
    head.save()
    work.event(
        run, EventKind.STEP_SUCCEEDED, step=head, to_status=head.status, message=f"{case_text(value)}: branch '{branch}'{why}"
    )
    after_success(work, run, head)


def _end(work: Work, run: Run, step: dict[str, Any], head: StepRun, context: dict[str, Any]) -> None:
    """An `end` step whose turn came (its `when` held): the run ends here, as it says."""
    end = step["end"]
    try:
        message = str(render(end["message"], context))
        output = render(end["output"], context) if "output" in end else {"ended_by": step["key"], "message": message}
        _check_rendered(output, "end.output")
    except TemplateError as exc:
        head.save()
        fail_step(work, run, head, f"`end` {exc}", ErrorClass.PERMANENT)
        return
    now = timezone.now()
    head.status = StepStatus.SUCCEEDED
    head.output = {"status": end["status"], "message": message}
    head.started_at = head.finished_at = now
    head.save()
    work.event(run, EventKind.STEP_SUCCEEDED, step=head, to_status=head.status, message=f"ends the run as {end['status']}: {message}")
    if end["status"] == "failed":
        fail_run(work, run, message)
        return
    reason = f"ended by step '{step['key']}': {message}"
    stopped, items = _stop_open_steps(work, run, reason)
    run.status = RunStatus.SUCCEEDED
    run.output = output
    run.finished_at = now
    run.save(update_fields=["status", "output", "finished_at"])
    work.event(
        run, EventKind.RUN_SUCCEEDED, from_status=RunStatus.RUNNING, to_status=run.status, message=reason,
        data={"cancelled_steps": stopped, "cancelled_items": items},
    )
    if run.parent_step_id:
        work.child_runs_ended.append(run.pk)


def _wait_for_gate(work: Work, run: Run, step: dict[str, Any], head: StepRun, context: dict[str, Any]) -> None:
    if step.get("for_each"):
        # The approver sees every item the step is about to act on.
        try:
            items = evaluate(step["for_each"], context)
            if isinstance(items, (tuple, range)):
                items = list(items)
            too_many = _too_many_items(step, items) if isinstance(items, list) else None
            if too_many:
                raise TemplateError(too_many)
            _check_rendered(items, "`for_each`")
            head.input = {"for_each": items}
        except TemplateError as exc:
            head.save()
            message = str(exc) if str(exc).startswith("`for_each`") else f"`for_each` {exc}"
            fail_step(work, run, head, message, ErrorClass.PERMANENT)
            return
    head.status = StepStatus.WAITING
    head.waiting_for = WaitingFor.GATE
    head.started_at = timezone.now()
    head.save()
    work.event(
        run,
        EventKind.STEP_GATED,
        step=head,
        to_status=head.status,
        message=f"agent {step['agent']} waits for approval of this exact action",
    )
    waiting.open_wait(work, run=run, step=head, spec=step, context=context, kind=WaitingFor.GATE)


def gate_again(work: Work, run: Run, step: dict[str, Any], head: StepRun) -> None:
    """Put an agent step back behind its gate (an owner's retry with an input nobody approved)."""
    _wait_for_gate(work, run, step, head, template_context(run, iteration=head.iteration))


def _waiting_for(step: dict[str, Any], head: StepRun | None = None) -> str:
    kind = step["kind"]
    if kind == StepKind.WORKFLOW:
        return f"waiting for sub-workflow '{step['workflow']}'"
    if kind == StepKind.WAIT:
        wait = step["wait"]
        if wait.get("event"):
            key = f" with key '{head.wait_key}'" if head is not None and head.wait_key else ""
            return f"waiting for event '{wait['event']}'{key}"
        return f"waiting {wait['for']}"
    return f"waiting for a person ({kind})"


def _event_key(value: Any) -> str:
    """An event key as the events store it: text, at most 200 characters."""
    key = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if len(key) > 200:
        raise ValueError(f"the key is {len(key)} characters; at most 200 are allowed")
    return key


def _take_kept_event(work: Work, run: Run, head: StepRun) -> None:
    """An event that came before this step began to wait for it: the step takes it now."""
    kept = (
        Event.objects.select_for_update(skip_locked=True)
        .filter(name=head.wait_event, consumed_by__isnull=True, keep_until__gt=timezone.now())
        .filter(**({"key": head.wait_key} if head.wait_key else {}))
        .order_by("received_at", "id")
        .first()
    )
    if kept is None:
        return
    kept.consumed_by = head
    kept.save(update_fields=["consumed_by"])
    finish_waiting(
        work, run, head, kept.payload,
        message=f"event '{kept.name}' received {kept.received_at:%Y-%m-%d %H:%M:%S} UTC, before the step began to wait",
    )


def finish_waiting(work: Work, run: Run, step: StepRun, output: Any, *, message: str = "", actor: Any = None) -> None:
    """A waiting step (a person, an event, a timer, a child run) succeeds with `output`, and the
    run goes on from it."""
    step.status = StepStatus.SUCCEEDED
    step.output = output
    step.finished_at = timezone.now()
    step.wake_at = None
    step.save(update_fields=["status", "output", "finished_at", "wake_at", "waiting_for"])
    work.event(run, EventKind.STEP_SUCCEEDED, step=step, from_status=StepStatus.WAITING, to_status=step.status, actor=actor, message=message)
    if step.parent_id is not None:
        # An item of a map over a sub-workflow: its child run succeeded.
        items_succeeded(work, run, step.parent_id, 1)
        return
    after_success(work, run, step)


def _start_child(work: Work, run: Run, step: dict[str, Any], head: StepRun, context: dict[str, Any]) -> None:
    try:
        key = chosen_name(step, "workflow", context)
    except TemplateError as exc:
        fail_step(work, run, head, str(exc), ErrorClass.PERMANENT)
        return
    workflow = Workflow.objects.filter(key=key).first()
    version = workflow.latest_version if workflow else None
    if workflow is None or version is None:
        fail_step(work, run, head, f"sub-workflow '{key}' has no published version", ErrorClass.PERMANENT)
        return
    try:
        child_input = validate_run_input(version.spec, head.input)
    except ValueError as exc:
        fail_step(work, run, head, f"sub-workflow '{key}' {exc}", ErrorClass.PERMANENT)
        return
    child = Run.objects.create(
        workflow=workflow,
        version=version,
        input=child_input,
        started_by=run.started_by,
        trigger="parent",
        parent_step=head,
    )
    item = f" item {head.map_index}" if head.map_index is not None else ""
    work.event(child, EventKind.RUN_STARTED, to_status=child.status, message=f"started by run {run.pk}, step '{head.step_key}'{item}")
    advance(work, child)


def restart_child(work: Work, run: Run, step: dict[str, Any], head: StepRun) -> None:
    """Run a sub-workflow step again (an owner's retry): a new child run."""
    head.status = StepStatus.WAITING
    head.waiting_for = WaitingFor.WORKFLOW
    head.save()
    _start_child(work, run, step, head, template_context(run, iteration=head.iteration))


def _start_child_items(work: Work, run: Run, step: dict[str, Any], parent: StepRun, count: int) -> None:
    """Start the child runs of a map over a sub-workflow's next pending items, lowest index first."""
    if count <= 0:
        return
    pending = list(StepRun.objects.filter(parent=parent, status=StepStatus.PENDING).order_by("map_index")[:count])
    if not pending:
        return
    context = template_context(run, iteration=parent.iteration)
    now = timezone.now()
    for item in pending:
        item.status = StepStatus.WAITING
        item.waiting_for = WaitingFor.WORKFLOW
        item.started_at = now
        item.queued_at = None
        item.save(update_fields=["status", "waiting_for", "started_at", "queued_at"])
        work.event(
            run, EventKind.STEP_WAITING, step=item, from_status=StepStatus.PENDING, to_status=item.status,
            message=f"item {item.map_index}: {_waiting_for(step)}",
        )
        _start_child(work, run, step, item, {**context, "item": item.item, "index": item.map_index})
        if run.status != RunStatus.RUNNING or item.status == StepStatus.FAILED:
            return  # it failed the map (and so the run, or it escalated): start no more


def _start_map(
    work: Work, run: Run, step: dict[str, Any], head: StepRun, context: dict[str, Any], to_send: list[int]
) -> None:
    previous: StepRun | None = None
    if head.redo is not None and head.iteration > 1:
        # A round of `loop.redo`: the same items as the round before, only the named ones run.
        previous = StepRun.objects.get(run=run, step_key=head.step_key, iteration=head.iteration - 1, map_index__isnull=True)
        items = list(StepRun.objects.filter(parent=previous).order_by("map_index").values_list("item", flat=True))
    else:
        try:
            items = evaluate(step["for_each"], context)
        except TemplateError as exc:
            head.save()
            fail_step(work, run, head, f"`for_each` {exc}", ErrorClass.PERMANENT)
            return
    if isinstance(items, (tuple, range)):
        items = list(items)
    if not isinstance(items, list):
        head.save()
        fail_step(work, run, head, f"`for_each` must give a list, got {type(items).__name__}", ErrorClass.PERMANENT)
        return
    too_many = _too_many_items(step, items)
    if too_many:
        head.save()
        fail_step(work, run, head, too_many, ErrorClass.PERMANENT)
        return
    if previous is not None:
        _start_redo(work, run, step, head, previous, items, context, to_send)
        return
    now = timezone.now()
    if not items:
        head.status = StepStatus.SUCCEEDED
        head.output = []
        head.items_total = 0
        head.finished_at = now
        head.save()
        work.event(run, EventKind.STEP_SUCCEEDED, step=head, to_status=head.status, message="for_each over an empty list")
        after_success(work, run, head)
        return
    limit = step.get("concurrency") or len(items)
    rows = _item_rows(work, run, step, head, context, list(enumerate(items)))
    if rows is None:
        return
    head.status = StepStatus.RUNNING
    head.items_total = len(items)
    head.save()
    work.event(run, EventKind.STEP_STARTED, step=head, to_status=head.status, message=f"mapping over {len(items)} items")
    if step["kind"] == StepKind.WORKFLOW:
        _insert_items(head, [row[:3] for row in rows], limit=0, now=now)
        _start_child_items(work, run, step, head, limit)
        return
    _insert_items(head, [row[:3] for row in rows], limit=limit, now=now)
    _send_items(work, step, head, rows, to_send)


def _item_rows(
    work: Work, run: Run, step: dict[str, Any], head: StepRun, context: dict[str, Any], items: list[tuple[int, Any]]
) -> list[tuple[int, Any, Any, str]] | None:
    """Each item's (index, item, input, agent) as the map starts it (the agent is "" unless the
    step chooses one per item); None when one cannot be rendered: the step has failed."""
    rows: list[tuple[int, Any, Any, str]] = []
    per_item = step["kind"] == StepKind.AGENT and chosen_at_run_time(step["agent"])
    for index, item in items:
        own = {**context, "item": item, "index": index}
        try:
            payload = render(step["input"], own) if "input" in step else item
            _check_rendered(payload, "input")
            agent = chosen_name(step, "agent", own) if per_item else ""
        except TemplateError as exc:
            head.save()
            fail_step(work, run, head, f"item {index}: {exc}", ErrorClass.PERMANENT)
            return None
        rows.append((index, item, payload, agent))
    return rows


def _send_items(work: Work, step: dict[str, Any], head: StepRun, rows: list[tuple[int, Any, Any, str]], to_send: list[int]) -> None:
    """Give each item its own agent (when the step chooses them), then send the queued items."""
    by_agent: dict[str, list[int]] = {}
    for index, _, _, agent in rows:
        if agent:
            by_agent.setdefault(agent, []).append(index)
    for agent, indexes in by_agent.items():
        StepRun.objects.filter(parent=head, map_index__in=indexes).update(agent_name=agent)
    queued = list(
        StepRun.objects.filter(parent=head, status=StepStatus.QUEUED).order_by("map_index").values_list("pk", flat=True)
    )
    agents = list(Agent.objects.filter(name__in=[head.agent_name, *by_agent]).values_list("kind", "max_concurrency"))
    limited = any(limit is not None for _, limit in agents)
    # Chunks would hold slots of a limited agent while their items wait their turn in the
    # worker, so such items (and steps with their own `concurrency`) go one per message; so do
    # items of different agents (a worker's chunk runs one agent).
    if step.get("concurrency") or limited or by_agent:
        to_send.extend(queued)
    elif queued and agents and all(kind in NETWORK_KINDS for kind, _ in agents):
        # A worker hands such a chunk to its slots whole (dispatch.send_mapped). An `async def`
        # python agent is not told apart here: that would import its code in whichever process
        # starts the run (a web process); its items go in the usual chunks, and still run in slots.
        work.send_mapped_in_slots.append(queued)
    elif queued:
        work.send_mapped.append(queued)


def _start_redo(
    work: Work,
    run: Run,
    step: dict[str, Any],
    head: StepRun,
    previous: StepRun,
    items: list[Any],
    context: dict[str, Any],
    to_send: list[int],
) -> None:
    """A later round of a map whose loop's judge named the items to run again (head.redo):
    those run, rendered afresh for this round; every other item keeps the previous round's
    output, as a succeeded row of this round with no attempt, so each round has every item."""
    now = timezone.now()
    redo = sorted(set(head.redo or []))
    rows = _item_rows(work, run, step, head, context, [(index, items[index]) for index in redo])
    if rows is None:
        return
    fresh = {index: row for index, row in zip(redo, rows, strict=True)}
    before = dict(StepRun.objects.filter(parent=previous).values_list("map_index", "input"))
    head.status = StepStatus.RUNNING
    head.items_total = len(items)
    head.items_done = len(items) - len(redo)
    head.save()
    work.event(
        run, EventKind.STEP_STARTED, step=head, to_status=head.status,
        message=f"round {head.iteration}: item(s) {', '.join(map(str, redo)) or 'none'} run again; the other {head.items_done} keep their outputs",
        data={"redo": redo},
    )
    _insert_items(
        head,
        [fresh[i][:3] if i in fresh else (i, item, before.get(i)) for i, item in enumerate(items)],
        limit=0,
        now=now,
    )
    earlier = StepRun.objects.filter(parent=previous, map_index=OuterRef("map_index"))
    StepRun.objects.filter(parent=head).exclude(map_index__in=redo).update(
        status=StepStatus.SUCCEEDED,
        output=Subquery(earlier.values("output")[:1]),
        agent_name=Subquery(earlier.values("agent_name")[:1]),
        finished_at=now,
    )
    if not redo:
        head.status = StepStatus.SUCCEEDED
        head.output = collect_items(head)
        head.finished_at = now
        head.save()
        work.event(run, EventKind.STEP_SUCCEEDED, step=head, to_status=head.status, message="no item to run again")
        after_success(work, run, head)
        return
    limit = step.get("concurrency") or len(redo)
    if step["kind"] == StepKind.WORKFLOW:
        _start_child_items(work, run, step, head, limit)
        return
    StepRun.objects.filter(parent=head, map_index__in=redo[:limit]).update(status=StepStatus.QUEUED, queued_at=now)
    _send_items(work, step, head, list(fresh.values()), to_send)


# ---------------------------------------------------------------------------------------------
# After a step finishes


def after_success(
    work: Work, run: Run, head: StepRun, *, taker: Taker | None = None, heads: list[StepRun] | None = None
) -> None:
    """A head row has just succeeded: apply its loop, then advance.

    `head` may be a partial row (pk, step_key, iteration, kind): read it in full before saving.
    `taker`: the worker that recorded it, which may be given the run's next step (advance).
    `heads`: the run's head rows read after that success, for advance (unless a loop changes
    them first).
    """
    if head.kind == StepKind.COMPENSATION:
        next_compensation(work, run)
        return
    step = step_spec(run, head.step_key)
    loop = step.get("loop")
    if loop:
        context = template_context(run, iteration=head.iteration)
        try:
            done = bool(evaluate(loop["until"], context))
        except TemplateError as exc:
            fail_step(work, run, StepRun.objects.get(pk=head.pk), f"`loop.until` {exc}", ErrorClass.PERMANENT)
            return
        if not done:
            if head.iteration < loop["max_iterations"]:
                try:
                    redo = _redo_items(run, step, head, loop, context) if "redo" in loop else None
                except TemplateError as exc:
                    fail_step(work, run, StepRun.objects.get(pk=head.pk), str(exc), ErrorClass.PERMANENT)
                    return
                _loop_back(work, run, step, head, loop, redo)
            elif loop["on_exhausted"] == "fail":
                fail_step(work,
                    run,
                    StepRun.objects.get(pk=head.pk),
                    f"loop back to '{loop['back_to']}' ran {loop['max_iterations']} times "
                    f"and `{loop['until']}` never became true",
                    ErrorClass.PERMANENT,
                )
                return
        # A loop may have added the next round's rows: advance reads the heads afresh.
        heads = None
    advance(work, run, taker=taker, heads=heads)


def _redo_items(run: Run, step: dict[str, Any], head: StepRun, loop: dict[str, Any], context: dict[str, Any]) -> list[int] | None:
    """The indexes of the items of `loop.back_to` (a map) the judge sends back, from `loop.redo`
    (indexes, or keys given by the map's `item_key`); None: all of them. TemplateError naming
    an item that does not exist."""
    value = evaluate(loop["redo"], context)
    if value is None:
        return None
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TemplateError(f"field `loop.redo` must give a list of item indexes or keys, got {type(value).__name__}")
    target = step_spec(run, loop["back_to"])
    mapped = StepRun.objects.get(run=run, step_key=loop["back_to"], iteration=head.iteration, map_index__isnull=True)
    total = mapped.items_total or 0
    keys: dict[str, int] = {}
    if target.get("item_key"):
        for index, item in StepRun.objects.filter(parent=mapped).order_by("map_index").values_list("map_index", "item"):
            keys.setdefault(case_text(evaluate(target["item_key"], {**context, "item": item, "index": index})), int(index or 0))
    chosen: set[int] = set()
    for entry in value:
        if isinstance(entry, int) and not isinstance(entry, bool):
            if not 0 <= entry < total:
                has = f"items 0 to {total - 1}" if total else "no items"
                raise TemplateError(f"field `loop.redo`: item {entry} does not exist (step '{loop['back_to']}' has {has})")
            chosen.add(entry)
        elif isinstance(entry, str) and target.get("item_key"):
            if entry not in keys:
                raise TemplateError(
                    f"field `loop.redo`: no item of step '{loop['back_to']}' has the key {entry!r} (keys: {', '.join(keys) or 'none'})"
                )
            chosen.add(keys[entry])
        else:
            raise TemplateError(
                f"field `loop.redo`: {entry!r} is not an item index"
                + ("" if target.get("item_key") else f", and step '{loop['back_to']}' has no `item_key` to name its items by")
            )
    return sorted(chosen)


def _loop_back(
    work: Work, run: Run, step: dict[str, Any], head: StepRun, loop: dict[str, Any], redo: list[int] | None = None
) -> None:
    spec = spec_for(run)
    body = loop_body(spec, loop["back_to"], step["key"])
    next_iteration = head.iteration + 1
    StepRun.objects.bulk_create(
        [
            StepRun(
                run=run,
                step_key=s["key"],
                kind=s["kind"],
                iteration=next_iteration,
                redo=redo if s["key"] == loop["back_to"] else None,
            )
            for s in spec["steps"]
            if s["key"] in body
        ]
    )
    again = "" if redo is None else f" (item(s) {', '.join(map(str, redo)) or 'none'} of '{loop['back_to']}' run again)"
    work.event(
        run,
        EventKind.STEP_LOOPED,
        step=head,
        message=f"`{loop['until']}` is false: back to '{loop['back_to']}' for round {next_iteration}{again}",
        data={"iteration": next_iteration, "steps": sorted(body), **({"redo": redo} if redo is not None else {})},
    )


def fail_step(work: Work, run: Run, step: StepRun, message: str, error_class: str, *, escalate: bool = True) -> None:
    """A step failed for good: an item fails its map, a head fails its run (or, with
    `on_failure: escalate`, waits for the workflow owner; never a refused gate: escalate=False)."""
    before = step.status
    step.status = StepStatus.FAILED
    step.error = message
    step.error_class = error_class
    step.finished_at = timezone.now()
    step.lease_expires_at = None
    step.save()
    work.event(run, EventKind.STEP_FAILED, step=step, from_status=before, to_status=step.status, message=message)
    if step.kind == StepKind.COMPENSATION:
        # Loud, not swallowed: the run's final error names it, the log says it at ERROR level,
        # and the remaining compensations still run.
        logger.error("run %s: compensation '%s' failed: %s", run.pk, step.step_key, message)
        work.event(run, EventKind.COMPENSATION_FAILED, step=step, message=message)
        next_compensation(work, run)
        return
    if step.parent_id is not None:
        parent = StepRun.objects.get(pk=step.parent_id)
        if parent.status not in STEP_FINAL and parent.waiting_for != WaitingFor.EXCEPTION:
            # The map has failed: none of its other items may start any more, whether the
            # run then fails or the step is escalated (an owner's retry re-queues them).
            _cancel_open_items(work, run, parent, f"item {step.map_index} failed")
            fail_step(work, run, parent, f"item {step.map_index} failed: {message}", error_class)
        return
    if escalate and _escalates(run, step):
        _escalate(work, run, step, message)
        return
    agent = f" (agent {step.agent_name})" if step.agent_name else ""
    fail_run(work, run, f"Step '{step.step_key}'{agent} failed: {message}")


def _cancel_open_items(work: Work, run: Run, parent: StepRun, reason: str) -> None:
    """Cancel a map's unfinished items, in the transaction that fails the map.

    Workers holding some of them (a chunk) look before each item, see it cancelled and stop;
    whatever they report for an item already started is refused, as after a cancel. The child
    runs of a map over a sub-workflow are cancelled with their items.
    """
    waited = list(StepRun.objects.filter(parent=parent, status=StepStatus.WAITING).values_list("pk", flat=True))
    cancelled = _cancel_steps(StepRun.objects.filter(parent=parent), reason=reason)
    _cancel_children(work, run, waited, reason)
    if cancelled:
        work.event(
            run,
            EventKind.STEP_CANCELLED,
            step=parent,
            message=f"{reason}: its {cancelled} unfinished item(s) are cancelled",
            data={"cancelled_items": cancelled},
        )


def _escalates(run: Run, step: StepRun) -> bool:
    if step.kind not in (StepKind.AGENT, StepKind.WORKFLOW):
        return False
    spec = spec_for(run)
    own = step_spec(run, step.step_key).get("on_failure")
    return own == "escalate" or (own is None and spec.get("on_failure") == "escalate")


def _escalate(work: Work, run: Run, step: StepRun, message: str) -> None:
    """Instead of failing the run, the step waits for the workflow owner to decide."""
    step.status = StepStatus.WAITING
    step.waiting_for = WaitingFor.EXCEPTION
    step.save(update_fields=["status", "waiting_for"])
    work.event(
        run,
        EventKind.STEP_ESCALATED,
        step=step,
        from_status=StepStatus.FAILED,
        to_status=step.status,
        message=f"failed for good ({message}); the workflow owner decides: retry, skip or abort",
    )
    waiting.open_wait(
        work, run=run, step=step, spec=step_spec(run, step.step_key), context=template_context(run), kind=WaitingFor.EXCEPTION
    )


def _cancel_steps(steps: QuerySet[StepRun], *, reason: str, now: datetime | None = None) -> int:
    """Cancel the unfinished ones among `steps` (a run's, or a map's items) and end their
    attempts in flight; whatever their workers report later is refused. Returns how many.

    One statement per table whatever their number, chosen by the run or the map rather than by
    naming ids: 10,000 ids took 40 statements in batches (one statement naming them all
    exceeds SQLite's variable limit).
    """
    now = now or timezone.now()
    unfinished = steps.exclude(status__in=STEP_FINAL)
    # The attempts first, while their steps are still unfinished and so can be told apart.
    Attempt.objects.filter(step_run__in=unfinished.values("pk"), status=AttemptStatus.RUNNING).update(
        status=AttemptStatus.FAILED, finished_at=now, error_class=ErrorClass.CANCELLED, error=f"stopped: {reason}"
    )
    return unfinished.update(
        status=StepStatus.CANCELLED, finished_at=now, lease_expires_at=None, error_class=ErrorClass.CANCELLED
    )


def _cancel_children(work: Work, run: Run, step_ids: list[int], reason: str, actor: Any = None) -> None:
    if not step_ids:
        return
    for child in Run.objects.filter(parent_step_id__in=step_ids, status=RunStatus.RUNNING).select_for_update(no_key=True):
        fail_run(work, child, f"parent run {run.pk} stopped: {reason}", status=RunStatus.CANCELLED, actor=actor)


def fail_run(work: Work, run: Run, reason: str, *, status: str = RunStatus.FAILED, actor: Any = None) -> None:
    """Stop a run: cancel what has not finished, then undo what has (if it asks), then end."""
    stopped, items = _stop_open_steps(work, run, reason, actor=actor)
    if _start_compensations(work, run, reason, status, actor):
        return
    _end_run(work, run, status, reason, actor=actor, data={"cancelled_steps": stopped, "cancelled_items": items})


def _stop_open_steps(work: Work, run: Run, reason: str, *, actor: Any = None) -> tuple[int, int]:
    """Cancel the run's unfinished steps, their inbox items and child runs: (steps, of which items)."""
    now = timezone.now()
    steps = StepRun.objects.filter(run=run)
    heads = list(
        steps.filter(map_index__isnull=True)
        .exclude(status__in=STEP_FINAL)
        .values_list("pk", "status", "step_key", "iteration", "kind")
    )
    # Only waiting heads have inbox items; they and the waiting items of a map over a
    # sub-workflow have child runs.
    waited = [pk for pk, before, *_ in heads if before == StepStatus.WAITING]
    mapped = list(
        steps.filter(map_index__isnull=False, status=StepStatus.WAITING, kind=StepKind.WORKFLOW).values_list("pk", flat=True)
    )
    stopped = _cancel_steps(steps, reason=reason, now=now)
    # A map's items are counted on the run's event, not one event each.
    items = stopped - len(heads)
    for pk, before, key, iteration, kind in heads:
        head = StepRun(pk=pk, run_id=run.pk, step_key=key, iteration=iteration, kind=kind)
        work.event(
            run, EventKind.STEP_CANCELLED, step=head, from_status=before, to_status=StepStatus.CANCELLED, message=reason, actor=actor
        )
    waiting.close_waits(work, step_ids=waited, reason=reason)
    _cancel_children(work, run, waited + mapped, reason, actor)
    return stopped, items


def _end_run(work: Work, run: Run, status: str, reason: str, *, actor: Any = None, data: dict[str, Any] | None = None) -> None:
    before = run.status
    run.status = status
    run.error = reason
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "error", "finished_at"])
    kind = EventKind.RUN_CANCELLED if status == RunStatus.CANCELLED else EventKind.RUN_FAILED
    work.event(run, kind, from_status=before, to_status=status, message=reason, data=data or {}, actor=actor)
    if run.parent_step_id:
        work.child_runs_ended.append(run.pk)


def _start_compensations(work: Work, run: Run, reason: str, status: str, actor: Any) -> bool:
    """Saga: queue the compensations of completed steps, newest completion first.

    Returns False when there is nothing to undo (or the workflow does not undo on cancel).
    """
    spec = spec_for(run)
    if status == RunStatus.CANCELLED and spec.get("on_cancel") != "compensate":
        return False
    undoable = {s["key"]: s["compensate"] for s in spec["steps"] if s.get("compensate")}
    if not undoable:
        return False
    done = list(
        StepRun.objects.filter(
            run=run, map_index__isnull=True, status=StepStatus.SUCCEEDED, step_key__in=list(undoable)
        ).order_by("-finished_at", "-id")
    )
    if not done:
        return False
    context = template_context(run)
    rows = []
    for head in done:
        compensate = undoable[head.step_key]
        own = {**context, "step": {"output": head.output, "input": head.input, "iteration": head.iteration}}
        try:
            payload = render(compensate["input"], own) if "input" in compensate else head.output
            error = ""
        except TemplateError as exc:
            payload, error = None, f"the compensation's input {exc}"
        rows.append(
            StepRun(
                run=run,
                step_key=head.step_key + UNDO,
                iteration=head.iteration,
                kind=StepKind.COMPENSATION,
                agent_name=compensate["agent"],
                input=payload,
                error=error,
                status=StepStatus.PENDING,
            )
        )
    StepRun.objects.bulk_create(rows)
    before = run.status
    run.status = RunStatus.COMPENSATING
    run.error = reason
    run.ends_as = status
    run.save(update_fields=["status", "error", "ends_as"])
    work.event(
        run,
        EventKind.COMPENSATION_STARTED,
        from_status=before,
        to_status=run.status,
        message=f"{reason}; undoing {len(rows)} completed step(s), newest first",
        actor=actor,
    )
    next_compensation(work, run)
    return True


def next_compensation(work: Work, run: Run) -> None:
    """Queue the next compensation, or end the run when every one has finished."""
    pending = StepRun.objects.filter(run=run, kind=StepKind.COMPENSATION).exclude(status__in=STEP_FINAL)
    upcoming = pending.filter(status=StepStatus.PENDING).order_by("id").first()
    if pending.exclude(status=StepStatus.PENDING).exists():
        return  # one is still running or retrying
    if upcoming is not None:
        if upcoming.error:  # its input could not be rendered: it fails without running
            fail_step(work, run, upcoming, upcoming.error, ErrorClass.PERMANENT)
            return
        upcoming.status = StepStatus.QUEUED
        upcoming.queued_at = timezone.now()
        upcoming.save(update_fields=["status", "queued_at"])
        work.event(run, EventKind.STEP_QUEUED, step=upcoming, to_status=upcoming.status, message="compensation")
        _queue(work, run, [upcoming.pk])
        return
    outcomes = []
    for row in StepRun.objects.filter(run=run, kind=StepKind.COMPENSATION).order_by("id"):
        if row.status == StepStatus.SUCCEEDED:
            outcomes.append(f"{row.step_key} succeeded")
        else:
            outcomes.append(f"{row.step_key} FAILED ({row.error})")
    reason = f"{run.error.rstrip('.')}. Compensations: {'; '.join(outcomes)}."
    _end_run(work, run, run.ends_as or RunStatus.FAILED, reason)


def finish_run(work: Work, run: Run, current: dict[str, StepRun]) -> None:
    spec = spec_for(run)
    context = template_context(run)
    try:
        if spec.get("output") is not None:
            output = render(spec["output"], context)
        else:
            needed = {dep for s in spec["steps"] for dep in s["after"]}
            output = {
                s["key"]: current[s["key"]].output for s in spec["steps"] if s["key"] not in needed
            }
    except TemplateError as exc:
        fail_run(work, run, f"The workflow's `output` {exc}")
        return
    run.status = RunStatus.SUCCEEDED
    run.output = output
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "output", "finished_at"])
    work.event(run, EventKind.RUN_SUCCEEDED, from_status=RunStatus.RUNNING, to_status=run.status)
    if run.parent_step_id:
        work.child_runs_ended.append(run.pk)


def items_succeeded(work: Work, run: Run, parent_id: int, count: int) -> None:
    """`count` items of a map have succeeded: the map succeeds with them all, or the next
    held-back items start."""
    StepRun.objects.filter(pk=parent_id).update(items_done=F("items_done") + count)
    parent = StepRun.objects.get(pk=parent_id)
    if parent.status in STEP_FINAL:
        return
    if parent.items_done >= (parent.items_total or 0):
        parent.status = StepStatus.SUCCEEDED
        parent.output = collect_items(parent)
        parent.finished_at = timezone.now()
        parent.save(update_fields=["status", "output", "finished_at"])
        work.event(run, EventKind.STEP_SUCCEEDED, step=parent, from_status=StepStatus.RUNNING, to_status=parent.status, message=f"all {parent.items_total} items done")
        after_success(work, run, parent)
    else:
        release_next_items(work, run, parent, count)


def release_next_items(work: Work, run: Run, parent: StepRun, count: int = 1) -> None:
    """Queue held-back for_each items (`concurrency` slots came free), lowest index first."""
    step = step_spec(run, parent.step_key)
    if not step.get("concurrency"):
        return  # every item was queued at the start; none is held back
    if step["kind"] == StepKind.WORKFLOW:
        _start_child_items(work, run, step, parent, count)
        return
    ids = list(
        StepRun.objects.filter(parent=parent, status=StepStatus.PENDING)
        .order_by("map_index")
        .values_list("pk", "map_index")[:count]
    )
    if not ids:
        return
    StepRun.objects.filter(pk__in=[pk for pk, _ in ids], status=StepStatus.PENDING).update(
        status=StepStatus.QUEUED, queued_at=timezone.now()
    )
    for pk, index in ids:
        work.event(
            run,
            EventKind.STEP_QUEUED,
            step=StepRun(pk=pk, run_id=run.pk, parent_id=parent.pk),
            from_status=StepStatus.PENDING,
            to_status=StepStatus.QUEUED,
            message=f"item {index}: a `concurrency` slot came free",
        )
    _queue(work, run, [pk for pk, _ in ids])


def collect_items(parent: StepRun) -> list[Any]:
    return list(parent.items.order_by("map_index").values_list("output", flat=True))



def retry_escalated(work: Work, run: Run, step: StepRun, *, input: Any, why: str, actor: Any) -> None:
    """Run an escalated step again (the owner's retry), with the given input."""
    run_step_again(work, run, step, input=input, why=why, actor=actor, from_status=StepStatus.WAITING)


def run_step_again(
    work: Work, run: Run, step: StepRun, *, input: Any, why: str, actor: Any, from_status: str
) -> None:
    """Give a step that failed (escalated, or failed with its run) new attempts, with `input`.

    A sub-workflow step starts a new child run; a map runs again only its failed (and
    cancelled) items, keeping the outputs of the others; an agent step goes back to its own
    agent, and back to its gate when the action needs approval of an input nobody approved.
    Attempts before the retry stay as history (attempts_base): the retry policy counts anew.
    """
    spec = step_spec(run, step.step_key)
    step.waiting_for = ""
    step.error = ""
    step.error_class = ""
    step.finished_at = None
    step.input = input

    def retried(to_status: str, message: str = why) -> None:
        work.event(run, EventKind.STEP_QUEUED, step=step, from_status=from_status, to_status=to_status, message=message, actor=actor)

    if step.kind == StepKind.WORKFLOW and step.items_total:
        _map_children_again(work, run, spec, step, why=why, actor=actor, retried=retried)
        return
    if step.kind == StepKind.WORKFLOW:
        retried(StepStatus.WAITING)
        step.save()
        restart_child(work, run, spec, step)
        return
    if step.items_total:
        again = list(
            StepRun.objects.filter(parent=step, status__in=[StepStatus.FAILED, StepStatus.CANCELLED]).values_list(
                "pk", "status", "map_index"
            )
        )
        # Held back by `concurrency` like the first time: they wait as pending for a slot.
        slots = spec.get("concurrency")
        StepRun.objects.filter(pk__in=[pk for pk, _, _ in again]).update(
            status=StepStatus.PENDING if slots else StepStatus.QUEUED,
            queued_at=None if slots else timezone.now(),
            finished_at=None,
            error="",
            error_class="",
            claim_token="",
            attempts_base=F("attempts"),
        )
        step.status = StepStatus.RUNNING
        step.save()
        retried(step.status, f"{why}: its {len(again)} failed item(s) run again")
        if slots:
            running = StepRun.objects.filter(parent=step).exclude(status__in=STEP_FINAL).exclude(status=StepStatus.PENDING).count()
            release_next_items(work, run, step, max(slots - running, 0))
            return
        for pk, before, index in again:
            item = StepRun(pk=pk, run_id=run.pk, parent_id=step.pk)
            work.event(
                run, EventKind.STEP_QUEUED, step=item, from_status=before, to_status=StepStatus.QUEUED, message=f"item {index}: {why}", actor=actor
            )
        work.send.extend(pk for pk, _, _ in again)
        return
    # Back to the agent the step chose (not a fallback that took over).
    step.agent_name = step.fallback_from or step.agent_name if chosen_at_run_time(spec["agent"]) else spec["agent"]
    step.fallback_from = ""
    step.attempts_base = step.attempts
    step.claim_token = ""
    if needs_gate(spec, step.agent_name) and not guards.gate_covers(step, step.input):
        # A gated or high-risk action runs only with an approval of its exact input: an
        # edited input (or one never approved) goes back to the gate, which shows it.
        retried(StepStatus.WAITING)
        gate_again(work, run, spec, step)
        return
    step.status = StepStatus.QUEUED
    step.queued_at = timezone.now()
    step.save()
    retried(step.status)
    work.send.append(step.pk)


def _map_children_again(
    work: Work, run: Run, spec: dict[str, Any], step: StepRun, *, why: str, actor: Any, retried: Any
) -> None:
    """A map over a sub-workflow runs its failed and cancelled items again: each resumes its
    child run from its failure when it can (its succeeded steps keep their outputs), or starts
    a new one; the items that succeeded keep their outputs."""
    step.status = StepStatus.RUNNING
    step.save()
    again = list(StepRun.objects.filter(parent=step, status__in=[StepStatus.FAILED, StepStatus.CANCELLED]).order_by("map_index"))
    retried(step.status, f"{why}: its {len(again)} failed item(s) run again")
    done = 0
    for item in again:
        child = Run.objects.filter(parent_step=item).order_by("-id").only("status", "output").first()
        if child is not None and child.status == RunStatus.SUCCEEDED:
            # Its child finished after the map had failed and cancelled the item: the item
            # takes the child's output rather than doing the work again.
            StepRun.objects.filter(pk=item.pk).update(
                status=StepStatus.SUCCEEDED, output=child.output, error="", error_class="", finished_at=timezone.now()
            )
            work.event(
                run, EventKind.STEP_SUCCEEDED, step=item, from_status=item.status, to_status=StepStatus.SUCCEEDED,
                message=f"item {item.map_index}: sub-workflow run {child.pk} had succeeded", actor=actor,
            )
            done += 1
            continue
        if _resume_child(work, run, item, why=f"{why}: item {item.map_index}", actor=actor):
            continue
        before = item.status
        StepRun.objects.filter(pk=item.pk).update(
            status=StepStatus.PENDING, finished_at=None, error="", error_class="", waiting_for=""
        )
        work.event(
            run, EventKind.STEP_QUEUED, step=item, from_status=before, to_status=StepStatus.PENDING,
            message=f"item {item.map_index}: {why}", actor=actor,
        )
    if done:
        items_succeeded(work, run, step.pk, done)
        if run.status != RunStatus.RUNNING or not StepRun.objects.filter(pk=step.pk, status=StepStatus.RUNNING).exists():
            return  # that was the last item: the map has succeeded
    slots = spec.get("concurrency") or step.items_total or 0
    running = StepRun.objects.filter(parent=step, status=StepStatus.WAITING).count()
    _start_child_items(work, run, spec, step, max(slots - running, 0))


class CannotRetry(Exception):
    """The run cannot resume from its failure; the message says why (nothing was written)."""


def retry_from_failure(
    work: Work, run: Run, *, inputs: dict[str, Any], why: str, actor: Any, as_child: bool = False
) -> list[str]:
    """Resume a failed or cancelled run from where it stopped; returns the keys run again.

    Succeeded steps keep their outputs. A step that failed after it had run (an agent that
    was called, a map, a sub-workflow) gets new attempts with its stored input, or the edited
    one in `inputs` (step key -> input), and so does one cancelled while it ran; a step that
    failed before it ran (a bad template) and the steps cancelled before they ran start
    afresh, as the engine starts any step; steps after them, never started, follow as usual.
    Loops resume in the round they stopped in.

    A failed sub-workflow step resumes its child run the same way (its succeeded steps keep
    their outputs too, and the child stays the one record of that work); with edited input,
    or when the child cannot resume (its work was undone), it starts a new child run.
    `as_child`: this run is such a child, resumed by its parent's retry under the parent's lock.
    """
    if StepRun.objects.filter(run=run, kind=StepKind.COMPENSATION).exists():
        raise CannotRetry(
            f"run {run.pk} has undone its completed steps (compensations ran): resuming it would "
            "act on undone work; rerun it instead"
        )
    if run.parent_step_id and not as_child:
        parent_run = StepRun.objects.only("run_id").get(pk=run.parent_step_id).run_id
        raise CannotRetry(f"run {run.pk} is a sub-workflow run of run {parent_run}: retry run {parent_run}")
    heads = reads.latest_heads(StepRun.objects.filter(run=run, map_index__isnull=True).exclude(kind=StepKind.COMPENSATION))
    stopped = {key: head for key, head in heads.items() if head.status in (StepStatus.FAILED, StepStatus.CANCELLED)}
    again = {key: head for key, head in stopped.items() if _ran(head)}
    for key in inputs:
        if key not in again or again[key].items_total:
            raise CannotRetry(f"step '{key}': only the input of a failed agent or sub-workflow step can be edited")
    before = run.status
    run.status = RunStatus.RUNNING
    run.error = ""
    run.ends_as = ""
    run.finished_at = None
    run.save(update_fields=["status", "error", "ends_as", "finished_at"])
    work.event(
        run,
        EventKind.RUN_RETRIED,
        from_status=before,
        to_status=run.status,
        message=why,
        actor=actor,
        data={"steps": sorted(stopped), "edited_input": sorted(inputs)},
    )
    for key, head in stopped.items():
        if key in again:
            continue
        # Starts afresh below: advance renders its input and starts it as the first time.
        before = head.status
        StepRun.objects.filter(pk=head.pk).update(
            status=StepStatus.PENDING,
            error="",
            error_class="",
            finished_at=None,
            started_at=None,
            queued_at=None,
            waiting_for="",
            wake_at=None,
            claim_token="",
            fallback_from="",
            attempts_base=F("attempts"),
        )
        work.event(run, EventKind.STEP_QUEUED, step=head, from_status=before, to_status=StepStatus.PENDING, message=why, actor=actor)
    for key, head in again.items():
        step = StepRun.objects.get(pk=head.pk)
        edited = key in inputs
        if step.kind == StepKind.WORKFLOW and not edited and _resume_child(work, run, step, why=why, actor=actor):
            continue
        run_step_again(
            work,
            run,
            step,
            input=inputs[key] if edited else step.input,
            why=f"{why} with edited input" if edited else why,
            actor=actor,
            from_status=head.status,
        )
        if run.status != RunStatus.RUNNING:
            return sorted(stopped)  # it failed again at once (a sub-workflow gone)
    advance(work, run)
    return sorted(stopped)


def _resume_child(work: Work, run: Run, step: StepRun, *, why: str, actor: Any) -> bool:
    """Resume a failed sub-workflow step's latest child run from its failure; False if it cannot."""
    child = Run.objects.filter(parent_step=step).order_by("-id").select_for_update(no_key=True).first()
    if child is None or child.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
        return False
    if StepRun.objects.filter(run=child, kind=StepKind.COMPENSATION).exists():
        return False
    before = step.status
    step.status = StepStatus.WAITING
    step.waiting_for = WaitingFor.WORKFLOW
    step.error = ""
    step.error_class = ""
    step.finished_at = None
    step.save(update_fields=["status", "waiting_for", "error", "error_class", "finished_at"])
    work.event(
        run, EventKind.STEP_WAITING, step=step, from_status=before, to_status=step.status,
        message=f"{why}: sub-workflow run {child.pk} resumes from its failure", actor=actor,
    )
    retry_from_failure(work, child, inputs={}, why=f"{why} (parent run {run.pk})", actor=actor, as_child=True)
    return True


def _ran(head: StepRun) -> bool:
    """Whether a stopped step had started its work, so that a retry repeats that work with its
    input (a map: only its unfinished items) instead of starting the step afresh."""
    if head.kind == StepKind.WORKFLOW:
        return bool(head.items_total) or head.child_runs.exists()
    return head.kind == StepKind.AGENT and (head.attempts > 0 or bool(head.items_total))


# ---------------------------------------------------------------------------------------------
# After a failed attempt, and steps the guards would not let run


def after_failure(
    work: Work,
    run: Run,
    step: StepRun,
    *,
    error_class: str,
    message: str,
    retry_after: float | None,
    now: datetime,
) -> None:
    """A failed attempt of a claimed step (already recorded): retry it later by its policy,
    hand it to a fallback agent, or fail it for good.

    A server's Retry-After (retry_after seconds) is honoured: the next attempt waits at
    least that long, whatever the backoff says.
    """
    agent = load_agent(step.agent_name)
    policy = retry_policy(agent.retry if agent else None, step_spec(run, step.step_key))
    tried = guards.attempts_with_current_agent(step)
    if error_class == ErrorClass.PERMANENT or tried >= policy["attempts"]:
        tries = f" after {tried} attempts" if tried > 1 else ""
        fallback = guards.fallback_for(run, step, agent)
        if fallback is not None:
            _switch_to_fallback(work, run, step, fallback, f"{message}{tries}")
            return
        fail_step(work, run, step, f"{message}{tries}", error_class)
        return
    delay = max(backoff_seconds(policy, step.attempts), retry_after or 0.0)
    step.status = StepStatus.RETRYING
    step.next_attempt_at = now + timedelta(seconds=delay)
    step.error = message
    step.error_class = error_class
    step.lease_expires_at = None
    step.save(update_fields=["status", "next_attempt_at", "error", "error_class", "lease_expires_at"])
    work.event(
        run,
        EventKind.STEP_RETRYING,
        step=step,
        from_status=StepStatus.RUNNING,
        to_status=step.status,
        message=f"{error_class}: {message}; attempt {step.attempts + 1} in {delay:.1f}s",
        data={"next_attempt_at": step.next_attempt_at.isoformat(), "delay": delay},
    )


def backoff_seconds(policy: dict[str, Any], attempts_so_far: int) -> float:
    """Exponential backoff capped at max_backoff; with jitter, "full jitter" (0..cap)."""
    ceiling: float = min(float(policy["max_backoff"]), float(policy["backoff"]) * 2 ** (attempts_so_far - 1))
    if policy.get("jitter"):
        return random.uniform(0, ceiling)
    return ceiling


def _switch_to_fallback(work: Work, run: Run, step: StepRun, fallback: str, why: str) -> None:
    failed_agent = step.agent_name
    step.fallback_from = step.fallback_from or failed_agent
    step.agent_name = fallback
    step.status = StepStatus.QUEUED
    step.queued_at = timezone.now()
    step.error = why
    step.lease_expires_at = None
    step.claim_token = ""
    step.save(update_fields=["fallback_from", "agent_name", "status", "queued_at", "error", "lease_expires_at", "claim_token"])
    work.event(
        run,
        EventKind.STEP_FALLBACK,
        step=step,
        from_status=StepStatus.RUNNING,
        to_status=StepStatus.QUEUED,
        message=f"agent {failed_agent} failed for good ({why}); fallback agent {fallback} takes over",
        data={"from": failed_agent, "to": fallback},
    )
    work.send.append(step.pk)


def divert(work: Work, refused: guards.Refused) -> None:
    """A claimed step whose agent's circuit is open: its fallback takes over, or it retries
    once the circuit may let it through. Either way the claim is undone (it never ran)."""
    step, agent, reason, until = refused.step, refused.agent, refused.reason, refused.until
    fallback = guards.fallback_for(step.run, step, agent)
    if fallback is not None:
        if guards.put_back(
            step,
            status=StepStatus.QUEUED,
            agent_name=fallback,
            fallback_from=step.fallback_from or step.agent_name,
            queued_at=timezone.now(),
            error=reason,
            error_class=ErrorClass.CIRCUIT_OPEN,
        ):
            work.event(
                step.run,
                EventKind.STEP_FALLBACK,
                step=step,
                from_status=StepStatus.RUNNING,
                to_status=StepStatus.QUEUED,
                message=f"{reason}: fallback agent {fallback} takes over",
                data={"from": agent.name, "to": fallback},
            )
            work.send.append(step.pk)
        return
    if guards.put_back(
        step,
        status=StepStatus.RETRYING,
        next_attempt_at=until,
        error=reason,
        error_class=ErrorClass.CIRCUIT_OPEN,
    ):
        work.event(
            step.run,
            EventKind.STEP_RETRYING,
            step=step,
            from_status=StepStatus.RUNNING,
            to_status=StepStatus.RETRYING,
            message=f"{reason}; no fallback, waiting until {until:%H:%M:%S}",
            data={"next_attempt_at": until.isoformat(), "delay": max(0.0, (until - timezone.now()).total_seconds())},
        )


def release_throttled(work: Work, agent: Agent) -> int:
    """Queue throttled steps of the agent for the slots now free, first come first served.

    They belong to any run, so they always go through the broker (never to the worker whose
    step freed the slot: that worker continues with its own run)."""
    free = guards.free_slots(agent)
    if free <= 0:
        return 0
    rows = list(
        StepRun.objects.filter(agent_name=agent.name, status=StepStatus.THROTTLED)
        .select_related("run")
        .order_by("queued_at", "id")[:free]
    )
    if not rows:
        return 0
    now = timezone.now()
    StepRun.objects.filter(pk__in=[row.pk for row in rows], status=StepStatus.THROTTLED).update(
        status=StepStatus.QUEUED, queued_at=now
    )
    for row in rows:
        work.event(
            row.run,
            EventKind.STEP_QUEUED,
            step=row,
            from_status=StepStatus.THROTTLED,
            to_status=StepStatus.QUEUED,
            message=f"a slot of agent {agent.name} came free",
        )
    work.send.extend(row.pk for row in rows)
    return len(rows)
