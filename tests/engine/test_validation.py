"""Every validation rule of the workflow file: a message naming step and field, nothing saved."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import definitions
from orchestration.models import Agent, DraftStep, Workflow, WorkflowVersion
from orchestration.spec import SpecError, load_text

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
"""


def counts() -> tuple[int, int, int, int]:
    return (
        Agent.objects.count(),
        Workflow.objects.count(),
        WorkflowVersion.objects.count(),
        DraftStep.objects.count(),
    )


def rejected(text: str) -> str:
    """Import the text, expect it to be refused, check nothing changed; return the message."""
    before = counts()
    with pytest.raises(SpecError) as caught:
        definitions.import_document(load_text(text))
    assert counts() == before, "a refused file must not change anything"
    return str(caught.value)


def workflow(steps: str, extra: str = "") -> str:
    return AGENTS + f"""
workflow:
  key: wf
  name: Test
{extra}
  steps:
{steps}
"""


@pytest.fixture
def existing(db: Any) -> None:
    """One workflow already published, so a refused import must leave it untouched."""
    definitions.import_document(load_text(workflow("    - {key: a, agent: echo}")))


def test_it_rejects_an_unknown_step_field(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo, retries: 3}"))
    assert "step 'a': unknown field `retries`" in message


def test_it_rejects_an_unknown_workflow_field(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo}", extra="  colour: blue"))
    assert "workflow 'wf': unknown field `colour`" in message


def test_it_rejects_an_unknown_top_level_field(existing: None) -> None:
    message = rejected("workflows: []\n" + workflow("    - {key: a, agent: echo}"))
    assert "unknown top-level field `workflows`" in message


def test_it_rejects_duplicate_step_keys(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo}\n    - {key: a, agent: echo}"))
    assert "step 'a': duplicate key" in message


def test_it_rejects_after_naming_a_missing_step(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo, after: [ghost]}"))
    assert "step 'a': field `after` names missing step 'ghost'" in message


def test_it_rejects_a_cycle_and_says_loops_are_the_way_back(existing: None) -> None:
    message = rejected(
        workflow(
            "    - {key: a, agent: echo, after: [c]}\n"
            "    - {key: b, agent: echo, after: [a]}\n"
            "    - {key: c, agent: echo, after: [b]}"
        )
    )
    assert "steps form a cycle (a -> c -> b -> a)" in message
    assert "use `loop`" in message


def test_it_rejects_an_unknown_agent(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: nobody}"))
    assert "step 'a': field `agent`: unknown agent 'nobody'" in message


def test_it_rejects_an_unknown_sub_workflow(existing: None) -> None:
    message = rejected(workflow("    - {key: a, workflow: elsewhere}"))
    assert "step 'a': field `workflow`: unknown workflow 'elsewhere'" in message


def test_it_rejects_a_template_that_does_not_compile(existing: None) -> None:
    message = rejected(workflow('    - {key: a, agent: echo, input: {x: "{{ input.topic "}}'))
    assert "step 'a': field `input` does not compile" in message


def test_it_rejects_an_expression_that_does_not_compile(existing: None) -> None:
    message = rejected(workflow('    - {key: a, agent: echo, when: "input.x >"}'))
    assert "step 'a': field `when` does not compile" in message


def test_it_rejects_a_template_naming_an_unknown_step(existing: None) -> None:
    message = rejected(workflow('    - {key: a, agent: echo, input: "{{ steps.ghost.output }}"}'))
    assert "step 'a': a template refers to unknown step 'ghost'" in message


def test_it_rejects_a_step_with_two_kinds(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo, workflow: wf}"))
    assert "step 'a': must have exactly one of" in message
    assert "(has `agent`, `workflow`)" in message


def test_it_rejects_a_step_with_no_kind(existing: None) -> None:
    message = rejected(workflow("    - {key: a}"))
    assert "step 'a': must have exactly one of" in message


def test_it_rejects_a_workflow_that_calls_itself(existing: None) -> None:
    message = rejected(workflow("    - {key: a, workflow: wf}"))
    assert "workflow 'wf': sub-workflows call themselves (wf -> wf)" in message


