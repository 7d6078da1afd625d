"""The orchestration patterns and engine rules, driven in-process with the real step executor."""

from __future__ import annotations

from typing import Any

import pytest
import time_machine
from django.utils import timezone

from orchestration import transitions
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.status import ErrorClass, EventKind, RunStatus, StepStatus
from orchestration.tasks import execute_step
from orchestration.ticker import tick
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: noop, kind: python, config: {callable: "tests.agents.basic:noop"}}
  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}}
  - {name: flaky, kind: python, config: {callable: "tests.agents.basic:flaky"}, retry: {attempts: 4, backoff: 2s, max_backoff: 1m, jitter: false}}
  - {name: editor, kind: python, config: {callable: "tests.agents.basic:editor"}}
  - {name: context, kind: python, config: {callable: "tests.agents.basic:describe_context"}}
  - {name: counter, kind: python, config: {callable: "tests.agents.basic:count_words"}}
  - {name: not-json, kind: python, config: {callable: "tests.agents.basic:not_json"}}
  - {name: unstorable, kind: python, config: {callable: "tests.agents.basic:unstorable"}}
"""


def flow(steps: str, *, key: str = "wf", extra: str = "") -> None:
    load_workflow(AGENTS + f"workflow:\n  key: {key}\n  name: {key}\n{extra}\n  steps:\n{steps}\n")


def head(run: Run, key: str, iteration: int | None = None) -> StepRun:
    rows = StepRun.objects.filter(run=run, step_key=key, map_index__isnull=True)
    if iteration is not None:
        return rows.get(iteration=iteration)
    return rows.order_by("-iteration").first()  # type: ignore[return-value]


# --- sequential --------------------------------------------------------------------------------


def test_a_sequential_workflow_passes_each_output_to_the_next_step() -> None:
    flow(
        "    - {key: research, agent: echo, input: {topic: '{{ input.topic }}'}}\n"
        "    - {key: write, agent: echo, after: [research], input: {brief: '{{ steps.research.output.topic }} brief'}}\n"
        "    - {key: edit, agent: echo, after: [write], input: '{{ steps.write.output }}'}",
        extra="  inputs: {topic: {type: string, required: true}}",
    )
    run = drive(transitions.start_run(workflow="wf", input={"topic": "tides"}))
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "edit").output == {"brief": "tides brief"}
    assert run.output == {"edit": {"brief": "tides brief"}}


def test_a_single_expression_keeps_its_type() -> None:
    flow(
        "    - {key: a, agent: echo, input: {n: '{{ input.words }}', tags: '{{ input.tags }}', text: 'n={{ input.words }}'}}",
        extra="  inputs: {words: {type: integer, default: 800}, tags: {type: list, default: [x, y]}}",
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert head(run, "a").output == {"n": 800, "tags": ["x", "y"], "text": "n=800"}


def test_a_step_without_input_gets_the_outputs_of_the_steps_it_comes_after() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, input: 2}\n    - {key: c, agent: echo, after: [a, b]}")
    run = drive(transitions.start_run(workflow="wf"))
    assert head(run, "c").output == {"a": 1, "b": 2}


def test_the_workflow_output_template_shapes_the_run_output() -> None:
    flow("    - {key: a, agent: echo, input: {x: 5}}", extra="  output: '{{ steps.a.output.x * 2 }}'")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.output == 10


# --- parallel ----------------------------------------------------------------------------------


def test_independent_steps_are_queued_together_and_joined_once_both_finish(settings: Any) -> None:
    settings.BATON_CONTINUE_SECONDS = 0  # step one worker task at a time
    flow(
        "    - {key: sales, agent: echo, input: 3}\n"
        "    - {key: support, agent: echo, input: 4}\n"
        "    - {key: report, agent: echo, after: [sales, support], input: '{{ steps.sales.output + steps.support.output }}'}"
    )
    run = transitions.start_run(workflow="wf")
    assert {s.step_key for s in run.steps.filter(status=StepStatus.QUEUED)} == {"sales", "support"}
    execute_step(head(run, "sales").pk)
    assert not StepRun.objects.filter(run=run, step_key="report").exists()
    execute_step(head(run, "support").pk)
    assert head(run, "report").status == StepStatus.QUEUED
    run = drive(run)
    assert head(run, "report").output == 7


# --- conditional branches ----------------------------------------------------------------------


def test_a_false_when_skips_the_step_and_a_step_after_only_skipped_steps_is_skipped_too() -> None:
    flow(
        "    - {key: route, agent: echo, input: {queue: '{{ input.queue }}'}}\n"
        "    - {key: billing, agent: echo, after: [route], when: \"steps.route.output.queue == 'billing'\"}\n"
        "    - {key: tech, agent: echo, after: [route], when: \"steps.route.output.queue == 'tech'\"}\n"
        "    - {key: invoice, agent: echo, after: [billing]}\n"
        "    - {key: close, agent: echo, after: [billing, tech], input: done}",
        extra="  inputs: {queue: {type: string, default: tech}}",
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "billing").status == StepStatus.SKIPPED
    assert head(run, "invoice").status == StepStatus.SKIPPED
    assert head(run, "tech").status == StepStatus.SUCCEEDED
    assert head(run, "close").status == StepStatus.SUCCEEDED
    assert RunEvent.objects.filter(run=run, kind=EventKind.STEP_SKIPPED, message__contains="`when` was false").count() == 1


# --- dynamic map -------------------------------------------------------------------------------


def test_for_each_gives_the_item_outputs_in_item_order() -> None:
    flow(
        "    - {key: translate, agent: echo, for_each: input.langs, input: {lang: '{{ item }}', i: '{{ index }}'}}",
        extra="  inputs: {langs: {type: list, default: [en, fr, de]}}",
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert head(run, "translate").output == [{"lang": "en", "i": 0}, {"lang": "fr", "i": 1}, {"lang": "de", "i": 2}]


def test_for_each_over_an_empty_list_gives_an_empty_list() -> None:
    flow("    - {key: t, agent: echo, for_each: input.langs}\n    - {key: after, agent: echo, after: [t]}", extra="  inputs: {langs: {type: list, default: []}}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "t").output == []
    assert head(run, "after").output == {"t": []}


def test_for_each_concurrency_holds_back_items_until_a_slot_frees(settings: Any) -> None:
    settings.BATON_CONTINUE_SECONDS = 0  # step one worker task at a time
    flow("    - {key: t, agent: echo, for_each: input.items, concurrency: 2}", extra="  inputs: {items: {type: list, default: [1, 2, 3, 4, 5]}}")
    run = transitions.start_run(workflow="wf")
    items = StepRun.objects.filter(run=run, map_index__isnull=False)
    assert items.filter(status=StepStatus.QUEUED).count() == 2
    assert items.filter(status=StepStatus.PENDING).count() == 3
    execute_step(items.get(map_index=0).pk)
    assert items.filter(status=StepStatus.QUEUED).count() == 2
    assert items.get(map_index=2).status == StepStatus.QUEUED
    run = drive(run)
    assert head(run, "t").output == [1, 2, 3, 4, 5]


def test_for_each_over_something_that_is_not_a_list_fails_the_step_with_a_reason() -> None:
    flow("    - {key: t, agent: echo, for_each: input.items}", extra="  inputs: {items: {type: object, default: {a: 1}}}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "`for_each` must give a list, got dict" in run.error


def test_a_failing_item_fails_the_map_and_the_run() -> None:
    flow("    - {key: t, agent: refuse, for_each: input.items}", extra="  inputs: {items: {type: list, default: [1, 2]}}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "item 0 failed" in run.error or "item 1 failed" in run.error


def test_an_item_that_fails_for_good_cancels_the_other_items_even_when_the_step_is_escalated(tmp_path: Any) -> None:
    log = tmp_path / "calls.log"
    load_workflow(
        AGENTS
        + "  - {name: counted, kind: python, config: {callable: 'tests.agents.counting:counted'}, retry: {attempts: 1}}\n"
        + "workflow:\n  key: wf\n  name: wf\n  on_failure: escalate\n  steps:\n"
        + f"    - {{key: m, agent: counted, for_each: '[1, 2, 3]', input: {{log: '{log}', fail_first: true, seconds: 0}}}}\n"
    )
    run = transitions.start_run(workflow="wf")
    first, *others = StepRun.objects.filter(run=run, map_index__isnull=False).order_by("map_index")
    execute_step(first.pk)
    assert head(run, "m").waiting_for == "exception"
    assert set(StepRun.objects.filter(pk__in=[o.pk for o in others]).values_list("status", flat=True)) == {StepStatus.CANCELLED}
    for other in others:
        execute_step(other.pk)  # their messages arrive late: nothing runs
    from tests.agents.counting import calls

    assert [index for index, _ in calls(str(log))] == [0]


# --- bounded loops -----------------------------------------------------------------------------


LOOP = (
    "    - {key: write, agent: echo, input: {round: '{{ iteration }}', feedback: '{{ steps.edit.output.round if steps.edit is defined else none }}'}}\n"
    "    - key: edit\n"
    "      agent: editor\n"
    "      after: [write]\n"
    "      input: {approve_on: '{{ input.approve_on }}'}\n"
    "      loop: {back_to: write, until: steps.edit.output.ok, max_iterations: 3, on_exhausted: %s}\n"
    "    - {key: publish, agent: echo, after: [edit], input: '{{ steps.write.output }}'}"
)


def test_a_loop_sends_work_back_until_the_condition_holds_and_keeps_every_round() -> None:
    flow(LOOP % "fail", extra="  inputs: {approve_on: {type: integer, default: 2}}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert list(StepRun.objects.filter(run=run, step_key="write").values_list("iteration", flat=True)) == [1, 2]
    assert head(run, "write", 2).output == {"round": 2, "feedback": 1}
    assert head(run, "publish").output == {"round": 2, "feedback": 1}
    assert RunEvent.objects.filter(run=run, kind=EventKind.STEP_LOOPED).count() == 1


def test_an_exhausted_loop_fails_the_run_when_asked_to() -> None:
    flow(LOOP % "fail", extra="  inputs: {approve_on: {type: integer, default: 9}}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert StepRun.objects.filter(run=run, step_key="edit").count() == 3
    assert "ran 3 times" in run.error


def test_an_exhausted_loop_carries_on_when_asked_to() -> None:
    flow(LOOP % "continue", extra="  inputs: {approve_on: {type: integer, default: 9}}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "publish").output["round"] == 3


THREE_ROUNDS = (
    "    - {key: write, agent: echo, input: {round: '{{ iteration }}'}}\n"
    "    - key: edit\n"
    "      agent: editor\n"
    "      after: [write]\n"
    "      input: {approve_on: 3}\n"
    "      loop: {back_to: write, until: steps.edit.output.ok, max_iterations: 3}\n"
)


def test_a_step_outside_a_loop_after_a_body_step_waits_for_the_loop_and_sees_its_final_round() -> None:
    flow(THREE_ROUNDS + "    - {key: tweet, agent: echo, after: [write]}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    tweet = head(run, "tweet")
    assert tweet.input == {"write": {"round": 3}}
    assert StepRun.objects.filter(run=run, step_key="tweet").count() == 1
    assert tweet.queued_at >= head(run, "edit", 3).finished_at


def test_a_step_after_a_body_step_and_a_slower_step_sees_the_final_round_whenever_the_slower_one_ends(
    settings: Any,
) -> None:
    settings.BATON_CONTINUE_SECONDS = 0  # one step per task, so the test decides the order
    flow(
        THREE_ROUNDS
        + "    - {key: slow, wait: {event: go}}\n"
        + "    - {key: tweet, agent: echo, after: [write, slow], input: '{{ steps.write.output }}'}"
    )
    run = transitions.start_run(workflow="wf")
    execute_step(head(run, "write", 1).pk)  # round 1 of the body has written ...
    assert transitions.signal_event(run_id=run.pk, event_name="go") == 1  # ... when the slower step ends
    assert head(run, "tweet") is None, "the loop is still going: it has not started"
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "tweet").output == {"round": 3}


# --- sub-workflows -----------------------------------------------------------------------------


def test_a_sub_workflow_step_takes_the_child_runs_output() -> None:
    flow("    - {key: w, agent: echo, input: {part: '{{ input.part }}'}}", key="worker", extra="  inputs: {part: {type: string, required: true}}\n  output: '{{ steps.w.output.part }} done'")
    flow("    - {key: a, workflow: worker, input: {part: intro}}\n    - {key: b, workflow: worker, input: {part: outro}}\n    - {key: join, agent: echo, after: [a, b]}", key="manager")
    run = drive(transitions.start_run(workflow="manager"))
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "join").output == {"a": "intro done", "b": "outro done"}
    children = Run.objects.filter(parent_step__run=run)
    assert children.count() == 2 and all(c.status == RunStatus.SUCCEEDED for c in children)


def test_a_failing_child_run_fails_the_parent_step() -> None:
    flow("    - {key: w, agent: refuse}", key="worker")
    flow("    - {key: a, workflow: worker}", key="manager")
    run = drive(transitions.start_run(workflow="manager"))
    assert run.status == RunStatus.FAILED
    assert "sub-workflow run" in run.error and "failed" in run.error


# --- failures and retries ----------------------------------------------------------------------


def test_a_permanent_error_fails_the_run_at_once_and_cancels_what_has_not_started() -> None:
    flow("    - {key: a, agent: refuse}\n    - {key: b, agent: echo, input: 1}\n    - {key: c, agent: echo, after: [a]}")
    run = transitions.start_run(workflow="wf")
    execute_step(head(run, "a").pk)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == "Step 'a' (agent refuse) failed: PermanentError: the input is not acceptable"
    assert head(run, "a").attempts == 1
    assert head(run, "b").status == StepStatus.CANCELLED
    assert not StepRun.objects.filter(run=run, step_key="c").exists()


def test_a_transient_error_is_retried_with_growing_delays_until_it_succeeds() -> None:
    flow("    - {key: a, agent: flaky, input: {succeed_on: 3}}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = transitions.start_run(workflow="wf")
        execute_step(head(run, "a").pk)
        first = head(run, "a")
        assert first.status == StepStatus.RETRYING
        assert (first.next_attempt_at - timezone.now()).total_seconds() == pytest.approx(2)
        assert tick().retried == 0, "a retry is not queued before its time"
        run = drive(run, clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    step = head(run, "a")
    assert step.attempts == 3 and step.output == {"attempt": 3}
    delays = [e.data["delay"] for e in RunEvent.objects.filter(run=run, kind=EventKind.STEP_RETRYING).order_by("id")]
    assert delays == [2.0, 4.0]
    attempts = Attempt.objects.filter(step_run=step).order_by("number")
    assert [a.status for a in attempts] == ["failed", "failed", "succeeded"]
    assert attempts[0].error_class == ErrorClass.TRANSIENT and "temporary outage" in attempts[0].error


def test_a_step_that_keeps_failing_fails_after_its_last_attempt() -> None:
    flow("    - {key: a, agent: flaky, input: {succeed_on: 99}, retry: {attempts: 2, backoff: 1s, jitter: false}}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.FAILED
    assert run.error.endswith("after 2 attempts")
    assert head(run, "a").attempts == 2


def test_an_output_that_is_not_json_fails_the_step_permanently() -> None:
    flow("    - {key: a, agent: not-json}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "not JSON-serialisable" in run.error


@pytest.mark.parametrize("kind", ["nul", "surrogate", "nan"])
def test_an_output_the_database_cannot_store_fails_the_step_once_and_keeps_the_step_before(kind: str) -> None:
    flow(f"    - {{key: a, agent: echo, input: {kind}}}\n    - {{key: b, agent: unstorable, after: [a], input: '{{{{ steps.a.output }}}}'}}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "the agent's output" in run.error
    assert (head(run, "a").status, head(run, "a").attempts) == (StepStatus.SUCCEEDED, 1)
    assert (head(run, "b").status, head(run, "b").attempts) == (StepStatus.FAILED, 1)


def test_agent_results_carry_usage_onto_the_step_and_the_attempt() -> None:
    flow("    - {key: a, agent: counter, input: three small words}")
    run = drive(transitions.start_run(workflow="wf"))
    step = head(run, "a")
    assert step.output == {"words": 3}
    assert step.usage == {"prompt_tokens": 3, "completion_tokens": 1}
    assert step.attempt_rows.get().usage == {"prompt_tokens": 3, "completion_tokens": 1}


def test_the_agent_context_has_a_stable_idempotency_key() -> None:
    flow("    - {key: m, agent: context, for_each: input.items}", extra="  inputs: {items: {type: list, default: [a, b]}}")
    run = drive(transitions.start_run(workflow="wf"))
    second = head(run, "m").output[1]
    assert second["item"] == "b" and second["index"] == 1 and second["attempt"] == 1
    assert second["idempotency_key"] == f"baton-{run.pk}-m-1-1"


# --- delivery: duplicates, late results, cancellation ------------------------------------------


def test_a_duplicate_delivery_of_a_finished_step_changes_nothing() -> None:
    flow("    - {key: a, agent: echo, input: 1}")
    run = transitions.start_run(workflow="wf")
    step_id = head(run, "a").pk
    execute_step(step_id)
    execute_step(step_id)
    assert head(run, "a").attempts == 1
    assert RunEvent.objects.filter(run=run, kind=EventKind.STEP_SUCCEEDED).count() == 1


def test_a_late_result_from_a_worker_whose_lease_expired_is_refused() -> None:
    flow("    - {key: a, agent: echo, input: 1}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = transitions.start_run(workflow="wf")
        step_id = head(run, "a").pk
        stale = transitions.claim_step(step_run_id=step_id, worker="old-worker")
        assert stale is not None
        clock.shift(60)  # the old worker stops heartbeating; its lease runs out
        assert tick().lost == 1
        clock.shift(60)
        tick()  # the retry is due: queued again
        fresh = transitions.claim_step(step_run_id=step_id, worker="new-worker")
        assert fresh is not None and fresh.attempt == 2
        assert transitions.record_success(claim=fresh, output="fresh")
        assert not transitions.record_success(claim=stale, output="stale")
    step = head(run, "a")
    assert step.output == "fresh"
    assert step.attempt_rows.get(number=1).error_class == ErrorClass.LOST


def test_cancelling_a_run_cancels_its_steps_and_refuses_their_late_results() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, input: 2}")
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w")
    assert claim is not None
    transitions.cancel_run(run_id=run.pk, reason="not needed")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.error == "not needed"
    assert {s.status for s in run.steps.all()} == {StepStatus.CANCELLED}
    assert not transitions.record_success(claim=claim, output="late")
    with pytest.raises(transitions.InvalidTransition, match="already cancelled"):
        transitions.cancel_run(run_id=run.pk)


def test_cancelling_a_parent_cancels_its_child_runs() -> None:
    flow("    - {key: w, agent: echo, input: 1}", key="worker")
    flow("    - {key: a, workflow: worker}", key="manager")
    run = transitions.start_run(workflow="manager")
    transitions.cancel_run(run_id=run.pk)
    child = Run.objects.get(parent_step__run=run)
    assert child.status == RunStatus.CANCELLED


# --- waiting -----------------------------------------------------------------------------------


def test_a_wait_step_holds_no_worker_and_an_event_resumes_it() -> None:
    flow("    - {key: paid, wait: {event: payment.received}}\n    - {key: ship, agent: echo, after: [paid], input: '{{ steps.paid.output.amount }}'}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.RUNNING
    assert head(run, "paid").status == StepStatus.WAITING
    assert not StepRun.objects.filter(run=run, status__in=[StepStatus.QUEUED, StepStatus.RUNNING]).exists()
    assert transitions.signal_event(run_id=run.pk, event_name="payment.other") == 0
    assert transitions.signal_event(run_id=run.pk, event_name="payment.received", payload={"amount": 12}) == 1
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "ship").output == 12


def test_a_timed_wait_wakes_after_its_duration() -> None:
    flow("    - {key: cool_off, wait: {for: 1w}}\n    - {key: follow_up, agent: echo, after: [cool_off], input: 1}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"))
        assert head(run, "cool_off").status == StepStatus.WAITING
        clock.shift(7 * 86400 + 1)
        run = drive(run)
    assert run.status == RunStatus.SUCCEEDED


def test_an_event_that_does_not_arrive_in_time_fails_the_step() -> None:
    flow("    - {key: paid, wait: {event: paid, timeout: 1h}}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"))
        clock.shift(3601)
        run = drive(run)
    assert run.status == RunStatus.FAILED
    assert "did not arrive within 1h" in run.error


def test_a_waiting_step_can_be_resolved_by_a_transition_once() -> None:
    flow("    - {key: ok, approval: {title: 'Go?'}}\n    - {key: go, agent: echo, after: [ok], input: '{{ steps.ok.output.decision }}'}")
    run = drive(transitions.start_run(workflow="wf"))
    step = head(run, "ok")
    transitions.resolve_waiting_step(step_run_id=step.pk, output={"decision": "approve"}, expected_kind="approval")
    with pytest.raises(transitions.InvalidTransition, match="not waiting"):
        transitions.resolve_waiting_step(step_run_id=step.pk, output={"decision": "reject"})
    run = drive(run)
    assert head(run, "go").output == "approve"


# --- inputs and versions -----------------------------------------------------------------------


def test_bad_run_input_names_every_field_and_creates_nothing() -> None:
    flow("    - {key: a, agent: echo}", extra="  inputs: {topic: {type: string, required: true}, words: {type: integer}}")
    with pytest.raises(ValueError) as caught:
        transitions.start_run(workflow="wf", input={"words": "many", "colour": "red"})
    message = str(caught.value)
    assert "input `topic`: required" in message
    assert "input `words`: expected integer, got str" in message
    assert "input `colour`: not an input of this workflow" in message
    assert Run.objects.count() == 0


def test_a_run_keeps_executing_the_version_it_started_on() -> None:
    flow("    - {key: a, agent: echo, input: old}")
    run = transitions.start_run(workflow="wf")
    flow("    - {key: a, agent: echo, input: new}\n    - {key: b, agent: echo, input: extra}")
    run = drive(run)
    assert run.output == {"a": "old"}
    assert not StepRun.objects.filter(run=run, step_key="b").exists()
    newer = drive(transitions.start_run(workflow="wf"))
    assert newer.version.number == 2 and newer.output == {"a": "new", "b": "extra"}


def test_every_state_change_is_in_the_event_log() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, after: [a], input: 2}")
    run = drive(transitions.start_run(workflow="wf"))
    kinds = list(RunEvent.objects.filter(run=run).values_list("kind", flat=True))
    assert kinds == [
        "run.started",
        "step.queued",
        "step.started",
        "step.succeeded",
        "step.queued",
        "step.started",
        "step.succeeded",
        "run.succeeded",
    ]


# --- chunks of for_each items ------------------------------------------------------------------


def item_ids(run: Run) -> list[int]:
    return list(StepRun.objects.filter(run=run, map_index__isnull=False).order_by("map_index").values_list("pk", flat=True))


def test_a_chunk_of_items_is_claimed_and_recorded_together() -> None:
    from orchestration.tasks import execute_steps

    flow("    - {key: m, agent: context, for_each: input.items}\n    - {key: done, agent: echo, after: [m], input: ok}", extra="  inputs: {items: {type: list, default: [a, b, c, d]}}")
    run = transitions.start_run(workflow="wf")
    execute_steps(item_ids(run))
    assert [o["item"] for o in head(run, "m").output] == ["a", "b", "c", "d"]
    assert head(run, "m").items_done == 4
    assert head(run, "done").status == StepStatus.QUEUED
    items = StepRun.objects.filter(run=run, map_index__isnull=False)
    assert all(i.attempts == 1 and i.started_at <= i.finished_at for i in items)
    assert Attempt.objects.filter(step_run__in=items, status="succeeded").count() == 4


def test_a_failing_item_in_a_chunk_is_retried_on_its_own() -> None:
    from orchestration.tasks import execute_steps

    flow("    - {key: m, agent: flaky, for_each: input.items, input: {succeed_on: '{{ item }}'}}", extra="  inputs: {items: {type: list, default: [1, 2, 1]}}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = transitions.start_run(workflow="wf")
        execute_steps(item_ids(run))
        second = StepRun.objects.get(run=run, map_index=1)
        assert second.status == StepStatus.RETRYING
        assert head(run, "m").items_done == 2
        run = drive(run, clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    assert [o["attempt"] for o in head(run, "m").output] == [1, 2, 1]


def test_results_of_a_chunk_whose_run_was_cancelled_are_dropped() -> None:
    flow("    - {key: m, agent: echo, for_each: input.items}", extra="  inputs: {items: {type: list, default: [1, 2, 3]}}")
    run = transitions.start_run(workflow="wf")
    claims = transitions.claim_steps(step_run_ids=item_ids(run), worker="w")
    transitions.cancel_run(run_id=run.pk)
    now = timezone.now()
    kept = transitions.record_item_successes(successes=[transitions.Success(c, "late", {}, now, now) for c in claims])
    assert kept == 0
    assert set(StepRun.objects.filter(run=run).values_list("status", flat=True)) == {StepStatus.CANCELLED}


def test_a_large_fan_out_is_sent_in_chunks_and_a_small_one_is_not(settings: Any, django_capture_on_commit_callbacks: Any) -> None:
    from orchestration import dispatch

    settings.WORKERS = 2
    sent: list[Any] = []
    flow("    - {key: m, agent: echo, for_each: 'range(input.n) | list'}", extra="  inputs: {n: {type: integer, default: 100}}")
    original_steps, original_chunks = dispatch.send_steps, dispatch.send_step_chunks
    dispatch.send_steps = lambda ids, **_: sent.append(("steps", list(ids)))  # type: ignore[assignment]
    dispatch.send_step_chunks = lambda chunks: sent.append(("chunks", chunks))  # type: ignore[assignment]
    try:
        with django_capture_on_commit_callbacks(execute=True):
            transitions.start_run(workflow="wf")
        with django_capture_on_commit_callbacks(execute=True):
            transitions.start_run(workflow="wf", input={"n": 5})
    finally:
        dispatch.send_steps, dispatch.send_step_chunks = original_steps, original_chunks
    (kind, chunks), (small_kind, small) = sent
    assert kind == "chunks" and [len(c) for c in chunks] == [6] * 16 + [4], "about eight chunks per worker"
    assert small_kind == "steps" and len(small) == 5


def test_items_of_an_agent_that_waits_on_the_network_go_one_chunk_per_worker(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from orchestration import dispatch

    settings.WORKERS = 4
    sent: list[Any] = []
    caller = "  - {name: caller, kind: http, config: {url: 'http://127.0.0.1:9/x'}}\n"
    load_workflow(
        AGENTS + caller + "workflow:\n  key: wf\n  name: wf\n  inputs: {n: {type: integer, default: 20}}\n"
        "  steps:\n    - {key: m, agent: caller, for_each: 'range(input.n) | list'}\n"
    )
    original_steps, original_chunks = dispatch.send_steps, dispatch.send_step_chunks
    dispatch.send_steps = lambda ids, **_: sent.append(("steps", list(ids)))  # type: ignore[assignment]
    dispatch.send_step_chunks = lambda chunks: sent.append(("chunks", chunks))  # type: ignore[assignment]
    try:
        for n in (20, 1000, 3):
            with django_capture_on_commit_callbacks(execute=True):
                transitions.start_run(workflow="wf", input={"n": n})
    finally:
        dispatch.send_steps, dispatch.send_step_chunks = original_steps, original_chunks
    (kind, chunks), (big_kind, big), (small_kind, small) = sent
    # A worker hands a chunk to its slots whole: twenty such items are four messages, not twenty.
    assert kind == "chunks" and [len(c) for c in chunks] == [5] * 4
    assert big_kind == "chunks" and {len(c) for c in big} == {dispatch.MAX_CHUNK}
    assert small_kind == "steps" and len(small) == 3


def test_the_event_log_is_append_only() -> None:
    flow("    - {key: a, agent: echo, input: 1}")
    run = drive(transitions.start_run(workflow="wf"))
    first = RunEvent.objects.filter(run=run).first()
    assert first is not None
    first.message = "rewritten history"
    with pytest.raises(ValueError, match="RunEvent rows are append-only"):
        first.save()


def test_a_worker_runs_the_next_step_of_a_sequence_itself() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, after: [a], input: 2}\n    - {key: c, agent: echo, after: [b], input: 3}")
    run = transitions.start_run(workflow="wf")
    execute_step(head(run, "a").pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, "one task ran the whole sequence, with no broker round trip"
    workers = set(Attempt.objects.filter(step_run__run=run).values_list("worker", flat=True))
    assert len(workers) == 1
    assert list(RunEvent.objects.filter(run=run, step_run__step_key="b").values_list("kind", flat=True)) == [
        "step.queued",
        "step.started",
        "step.succeeded",
    ]


def test_a_worker_hands_the_sequence_to_the_broker_after_its_time(settings: Any) -> None:
    settings.BATON_CONTINUE_SECONDS = 0
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, after: [a], input: 2}")
    run = transitions.start_run(workflow="wf")
    execute_step(head(run, "a").pk)
    assert head(run, "b").status == StepStatus.QUEUED


def test_a_step_taken_by_a_worker_that_then_dies_goes_to_another_worker() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, after: [a], input: 2}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = transitions.start_run(workflow="wf")
        first = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
        assert first is not None
        taken = transitions.record_success_and_take_next(claim=first, output=1, worker="w1")
        assert taken is not None and head(run, "b").status == StepStatus.RUNNING
        clock.shift(60)  # w1 dies before running b: its lease runs out
        run = drive(run, clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    assert list(Attempt.objects.filter(step_run=head(run, "b")).values_list("error_class", flat=True)) == [ErrorClass.LOST, ""]
