"""Choices made at run time: an agent or sub-workflow picked from a declared set, maps over
sub-workflows, routes, redoing only the items a judge sends back, and steps that end the run.
Driven in-process with the real step executor, on whichever back-end the suite runs on."""

from __future__ import annotations

import re
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.spec import SpecError
from orchestration.status import EventKind, RunStatus, StepStatus
from orchestration.tasks import execute_step
from tests.support import ROOT, drive, load_workflow

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: accounting, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: crm, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: product, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: legal, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}}
  - {name: fails-first, kind: python, config: {callable: "tests.agents.basic:fails_first"}, retry: {attempts: 1}}
  - {name: undo, kind: python, config: {callable: "tests.agents.basic:echo"}}
"""

PLAN = (
    '[{"task": "revenue", "worker": "accounting"}, {"task": "churn", "worker": "crm"},'
    ' {"task": "launches", "worker": "product"}, {"task": "margin", "worker": "accounting"}]'
)


def flow(steps: str, *, key: str = "wf", extra: str = "") -> None:
    load_workflow(AGENTS + f"workflow:\n  key: {key}\n  name: {key}\n{extra}\n  steps:\n{steps}\n")


def problems(steps: str, *, extra: str = "") -> list[str]:
    with pytest.raises(SpecError) as raised:
        flow(steps, extra=extra)
    return raised.value.problems


def head(run: Run, key: str, iteration: int | None = None) -> StepRun:
    rows = StepRun.objects.filter(run=run, step_key=key, map_index__isnull=True)
    if iteration is not None:
        return rows.get(iteration=iteration)
    return rows.order_by("-iteration").first()  # type: ignore[return-value]


def items(run: Run, key: str, iteration: int = 1) -> list[StepRun]:
    return list(StepRun.objects.filter(run=run, step_key=key, iteration=iteration, map_index__isnull=False).order_by("map_index"))


def calls(run: Run, agent: str) -> int:
    return Attempt.objects.filter(step_run__run=run, agent_name=agent).count()


# --- an agent chosen at run time -----------------------------------------------------------


def test_each_item_goes_to_the_agent_its_expression_names_and_the_items_say_which() -> None:
    flow(
        f"    - key: work\n"
        f"      agent: '{{{{ item.worker }}}}'\n"
        f"      agents: [accounting, crm, product]\n"
        f"      for_each: '{PLAN}'\n"
        f"      input: {{task: '{{{{ item.task }}}}'}}",
        extra="  output: '{{ steps.work.output }}'",
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [row.agent_name for row in items(run, "work")] == ["accounting", "crm", "product", "accounting"]
    assert (calls(run, "accounting"), calls(run, "crm"), calls(run, "product")) == (2, 1, 1)
    assert [out["task"] for out in run.output] == ["revenue", "churn", "launches", "margin"]


def test_a_single_step_runs_the_agent_its_expression_names() -> None:
    flow(
        "    - {key: pick, agent: echo, input: {to: crm}}\n"
        "    - {key: act, agent: '{{ steps.pick.output.to }}', agents: [accounting, crm], after: [pick], input: 1}"
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "act").agent_name == "crm" and calls(run, "crm") == 1


def test_a_value_outside_the_declared_set_fails_the_step_naming_the_value_and_the_set() -> None:
    flow(
        "    - key: work\n"
        "      agent: '{{ item }}'\n"
        "      agents: [accounting, crm]\n"
        "      for_each: '[\"crm\", \"legal\"]'"
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert head(run, "work").error == (
        "item 1: field `agent`: 'legal' is not one of the agents this step may choose (accounting, crm)"
    )
    assert not Attempt.objects.filter(step_run__run=run).exists(), "no item ran: the map never started"


def test_an_unknown_agent_in_the_set_and_a_missing_set_are_refused_at_import() -> None:
    found = problems(
        "    - {key: a, agent: '{{ input.who }}', agents: [crm, ghost]}\n"
        "    - {key: b, agent: '{{ input.who }}'}\n"
        "    - {key: c, agent: crm, agents: [crm]}"
    )
    assert "workflow 'wf', step 'a': field `agents`: unknown agent 'ghost'" in found
    assert (
        "workflow 'wf', step 'b': field `agents` is required when `agent` is an expression: list the agents it may choose"
        in found
    )
    assert (
        "workflow 'wf', step 'c': field `agents` only applies when `agent` is an expression choosing one of them at run time"
        in found
    )


# --- for_each over a sub-workflow -------------------------------------------------------------


def children(parent: Run) -> list[Run]:
    return list(Run.objects.filter(parent_step__run=parent).order_by("parent_step__map_index"))


def two_workers(*, second_agent: str = "echo") -> None:
    out = "  output: '{{ steps.go.output }}'"
    flow("    - {key: go, agent: echo, input: {part: '{{ input.part }}', by: first}}", key="first-worker", extra=out)
    flow(
        f"    - {{key: go, agent: {second_agent}, input: {{part: '{{{{ input.part }}}}', by: second}}}}",
        key="second-worker",
        extra=out,
    )


def test_a_map_over_a_sub_workflow_starts_one_child_run_per_item_within_its_concurrency() -> None:
    two_workers()
    flow(
        "    - key: parts\n"
        "      workflow: '{{ item.worker }}'\n"
        "      workflows: [first-worker, second-worker]\n"
        "      for_each: '[{\"p\": 1, \"worker\": \"first-worker\"}, {\"p\": 2, \"worker\": \"second-worker\"}, {\"p\": 3, \"worker\": \"first-worker\"}]'\n"
        "      concurrency: 2\n"
        "      input: {part: '{{ item.p }}'}",
        extra="  output: '{{ steps.parts.output }}'",
    )
    run = transitions.start_run(workflow="wf")
    assert len(children(run)) == 2, "the third child waits for a slot"
    assert [row.status for row in items(run, "parts")] == [StepStatus.WAITING, StepStatus.WAITING, StepStatus.PENDING]
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == [{"part": 1, "by": "first"}, {"part": 2, "by": "second"}, {"part": 3, "by": "first"}]
    assert [child.workflow.key for child in children(run)] == ["first-worker", "second-worker", "first-worker"]
    assert all(child.status == RunStatus.SUCCEEDED for child in children(run))


def test_a_failed_child_fails_its_item_and_cancels_the_other_children() -> None:
    two_workers(second_agent="refuse")
    flow(
        "    - key: parts\n"
        "      workflow: '{{ item }}'\n"
        "      workflows: [first-worker, second-worker]\n"
        "      for_each: '[\"second-worker\", \"first-worker\"]'\n"
        "      input: {part: 1}"
    )
    run = transitions.start_run(workflow="wf")
    first, second = children(run)
    # Only the refusing child runs: the other is still waiting when its sibling fails.

    execute_step(StepRun.objects.get(run=first, step_key="go").pk)
    run.refresh_from_db()
    drive(first)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "item 0 failed: sub-workflow run" in head(run, "parts").error
    second.refresh_from_db()
    assert second.status == RunStatus.CANCELLED


def test_cancelling_the_parent_cancels_every_child_of_the_map() -> None:
    two_workers()
    flow(
        "    - key: parts\n"
        "      workflow: first-worker\n"
        "      for_each: '[1, 2]'\n"
        "      input: {part: '{{ item }}'}"
    )
    run = transitions.start_run(workflow="wf")
    transitions.cancel_run(run_id=run.pk, reason="not this quarter")
    assert [child.status for child in children(run)] == [RunStatus.CANCELLED, RunStatus.CANCELLED]
    assert {row.status for row in items(run, "parts")} == {StepStatus.CANCELLED}


def test_retry_resumes_only_the_failed_child_of_a_mapped_sub_workflow(ops: Any) -> None:
    # Only the child of item 1 fails, on its first attempt.
    flow(
        "    - {key: go, agent: fails-first, input: {part: '{{ input.part }}', fail: '{{ input.part == 1 }}'}}",
        key="worker",
        extra="  output: '{{ steps.go.output }}'",
    )
    flow(
        "    - key: parts\n"
        "      workflow: worker\n"
        "      for_each: '[0, 1, 2]'\n"
        "      input: {part: '{{ item }}'}",
        extra="  output: '{{ steps.parts.output }}'",
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    failed_child = children(run)[1]
    assert failed_child.status == RunStatus.FAILED
    transitions.retry_run(run_id=run.pk, actor=ops, reason="the service is back")
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert len(children(run)) == 3, "the failed child resumed; no new child run was started"
    failed_child.refresh_from_db()
    assert failed_child.status == RunStatus.SUCCEEDED
    assert [out["part"] for out in run.output] == [0, 1, 2]
    assert run.output[1]["attempt"] == 2


def test_a_sub_workflow_outside_the_declared_set_fails_the_step_naming_it_and_the_set() -> None:
    two_workers()
    flow(
        "    - key: parts\n"
        "      workflow: '{{ item }}'\n"
        "      workflows: [first-worker]\n"
        "      for_each: '[\"first-worker\", \"second-worker\"]'\n"
        "      input: {part: 1}"
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "field `workflow`: 'second-worker' is not one of the workflows this step may choose (first-worker)" in run.error
    assert [child.workflow.key for child in children(run)] == ["first-worker"]


def test_an_unknown_sub_workflow_in_the_set_is_refused_at_import() -> None:
    two_workers()
    found = problems("    - {key: a, workflow: '{{ input.w }}', workflows: [first-worker, ghost]}")
    assert "workflow 'wf', step 'a': field `workflows`: unknown workflow 'ghost'" in found


# --- route ------------------------------------------------------------------------------------

ROUTED = (
    "    - {key: classify, agent: echo, input: {queue: '{{ input.queue }}'}}\n"
    "    - key: triage\n"
    "      after: [classify]\n"
    "      route:\n"
    "        by: steps.classify.output.queue\n"
    "        cases: {billing: billing, technical: technical}\n"
    "        default: general\n"
    "    - {key: billing, agent: accounting, after: [triage], input: {reply: paid back}}\n"
    "    - {key: technical, agent: BRANCH, after: [triage], input: {reply: fixed}}\n"
    "    - {key: general, agent: crm, after: [triage], input: {reply: answered}}\n"
    "    - {key: reply, agent: echo, after: [billing, technical, general], input: {said: '{{ steps.triage.output.reply }}', by: '{{ steps.triage.branch }}'}}\n"
)


def test_a_route_runs_exactly_one_branch_and_the_join_reads_it_under_the_routes_name() -> None:
    flow(ROUTED.replace("BRANCH", "product"), extra="  inputs: {queue: {type: string}}")
    run = drive(transitions.start_run(workflow="wf", input={"queue": "technical"}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert head(run, "triage").output == {"value": "technical", "branch": "technical"}
    assert [head(run, k).status for k in ("billing", "technical", "general")] == [
        StepStatus.SKIPPED,
        StepStatus.SUCCEEDED,
        StepStatus.SKIPPED,
    ]
    assert head(run, "reply").output == {"said": "fixed", "by": "technical"}
    skipped = RunEvent.objects.filter(run=run, kind=EventKind.STEP_SKIPPED).values_list("message", flat=True)
    assert set(skipped) == {"route 'triage' took branch 'technical'"}


def test_a_value_no_case_names_takes_the_default() -> None:
    flow(ROUTED.replace("BRANCH", "product"), extra="  inputs: {queue: {type: string}}")
    run = drive(transitions.start_run(workflow="wf", input={"queue": "sales"}))
    assert head(run, "reply").output == {"said": "answered", "by": "general"}
    assert "(no case matched: the default)" in RunEvent.objects.get(run=run, step_run=head(run, "triage")).message


def test_a_route_without_a_default_or_with_a_case_not_after_it_is_refused() -> None:
    found = problems(
        "    - {key: a, agent: echo}\n"
        "    - {key: r, after: [a], route: {by: steps.a.output, cases: {x: b, y: a}}}\n"
        "    - {key: s, after: [a], route: {by: steps.a.output, cases: {x: b}, default: a}}\n"
        "    - {key: b, agent: echo, after: [s]}"
    )
    assert "workflow 'wf', step 'r': field `route.default` is required: the step to take when no case matches" in found
    assert (
        "workflow 'wf', step 's': field `route.default`: step 'a' does not come after this step (add 's' to its `after`)"
        in found
    )


def test_retry_runs_the_failed_routed_branch_again_and_leaves_the_others_skipped(ops: Any) -> None:
    flow(ROUTED.replace("BRANCH", "fails-first"), extra="  inputs: {queue: {type: string}}")
    run = drive(transitions.start_run(workflow="wf", input={"queue": "technical"}))
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Step 'technical' (agent fails-first) failed")
    transitions.retry_run(run_id=run.pk, actor=ops, reason="again")
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert head(run, "technical").attempts == 2
    assert head(run, "billing").status == StepStatus.SKIPPED and calls(run, "accounting") == 0
    assert head(run, "reply").output == {"said": "fixed", "by": "technical"}


def test_only_the_branch_a_route_took_is_undone_when_the_run_fails_after_it() -> None:
    routed = ROUTED.replace("BRANCH", "product")
    for key in ("billing", "technical", "general"):
        routed = routed.replace(f"{{key: {key}, ", f"{{key: {key}, compensate: {{agent: undo}}, ")
    flow(routed + "    - {key: boom, agent: refuse, after: [reply]}\n", extra="  inputs: {queue: {type: string}}")
    run = drive(transitions.start_run(workflow="wf", input={"queue": "billing"}))
    assert run.status == RunStatus.FAILED
    undone = list(StepRun.objects.filter(run=run, step_key__endswith=".undo").values_list("step_key", "status"))
    assert undone == [("billing.undo", StepStatus.SUCCEEDED)]


# --- redo only what the judge rejects ---------------------------------------------------------

REVIEWED = (
    "    - key: work\n"
    "      agent: '{{ item.worker }}'\n"
    "      agents: [accounting, crm, product]\n"
    f"      for_each: '{PLAN}'\n"
    "      item_key: item.task\n"
    "      input: {task: '{{ item.task }}', round: '{{ iteration }}'}\n"
    "    - key: review\n"
    "      agent: echo\n"
    "      after: [work]\n"
    "      input: {approved: '{{ iteration >= 2 }}', redo: REDO}\n"
    "      loop:\n"
    "        back_to: work\n"
    "        until: steps.review.output.approved\n"
    "        redo: steps.review.output.redo\n"
    "        max_iterations: 3\n"
)


def test_only_the_items_the_judge_names_run_again_and_the_others_keep_their_outputs() -> None:
    flow(REVIEWED.replace("REDO", "[churn]"), extra="  output: '{{ steps.work.output }}'")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED, run.error
    # 4 calls in round 1, then only the churn item (crm) again.
    assert (calls(run, "accounting"), calls(run, "crm"), calls(run, "product")) == (2, 2, 1)
    assert [out["round"] for out in run.output] == [1, 2, 1, 1]
    round_two = items(run, "work", 2)
    assert [row.attempts for row in round_two] == [0, 1, 0, 0], "kept items were not run again"
    assert [row.output for row in round_two][0] == items(run, "work", 1)[0].output
    assert head(run, "work", 2).redo == [1]
    assert len(items(run, "work", 1)) == 4, "every round of every item is kept"
    looped = RunEvent.objects.get(run=run, kind=EventKind.STEP_LOOPED)
    assert looped.data["redo"] == [1] and "item(s) 1 of 'work' run again" in looped.message


def test_items_may_be_named_by_index() -> None:
    flow(REVIEWED.replace("REDO", "[0, 3]"))
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED
    assert [row.attempts for row in items(run, "work", 2)] == [1, 0, 0, 1]


def test_a_redo_naming_an_item_that_does_not_exist_fails_the_judge() -> None:
    flow(REVIEWED.replace("REDO", "[7]"))
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert head(run, "review").error == "field `loop.redo`: item 7 does not exist (step 'work' has items 0 to 3)"
    flow(REVIEWED.replace("REDO", "[csat]"))
    run = drive(transitions.start_run(workflow="wf"))
    assert head(run, "review").error == (
        "field `loop.redo`: no item of step 'work' has the key 'csat' (keys: revenue, churn, launches, margin)"
    )


def test_redo_on_a_loop_back_to_a_step_that_is_not_a_map_is_refused_at_import() -> None:
    found = problems(
        "    - {key: a, agent: echo}\n"
        "    - key: b\n"
        "      agent: echo\n"
        "      after: [a]\n"
        "      loop: {back_to: a, until: 'true', redo: '[0]', max_iterations: 2}"
    )
    assert (
        "workflow 'wf', step 'b': field `loop.redo` only applies when `loop.back_to` is a `for_each` step ('a' is not)"
        in found
    )


def test_a_redo_round_over_sub_workflows_starts_children_only_for_the_named_items() -> None:
    two_workers()
    flow(
        "    - key: parts\n"
        "      workflow: first-worker\n"
        "      for_each: '[1, 2, 3]'\n"
        "      input: {part: '{{ item }}'}\n"
        "    - key: review\n"
        "      agent: echo\n"
        "      after: [parts]\n"
        "      input: {ok: '{{ iteration >= 2 }}'}\n"
        "      loop: {back_to: parts, until: steps.review.output.ok, redo: '[2]', max_iterations: 2}"
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert len(children(run)) == 4, "three children in round 1, one in round 2"


def test_each_round_of_a_redone_map_is_undone_when_the_run_fails_later() -> None:
    flow(
        REVIEWED.replace("REDO", "[churn]").replace(
            "      item_key: item.task\n", "      item_key: item.task\n      compensate: {agent: undo}\n"
        )
        + "    - {key: boom, agent: refuse, after: [review]}"
    )
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    undone = StepRun.objects.filter(run=run, step_key="work.undo").order_by("iteration")
    assert [(row.iteration, row.status) for row in undone] == [(1, StepStatus.SUCCEEDED), (2, StepStatus.SUCCEEDED)]
    assert "work.undo succeeded" in run.error


def test_cancelling_a_run_during_a_redo_round_cancels_the_items_running_again(settings: Any) -> None:
    settings.BATON_CONTINUE_SECONDS = 0  # step one worker task at a time
    flow(REVIEWED.replace("REDO", "[churn]"))

    run = transitions.start_run(workflow="wf")
    for _ in range(5):  # round 1: every item and the review, not round 2's item
        for row in StepRun.objects.filter(run=run, status=StepStatus.QUEUED, iteration=1).order_by("id"):
            execute_step(row.pk)
    assert head(run, "work", 2).status == StepStatus.RUNNING
    transitions.cancel_run(run_id=run.pk, reason="enough")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert [row.status for row in items(run, "work", 2)] == [
        StepStatus.SUCCEEDED,
        StepStatus.CANCELLED,
        StepStatus.SUCCEEDED,
        StepStatus.SUCCEEDED,
    ]


# --- end the run --------------------------------------------------------------------------------

ONBOARDING = (
    "    - {key: validate, agent: echo, input: {valid: '{{ input.valid }}', reason: missing payment details}}\n"
    "    - key: reject\n"
    "      after: [validate]\n"
    "      when: not steps.validate.output.valid\n"
    "      end: {status: failed, message: 'customer failed validation: {{ steps.validate.output.reason }}'}\n"
    "    - {key: setup, agent: accounting, after: [reject], input: {ok: true}, compensate: {agent: undo}}\n"
    "    - {key: welcome, agent: crm, after: [setup]}\n"
)


def test_an_end_step_whose_condition_holds_fails_the_run_with_its_message() -> None:
    flow(ONBOARDING, extra="  inputs: {valid: {type: boolean}}")
    run = drive(transitions.start_run(workflow="wf", input={"valid": False}))
    assert run.status == RunStatus.FAILED
    assert run.error == "customer failed validation: missing payment details"
    assert head(run, "reject").output == {"status": "failed", "message": run.error}
    assert calls(run, "accounting") == 0 and not StepRun.objects.filter(run=run, step_key="setup").exists()


def test_an_end_step_whose_condition_is_false_lets_the_run_go_on_past_it() -> None:
    flow(ONBOARDING, extra="  inputs: {valid: {type: boolean}}")
    run = drive(transitions.start_run(workflow="wf", input={"valid": True}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert head(run, "reject").status == StepStatus.SKIPPED
    assert head(run, "welcome").status == StepStatus.SUCCEEDED


def test_an_end_step_that_fails_the_run_undoes_the_completed_steps() -> None:
    flow(
        ONBOARDING.replace("after: [reject], input: {ok: true}", "after: [validate], input: {ok: true}").replace(
            "after: [validate]\n      when", "after: [setup]\n      when"
        ),
        extra="  inputs: {valid: {type: boolean}}",
    )
    run = drive(transitions.start_run(workflow="wf", input={"valid": False}))
    assert run.status == RunStatus.FAILED
    assert run.error == "customer failed validation: missing payment details. Compensations: setup.undo succeeded."


def test_an_end_step_may_end_the_run_as_succeeded_with_an_output_and_cancel_what_is_still_going() -> None:
    flow(
        "    - {key: check, agent: echo, input: {cached: true}}\n"
        "    - {key: slow, agent: echo, input: 1}\n"
        "    - key: done\n"
        "      after: [check]\n"
        "      when: steps.check.output.cached\n"
        "      end: {status: succeeded, message: the answer was cached, output: {from: cache}}\n"
        "    - {key: compute, agent: echo, after: [done, slow]}"
    )
    run = transitions.start_run(workflow="wf")

    execute_step(head(run, "check").pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.output == {"from": "cache"}
    assert head(run, "slow").status == StepStatus.CANCELLED
    event = RunEvent.objects.get(run=run, kind=EventKind.RUN_SUCCEEDED)
    assert event.message == "ended by step 'done': the answer was cached"


def test_an_end_step_with_a_bad_status_or_no_message_is_refused() -> None:
    found = problems("    - {key: a, end: {status: done}}\n    - {key: b, end: {status: failed, message: x, output: 1}}")
    assert "workflow 'wf', step 'a': field `end.status`: 'done' is not 'failed' or 'succeeded'" in found
    assert "workflow 'wf', step 'a': field `end.message` is required: what the run's end says" in found
    assert "workflow 'wf', step 'b': field `end.output` only applies to `status: succeeded`" in found


# --- the reference's complete examples do what it says -----------------------------------------


def doc_example(name: str) -> str:
    text = (ROOT / "docs" / "workflow-format.md").read_text()
    found = re.search(rf"^```yaml\n# file: {re.escape(name)}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    assert found, name
    return found.group(1)


def test_the_quarterly_plan_of_the_reference_calls_its_agents_as_it_says() -> None:
    load_workflow(doc_example("quarterly-plan.yaml"))
    run = drive(transitions.start_run(workflow="quarterly-plan", input={"quarter": "Q1"}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    counted = {name: calls(run, name) for name in ("planner", "accounting", "crm", "product", "reviewer")}
    assert counted == {"planner": 1, "accounting": 2, "crm": 2, "product": 1, "reviewer": 2}
    assert [part["revision"] for part in run.output["parts"]] == [1, 1, 2, 1] and run.output["rounds"] == 2


def test_the_support_desk_of_the_reference_routes_and_ends_as_it_says() -> None:
    load_workflow(doc_example("support-desk.yaml"))
    run = drive(transitions.start_run(workflow="support-desk", input={"text": "Error on export"}))
    assert run.output == {"sent": "Here is a workaround.", "by": "technical"}
    run = drive(transitions.start_run(workflow="support-desk", input={"text": "You win a prize"}))
    assert run.status == RunStatus.SUCCEEDED and run.output == {"closed": "spam"}
    assert not Attempt.objects.filter(step_run__run=run, agent_name__endswith="-desk").exists()


@pytest.mark.parametrize("name", ["quarterly-plan.yaml", "support-desk.yaml"])
def test_the_draft_of_a_workflow_that_chooses_at_run_time_publishes_the_same_spec(name: str) -> None:
    from orchestration import definitions

    version = load_workflow(doc_example(name))
    assert version is not None
    assert definitions.check_draft(version.workflow) == version.spec
    assert definitions.publish_draft(version.workflow) == version, "nothing changed: no new version"