def test_it_rejects_recursion_through_another_workflow(db: Any) -> None:
    definitions.import_document(load_text(AGENTS + "workflow: {key: child, name: C, steps: [{key: a, agent: echo}]}"))
    definitions.import_document(load_text(AGENTS + "workflow: {key: parent, name: P, steps: [{key: a, workflow: child}]}"))
    message = rejected(AGENTS + "workflow: {key: child, name: C, steps: [{key: a, workflow: parent}]}")
    assert "sub-workflows call themselves (child -> parent -> child)" in message
    assert WorkflowVersion.objects.filter(workflow__key="child").count() == 1


def test_it_rejects_a_loop_back_to_a_step_that_is_not_before_it(existing: None) -> None:
    message = rejected(
        workflow(
            "    - {key: a, agent: echo}\n"
            "    - {key: b, agent: echo}\n"
            "    - {key: c, agent: echo, after: [a], loop: {back_to: b, until: 'true', max_iterations: 2}}"
        )
    )
    assert "step 'c': field `loop.back_to`: 'b' is not this step or a step it comes after" in message


def test_it_rejects_a_bad_retry_and_timeout(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo, timeout: soon, retry: {attempts: 0}}"))
    assert "step 'a': field `timeout`: 'soon' is not a duration" in message
    assert "step 'a': field `retry.attempts` must be a whole number of at least 1" in message


def test_it_rejects_an_agent_whose_callable_cannot_be_imported(existing: None) -> None:
    message = rejected(
        "agents: [{name: broken, kind: python, config: {callable: 'tests.agents.basic:missing'}}]\n"
        "workflow: {key: wf, name: T, steps: [{key: a, agent: broken}]}"
    )
    assert "agent 'broken': field `config.callable`: 'tests.agents.basic' has no function 'missing'" in message


def test_it_rejects_an_input_default_of_the_wrong_type(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo}", extra="  inputs: {words: {type: integer, default: many}}"))
    assert "input 'words': field `default`: expected integer, got str" in message


def test_it_reports_yaml_syntax_errors_with_a_line(db: Any) -> None:
    with pytest.raises(SpecError) as caught:
        load_text("workflow:\n  key: [unclosed\n", source="broken.yaml")
    assert "broken.yaml, line" in str(caught.value)


def test_it_lists_every_problem_at_once(existing: None) -> None:
    message = rejected(
        workflow("    - {key: a, agent: nobody}\n    - {key: b, agent: echo, after: [ghost]}")
    )
    assert "unknown agent 'nobody'" in message
    assert "names missing step 'ghost'" in message


def test_a_valid_file_round_trips_through_export(db: Any) -> None:
    text = workflow(
        "    - {key: a, agent: echo, input: {x: '{{ input.topic }}'}, timeout: 2m, retry: {attempts: 2, backoff: 1s}}\n"
        "    - {key: b, agent: echo, after: [a], for_each: 'input.items', concurrency: 2}\n"
        "    - {key: c, agent: echo, after: [b], loop: {back_to: a, until: 'steps.c.output', max_iterations: 3}}",
        extra="  inputs: {topic: {type: string, required: true}, items: {type: list, default: [1, 2]}}",
    )
    _, first = definitions.import_document(load_text(text))
    exported = definitions.export_document("wf")
    _, second = definitions.import_document(load_text(exported))
    assert first is not None and second is not None
    assert second.spec == first.spec
    assert second.pk == first.pk, "an unchanged file publishes no new version"


def test_it_rejects_a_template_naming_a_step_it_does_not_come_after(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo}\n    - {key: b, agent: echo, input: '{{ steps.a.output }}'}"))
    assert "step 'b': a template refers to step 'a', which it does not come after (add it to `after`)" in message


def test_it_rejects_for_each_on_a_step_that_is_not_an_agent(existing: None) -> None:
    message = rejected(workflow("    - {key: a, workflow: wf, for_each: '[1, 2]'}"))
    assert "step 'a': field `for_each` only applies to `agent` steps" in message


def test_it_rejects_keys_that_are_not_slugs(existing: None) -> None:
    message = rejected(workflow("    - {key: my step, agent: echo}"))
    assert "step 'my step': field `key`: 'my step' may hold only letters, digits" in message


def test_it_lists_an_unknown_owner_with_the_other_problems(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: nobody}", extra="  owner: ghost"))
    assert "field `owner`: unknown user 'ghost'" in message
    assert "unknown agent 'nobody'" in message


def test_it_rejects_a_wait_for_an_event_with_a_plain_timer(existing: None) -> None:
    message = rejected(workflow("    - {key: a, wait: {event: go, for: 5m}}"))
    assert "step 'a': field `wait`: use `timeout` with `event`" in message
