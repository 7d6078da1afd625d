"""Templates may read only names their context will have: checked at import and at publish.

A root name the context never has, an input the workflow does not declare, a field a step's
result does not have, a key missing from an output whose shape is known: each is refused with
the step, the field and the name, and nothing is saved. Where the shape is not known, anything
goes.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import definitions
from orchestration.models import DraftStep, Workflow, WorkflowVersion
from orchestration.spec import SpecError, load_text
from orchestration.templating import check_expression, check_template, name_paths

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - name: researcher
    kind: simulated
    config: {delay: 0, output: {summary: "notes on {{ input.topic }}", sources: [a, b]}}
  - {name: plain, kind: simulated, config: {delay: 0}}
  - {name: parrot, kind: simulated, config: {delay: 0, output: "{{ input }}"}}
"""


def document(steps: str, *, inputs: str = "{topic: {type: string}, tone: {type: string}}", output: str = "") -> str:
    return AGENTS + f"""
workflow:
  key: names
  name: Names
  inputs: {inputs}
{output}
  steps:
{steps}
"""


def refused(text: str) -> str:
    before = (Workflow.objects.count(), WorkflowVersion.objects.count())
    with pytest.raises(SpecError) as caught:
        definitions.import_document(load_text(text))
    assert (Workflow.objects.count(), WorkflowVersion.objects.count()) == before, "a refused file saves nothing"
    return str(caught.value)


def accepted(text: str) -> WorkflowVersion:
    _, version = definitions.import_document(load_text(text))
    assert version is not None
    return version


# --- the walk itself ----------------------------------------------------------------------------


def test_name_paths_lists_each_attribute_path_a_template_reads() -> None:
    trees = check_template("{{ input.topic }} and {{ steps['re-search'].output.summary | upper }}")
    assert name_paths(trees) == [
        ("input",),
        ("input", "topic"),
        ("steps",),
        ("steps", "re-search", "output", "summary"),
        ("steps", "re-search", "output"),
        ("steps", "re-search"),
    ]


def test_name_paths_leaves_out_what_the_template_defines_and_the_sandbox_globals() -> None:
    trees = check_template("{% set n = 3 %}{% for x in range(n) %}{{ loop.index }}{{ x.y }}{% endfor %}{{ dict(a=1) }}")
    assert name_paths(trees) == []


def test_name_paths_leaves_out_what_is_read_through_default_or_is_defined() -> None:
    trees = check_template("{{ input.tone | default('plain') }}{% if steps.review is defined %}{{ run.id }}{% endif %}")
    assert name_paths(trees) == [("run",), ("run", "id")]


def test_name_paths_stops_a_path_at_a_computed_part() -> None:
    assert name_paths([check_expression("steps[input.which].output")]) == [("steps",), ("input",), ("input", "which")]


# --- refused, naming step, field and name --------------------------------------------------------


def test_it_refuses_an_input_the_workflow_does_not_declare_and_suggests_the_close_one(db: Any) -> None:
    message = refused(document('    - {key: write, agent: echo, input: {prompt: "About {{ input.topik }}"}}'))
    assert (
        "workflow 'names', step 'write': field `input`: `input.topik` is not an input (inputs: tone, topic); "
        "did you mean `input.topic`?"
    ) in message


def test_it_refuses_a_root_name_the_context_never_has(db: Any) -> None:
    message = refused(document('    - {key: write, agent: echo, input: "{{ inputs.topic }}"}'))
    assert "step 'write': field `input`: `inputs` is not something this template can read" in message
    assert "did you mean `input`?" in message


def test_item_is_only_there_in_the_input_of_a_for_each_step(db: Any) -> None:
    message = refused(document('    - {key: write, agent: echo, input: "{{ item }}"}'))
    assert "step 'write': field `input`: `item` is not something this template can read" in message
    accepted(document('    - {key: write, agent: echo, for_each: "[1, 2]", input: "{{ item }} of {{ index }}"}'))


def test_it_refuses_a_key_missing_from_an_output_whose_shape_is_known(db: Any) -> None:
    message = refused(
        document(
            """    - {key: research, agent: researcher}
    - {key: write, agent: echo, after: [research], input: "{{ steps.research.output.sumary }}"}"""
        )
    )
    assert (
        "step 'write': field `input`: `steps.research.output.sumary` is not in the output of step `research` "
        "(output: sources, summary); did you mean `steps.research.output.summary`?"
    ) in message


def test_a_simulated_agent_without_an_output_gives_its_default_shape(db: Any) -> None:
    message = refused(
        document(
            """    - {key: research, agent: plain}
    - {key: write, agent: echo, after: [research], when: "steps.research.output.verdict == 'ok'"}"""
        )
    )
    assert "step 'write': field `when`: `steps.research.output.verdict` is not in the output of step `research`" in message


def test_it_refuses_a_field_a_step_result_does_not_have(db: Any) -> None:
    message = refused(
        document(
            """    - {key: research, agent: echo}
    - {key: write, agent: echo, after: [research], input: "{{ steps.research.outptu }}"}"""
        )
    )
    assert "`steps.research.outptu`: a step has error, iteration, output, status, not `outptu`; did you mean `steps.research.output`?" in message


