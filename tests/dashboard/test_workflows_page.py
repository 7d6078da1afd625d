"""The workflows page, and starting a run from the form generated from a workflow's inputs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from orchestration import transitions
from orchestration.models import Run, Workflow, WorkflowVersion
from tests.dashboard.conftest import DIGEST
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

START = reverse("dashboard:start", args=["digest"])


def card(page: str, key: str) -> str:
    match = re.search(rf'<article class="card workflow-card" id="workflow-{key}">(.*?)</article>', page, re.DOTALL)
    assert match, f"no card for {key}"
    return match.group(1)


def test_each_workflow_shows_its_description_owner_version_and_runs_by_status(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    drive(transitions.start_run(workflow="digest", input={"topic": "a"}))
    drive(transitions.start_run(workflow="digest", input={"topic": "b"}))
    transitions.start_run(workflow="digest", input={"topic": "c"})
    load_workflow(digest_text_with_version_2())

    page = card(ops_client.get(reverse("dashboard:workflows")).content.decode(), "digest")

    assert "Daily digest" in page
    assert "Researches a topic, summarises each section" in page
    assert "<dd>ops</dd>" in page
    assert "v2 published" in page
    assert ">2 succeeded<" in page
    assert ">1 running<" in page
    assert 'href="/runs/?workflow=digest&amp;status=succeeded"' in page


def digest_text_with_version_2() -> str:
    return DIGEST.replace("count: {type: integer, default: 3}", "count: {type: integer, default: 4}")


def test_the_start_form_follows_the_input_schema(ops_client: Client, digest: WorkflowVersion) -> None:
    form = card(ops_client.get(reverse("dashboard:workflows")).content.decode(), "digest")
    assert f'action="{START}"' in form
    assert re.search(r'<input type="text" id="input-digest-topic" name="topic" value="" required aria-describedby="input-digest-topic-help">', form)
    assert 'title="required">*</abbr>' in form
    assert "What the digest is about" in form
    assert re.search(r'<input type="number" id="input-digest-count" name="count" value="3" step="1">', form)
    assert re.search(r'<textarea id="input-digest-sections" name="sections"[^>]*>\[\n  &quot;news&quot;,\n  &quot;weather&quot;\n\]</textarea>', form)
    assert re.search(r'<input type="checkbox" id="input-digest-draft" name="draft" value="true">', form)
    assert '<option value="plain" selected>plain</option>' in form


def test_starting_a_run_creates_it_and_goes_to_its_page(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    response = ops_client.post(
        START, {"topic": "tides", "count": "5", "sections": '["a"]', "draft": "true", "tone": "cheerful"}
    )
    run = Run.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:run", args=[run.pk])
    assert run.input == {"topic": "tides", "count": 5, "sections": ["a"], "draft": True, "tone": "cheerful"}
    assert run.started_by == ops
    assert run.trigger == "dashboard"


def test_blank_fields_take_their_defaults_and_an_unticked_box_is_false(
    ops_client: Client, digest: WorkflowVersion
) -> None:
    ops_client.post(START, {"topic": "tides", "count": "", "sections": "  "})
    assert Run.objects.get().input == {
        "topic": "tides",
        "count": 3,
        "sections": ["news", "weather"],
        "draft": False,
        "tone": "plain",
    }


def test_htmx_is_sent_to_the_new_run_with_a_client_redirect(ops_client: Client, digest: WorkflowVersion) -> None:
    response = ops_client.post(START, {"topic": "tides"}, HTTP_HX_REQUEST="true")
    assert response["HX-Redirect"] == reverse("dashboard:run", args=[Run.objects.get().pk])


def test_a_missing_required_input_is_named_and_nothing_is_started(ops_client: Client, digest: WorkflowVersion) -> None:
    response = ops_client.post(START, {"count": "4"})
    page = response.content.decode()
    assert response.status_code == 422  # refused, with the page showing why
    assert "The run was not started." in page
    assert "topic: required" in page
    assert '<p class="field__error" id="input-digest-topic-error">topic: required</p>' in page
    assert 'name="count" value="4"' in page  # what was typed stays typed
    assert "<html" in page  # the whole workflows page, this form showing the problem
    assert not Run.objects.exists()


def test_over_htmx_a_bad_input_returns_only_the_form_with_status_422(
    ops_client: Client, digest: WorkflowVersion
) -> None:
    response = ops_client.post(START, {"topic": "tides", "count": "three"}, HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert response.status_code == 422
    assert page.strip().startswith('<form id="start-digest"')
    assert "count: enter a whole number" in page
    assert not Run.objects.exists()


def test_a_list_that_is_not_json_is_named(ops_client: Client, digest: WorkflowVersion) -> None:
    page = ops_client.post(START, {"topic": "tides", "sections": "[news"}).content.decode()
    assert "sections: not valid JSON" in page
    assert not Run.objects.exists()


def test_json_of_the_wrong_type_is_named_by_the_engine_check(ops_client: Client, digest: WorkflowVersion) -> None:
    page = ops_client.post(START, {"topic": "tides", "sections": '{"a": 1}'}).content.decode()
    assert "sections: expected list, got dict" in page
    assert not Run.objects.exists()


def test_a_value_outside_the_choices_is_named(ops_client: Client, digest: WorkflowVersion) -> None:
    page = ops_client.post(START, {"topic": "tides", "tone": "angry"}).content.decode()
    assert "tone: &#x27;angry&#x27; is not one of the choices" in page
    assert not Run.objects.exists()


def test_starting_an_unknown_workflow_is_not_found(ops_client: Client) -> None:
    assert ops_client.post(reverse("dashboard:start", args=["nope"])).status_code == 404


def test_a_workflow_with_no_published_version_cannot_be_started(ops_client: Client, ops: Any) -> None:
    Workflow.objects.create(key="draft-only", name="Draft only", owner=ops)
    page = ops_client.get(reverse("dashboard:workflows")).content.decode()
    assert "not published" in card(page, "draft-only")
    response = ops_client.post(reverse("dashboard:start", args=["draft-only"]))
    assert "has no published version" in response.content.decode()
    assert not Run.objects.exists()


def test_starting_needs_a_post(ops_client: Client, digest: WorkflowVersion) -> None:
    assert ops_client.get(START).status_code == 405


def test_the_workflows_page_takes_a_fixed_number_of_queries(
    ops_client: Client, ops: Any, digest: WorkflowVersion, django_assert_max_num_queries: Any
) -> None:
    for key in ("one", "two", "three", "four"):
        load_workflow(f"workflow:\n  key: {key}\n  name: {key}\n  owner: ops\n  steps:\n    - {{key: s, agent: echo}}\n")
        transitions.start_run(workflow=key)
    # session, user, workflows with owner and latest version id, which ops may start, the versions, run counts,
    # the agents (for LLM warnings).
    with django_assert_max_num_queries(7):
        response = ops_client.get(reverse("dashboard:workflows"))
    assert response.status_code == 200
    page = response.content.decode()
    for key in ("digest", "one", "two", "three", "four"):
        assert f'id="workflow-{key}"' in page, key


# --- language models that are not configured ---------------------------------------------------

LLM_AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: stand-in, kind: simulated, config: {output: "stand-in"}}
  - {name: writer, kind: llm, config: {model: gpt-4o-mini}, fallback: stand-in}
  - {name: lonely-writer, kind: llm, config: {model: gpt-4o-mini}}
  - {name: flaky, kind: python, config: {callable: "tests.agents.basic:echo"}, fallback: lonely-writer}
"""


