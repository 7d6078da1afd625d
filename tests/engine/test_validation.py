"""Every validation rule of the workflow file: a message naming step and field, nothing saved."""

from __future__ import annotations

import time
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


def test_it_rejects_for_each_on_a_step_that_is_neither_an_agent_nor_a_sub_workflow(existing: None) -> None:
    message = rejected(workflow("    - {key: a, wait: {for: 1m}, for_each: '[1, 2]'}"))
    assert "step 'a': field `for_each` only applies to `agent` and `workflow` steps" in message


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


# --- limits of the file format (docs/workflow-format.md, "Limits") --------------------------


def test_it_rejects_a_key_with_a_trailing_newline(existing: None) -> None:
    # `^...$` let "adv-newline\n" through; the workflow then could not be opened by URL.
    message = rejected(AGENTS + 'workflow:\n  key: "adv-newline\\n"\n  name: x\n  steps:\n    - {key: a, agent: echo}\n')
    assert "field `key`: 'adv-newline\\n' may hold only letters, digits" in message
    message = rejected(workflow('    - {key: "a\\n", agent: echo}'))
    assert "field `key`: 'a\\n' may hold only letters, digits" in message


@pytest.mark.parametrize("name", ["bad\x00name", "<b>x</b>", "1st", "with space", "dash-ed", "x\n"])
def test_it_rejects_input_names_that_are_not_identifiers(existing: None, name: str) -> None:
    # As admin publishes a draft: the document as data, not through the YAML loader.
    document = load_text(workflow("    - {key: a, agent: echo}"))
    document["workflow"]["inputs"] = {name: {"type": "string"}}
    before = counts()
    with pytest.raises(SpecError) as caught:
        definitions.import_document(document)
    assert counts() == before
    assert f"input {name!r}: a name must be letters, digits and '_', not starting with a digit" in str(caught.value)


def test_it_rejects_a_wait_of_zero_saying_it_must_be_positive(existing: None) -> None:
    message = rejected(workflow("    - {key: a, wait: {for: 0}}"))
    assert "step 'a': field `wait.for` must be a positive duration (got 0)" in message
    assert "needs `event`" not in message
    message = rejected(workflow("    - {key: a, wait: {for: 0s}}"))
    assert "field `wait.for` must be a positive duration" in message


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ("{key: a, agent: echo, timeout: 400d}", "timeout"),
        ("{key: a, wait: {for: 53w}}", "wait.for"),
        ("{key: a, wait: {event: go, timeout: 99999999999}}", "wait.timeout"),
        ("{key: a, approval: {title: t, deadline: 367d}}", "approval.deadline"),
        ("{key: a, manual: {title: t, deadline: 9999w}}", "manual.deadline"),
        ("{key: a, agent: echo, retry: {backoff: 1000d}}", "retry.backoff"),
    ],
)
def test_it_rejects_durations_beyond_the_maximum(existing: None, step: str, field: str) -> None:
    message = rejected(workflow(f"    - {step}"))
    assert f"step 'a': field `{field}`:" in message and "longer than the maximum of 366 days" in message


def test_it_rejects_an_infinite_duration(existing: None) -> None:
    with pytest.raises(SpecError, match="inf is not a finite number"):
        load_text(workflow("    - {key: a, agent: echo, timeout: .inf}"))
    message = rejected(workflow("    - {key: a, agent: echo, timeout: 1e400}"))
    assert "field `timeout`: '1e400' is not a duration" in message


def test_it_rejects_more_than_a_thousand_loop_iterations(existing: None) -> None:
    loop = "loop: {back_to: a, until: 'true', max_iterations: 1001}"
    message = rejected(workflow(f"    - {{key: a, agent: echo, {loop}}}"))
    assert "field `loop.max_iterations`: 1,001 is more than the maximum of 1,000" in message


def test_it_rejects_a_step_fallback_naming_its_own_agent(existing: None) -> None:
    message = rejected(workflow("    - {key: a, agent: echo, fallback: echo}"))
    assert "step 'a': field `fallback` names the step's own agent 'echo'; name another agent" in message


def test_it_rejects_an_agent_fallback_naming_itself(existing: None) -> None:
    message = rejected("agents:\n  - {name: loopy, kind: python, config: {callable: 'tests.agents.basic:echo'}, fallback: loopy}\n")
    assert "agent 'loopy': field `fallback` must name another agent" in message


def test_it_refuses_a_billion_laughs_file_quickly() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 9)}]")
    text = "\n".join(lines) + "\nworkflow: *a9\n"
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:
        load_text(text, source="laughs.yaml")
    assert time.monotonic() - started < 2
    assert "laughs.yaml: holds more than 100,000 values once its aliases (*name) are expanded" in str(caught.value)


def test_it_refuses_a_recursive_alias() -> None:
    with pytest.raises(SpecError, match="aliases"):
        load_text("workflow: &w [*w]\n", source="loop.yaml")


def test_small_aliases_are_still_allowed() -> None:
    document = load_text("retry: &r {attempts: 2}\nworkflow: {a: *r, b: *r}\n")
    assert document["workflow"] == {"a": {"attempts": 2}, "b": {"attempts": 2}}


@pytest.mark.parametrize("opening", ["[", "{a: ", "- "])
def test_it_refuses_a_file_nested_100000_deep_with_a_clear_message(opening: str) -> None:
    # Flow style 100,000 deep; block style ("-" under "-") 200 deep.
    text = "".join(" " * i + "-\n" for i in range(200)) if opening == "- " else opening * 100_000
    with pytest.raises(SpecError) as caught:
        load_text(text, source="deep.yaml")
    assert "deep.yaml" in str(caught.value) and "nested more than 64 levels deep" in str(caught.value)


def test_it_refuses_a_file_larger_than_the_limit_before_parsing_it() -> None:
    with pytest.raises(SpecError, match=r"big.yaml: the file is 1,000,001 characters; at most 1,000,000"):
        load_text("#" * 1_000_001, source="big.yaml")


def test_it_refuses_a_nul_character_in_a_file() -> None:
    with pytest.raises(SpecError, match="NUL character"):
        load_text('workflow: {key: "a\\0b"}\n', source="nul.yaml")


def test_a_huge_constant_template_is_checked_without_being_computed(db: Any) -> None:
    # Jinja folds constants while compiling: `'x' * 10**9` took 16 s and a MemoryError.
    text = workflow("    - {key: a, agent: echo, input: {big: \"{{ 'x' * 10**9 }}\"}}")
    started = time.monotonic()
    definitions.import_document(load_text(text))
    assert time.monotonic() - started < 2