def test_the_workflow_output_and_a_compensation_are_checked_too(db: Any) -> None:
    message = refused(
        document(
            """    - {key: research, agent: echo, compensate: {agent: echo, input: "{{ step.output }} {{ stepp }}"}}""",
            output='  output: "{{ steps.research.output }} for {{ input.tone }} by {{ run.owner }}"',
        )
    )
    assert "step 'research': field `compensate.input`: `stepp` is not something this template can read" in message
    assert "workflow 'names': field `output`: `run.owner`: a run has id, workflow" in message


def test_every_problem_is_named_at_once(db: Any) -> None:
    message = refused(document('    - {key: write, agent: echo, input: "{{ input.a }} {{ input.b }}", when: "input.c"}'))
    assert "`input.a` is not an input" in message
    assert "`input.b` is not an input" in message
    assert "field `when`: `input.c` is not an input" in message


# --- allowed ---------------------------------------------------------------------------------


def test_where_a_shape_is_not_known_anything_goes(db: Any) -> None:
    accepted(
        document(
            """    - {key: research, agent: echo}
    - {key: echoed, agent: parrot}
    - {key: mapped, agent: researcher, for_each: "[1]"}
    - {key: covered, agent: researcher, fallback: echo}
    - key: write
      agent: echo
      after: [research, echoed, mapped, covered]
      input: "{{ steps.research.output.anything }} {{ steps.echoed.output.x }} {{ steps.mapped.output }} {{ steps.covered.output.y }}\""""
        )
    )


def test_a_name_read_through_default_or_is_defined_may_be_missing(db: Any) -> None:
    accepted(
        document(
            """    - {key: research, agent: researcher}
    - key: write
      agent: echo
      after: [research]
      when: "steps.research.output.verdict is defined or loop is undefined"
      input: "{{ input.style | default('plain') }} {{ steps.research.output.title | d('untitled') }}\""""
        )
    )


def test_a_workflow_without_inputs_may_read_any_input(db: Any) -> None:
    accepted(document('    - {key: write, agent: echo, input: "{{ input.whatever }}"}', inputs="{}"))


def test_dict_methods_and_the_known_keys_pass(db: Any) -> None:
    accepted(
        document(
            """    - {key: research, agent: researcher, input: {topic: "{{ input.get('topic', 'tides') }}"}}
    - key: write
      agent: echo
      after: [research]
      when: "steps.research.status == 'succeeded' and steps.research.output.sources"
      input: "{% for k, v in steps.research.output.items() %}{{ k }}={{ v }} {{ loop.index }}{% endfor %} {{ run.id }} {{ iteration }}\""""
        )
    )


def test_the_output_of_an_agent_defined_in_the_database_is_known_too(db: Any) -> None:
    accepted(document("    - {key: research, agent: researcher}"))
    message = refused(
        """
workflow:
  key: later
  name: Later
  steps:
    - {key: research, agent: researcher}
    - {key: write, agent: echo, after: [research], input: "{{ steps.research.output.title }}"}
"""
    )
    assert "`steps.research.output.title` is not in the output of step `research`" in message


# --- at publish ------------------------------------------------------------------------------


def test_publishing_a_draft_checks_its_names(db: Any) -> None:
    version = accepted(document('    - {key: write, agent: echo, input: "{{ input.topic }}"}'))
    DraftStep.objects.filter(workflow=version.workflow, key="write").update(input="{{ input.topik }}")
    with pytest.raises(SpecError) as caught:
        definitions.publish_draft(version.workflow)
    assert "step 'write': field `input`: `input.topik` is not an input (inputs: tone, topic)" in str(caught.value)
    assert version.workflow.versions.count() == 1


# --- an agent's own templates read the step's input -------------------------------------------

WRITER = """
  - name: writer
    kind: llm
    config: {model: m, base_url: "http://127.0.0.1:9/v1", prompt: "Write about {{ input.topic }} in a {{ input.tone }} tone"}
"""


def test_an_agents_prompt_may_read_only_keys_the_steps_input_has(db: Any) -> None:
    text = document('    - {key: write, agent: writer, input: {topic: "{{ input.topic }}", mood: "{{ input.tone }}"}}')
    message = refused(text.replace("agents:\n", "agents:" + WRITER, 1))
    assert (
        "step 'write': agent 'writer', field `config.prompt`: `input.tone` is not in the step's input "
        "(input: mood, topic)"
    ) in message


def test_a_first_step_without_input_hands_its_agent_the_runs_input(db: Any) -> None:
    ok = document("    - {key: write, agent: writer}")
    accepted(ok.replace("agents:\n", "agents:" + WRITER, 1))
    message = refused(
        document("    - {key: write, agent: writer}", inputs="{topic: {type: string}}").replace(
            "agents:\n", "agents:" + WRITER, 1
        )
    )
    assert "agent 'writer', field `config.prompt`: `input.tone` is not in the step's input (input: topic)" in message


def test_an_agent_whose_step_input_is_not_a_literal_mapping_may_read_anything(db: Any) -> None:
    accepted(
        document('    - {key: write, agent: writer, input: "{{ input }}"}').replace("agents:\n", "agents:" + WRITER, 1)
    )


def test_an_agents_template_may_read_only_what_its_kind_renders_it_with(db: Any) -> None:
    agents = AGENTS.replace('output: "{{ input }}"', 'output: "{{ inputs }} {{ attempt }} {{ agent }}"')
    assert agents != AGENTS
    message = refused(agents + "workflow: {key: w, name: W, steps: [{key: a, agent: echo}]}\n")
    assert "agent 'parrot': field `config.output`: `inputs` is not something this template can read" in message
    assert "`attempt`" not in message and "`agent` is not" not in message