def llm_workflow(key: str, step: str) -> None:
    load_workflow(LLM_AGENTS + f"workflow:\n  key: {key}\n  name: {key}\n  owner: ops\n  steps:\n    - {step}\n")


def warnings_of(page: str, key: str) -> list[str]:
    return [" ".join(w.split()) for w in re.findall(r'<li class="llm-warning">(.*?)</li>', card(page, key), re.DOTALL)]


def test_a_workflow_using_an_unconfigured_llm_agent_warns_and_names_its_fallback(
    ops_client: Client, ops: Any, no_llm_server: None
) -> None:
    llm_workflow("notes", "{key: summarise, agent: writer}")
    [warning] = warnings_of(ops_client.get(reverse("dashboard:workflows")).content.decode(), "notes")
    assert '<span class="tag tag--warn">LLM not configured: no base_url and OPENAI_BASE_URL is not set</span>' in warning
    assert f'agent <a href="{reverse("dashboard:agents")}#agent-writer">writer</a>; fallback <strong>stand-in</strong> answers instead' in warning


@pytest.mark.parametrize(
    "step",
    [
        "{key: a, agent: flaky}",  # the agent's own fallback is an LLM
        "{key: a, agent: echo, fallback: lonely-writer}",  # the step's fallback is
        "{key: a, agent: echo, compensate: {agent: lonely-writer}}",  # its undo is
    ],
)
def test_an_llm_agent_used_as_a_fallback_or_compensation_warns_too(
    ops_client: Client, ops: Any, no_llm_server: None, step: str
) -> None:
    llm_workflow("indirect", step)
    [warning] = warnings_of(ops_client.get(reverse("dashboard:workflows")).content.decode(), "indirect")
    assert "LLM not configured: no base_url and OPENAI_BASE_URL is not set" in warning
    assert ">lonely-writer</a>; its steps will fail" in warning


def test_a_missing_api_key_is_named(ops_client: Client, ops: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    llm_workflow("notes", "{key: summarise, agent: writer}")
    [warning] = warnings_of(ops_client.get(reverse("dashboard:workflows")).content.decode(), "notes")
    assert "LLM not configured: environment variable OPENAI_API_KEY is not set" in warning


def test_no_warning_once_the_server_and_key_are_set_or_for_workflows_without_llm_agents(
    ops_client: Client, ops: Any, digest: WorkflowVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm_workflow("notes", "{key: summarise, agent: writer}")
    page = ops_client.get(reverse("dashboard:workflows")).content.decode()
    assert warnings_of(page, "digest") == []
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    page = ops_client.get(reverse("dashboard:workflows")).content.decode()
    assert "LLM not configured" not in page


def test_a_multi_line_default_is_offered_in_a_textarea(ops_client: Client, ops: Any) -> None:
    load_workflow(
        'agents:\n  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}\n'
        "workflow:\n  key: notes\n  name: Notes\n  owner: ops\n  inputs:\n    notes: {type: string, default: \"first line\\nsecond line\"}\n"
        "  steps:\n    - {key: s, agent: echo}\n"
    )
    form = card(ops_client.get(reverse("dashboard:workflows")).content.decode(), "notes")
    assert '<textarea id="input-notes-notes" name="notes" rows="2">first line\nsecond line</textarea>' in form
