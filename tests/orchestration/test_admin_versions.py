"""Agent versions in the admin: edited inline on the agent's page, their weights changed only
through definitions.set_version_weights (so the weights history records who and why), their
configs checked as the agent's is, and a version that runs used is never deleted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from orchestration import transitions
from orchestration.models import Agent, AgentVersion, AgentVersionEvent, Attempt
from orchestration.specs import forget_agents
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

FILE = """
agents:
  - name: writer
    kind: python
    config: {callable: "tests.agents.basic:echo"}
    versions:
      - {label: stable, weight: 100}
workflow:
  key: wf
  name: wf
  steps:
    - {key: a, agent: writer, input: 1}
"""


@pytest.fixture
def admin_client(admin_user: Any) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def writer() -> Agent:
    load_workflow(FILE)
    return Agent.objects.get(name="writer")


def page(agent: Agent) -> str:
    return reverse("admin:orchestration_agent_change", args=[agent.pk])


def posted(client: Client, agent: Agent, versions: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    """The agent's page as a browser would post it back, with these version forms."""
    response = client.get(page(agent))
    form = response.context["adminform"].form
    data: dict[str, Any] = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        for name in management.fields:
            data[f"{formset.prefix}-{name}"] = management[name].value()
        if formset.model is AgentVersion:
            data[f"{formset.prefix}-TOTAL_FORMS"] = len(versions)
            for i, version in enumerate(versions):
                for name, value in version.items():
                    data[f"{formset.prefix}-{i}-{name}"] = json.dumps(value) if name == "config" else value
                data[f"{formset.prefix}-{i}-agent"] = agent.pk
    data.update(changes)
    return data


def stable_form(agent: Agent, **changes: Any) -> dict[str, Any]:
    stable = agent.versions.get(label="stable")
    return {"id": stable.pk, "label": "stable", "weight": stable.weight, "config": stable.config, "note": stable.note, **changes}


def test_the_agent_page_lists_its_versions_and_the_history_of_their_weights(admin_client: Client, writer: Agent) -> None:
    html = admin_client.get(page(writer)).content.decode()
    assert "Versions (configs laid over the agent" in html and 'value="stable"' in html
    assert "Weights history" in html and "imported from a workflow file" in html


def test_a_canary_added_in_admin_gets_its_weight_through_the_recorded_weights(
    admin_client: Client, writer: Agent, admin_user: Any
) -> None:
    canary = {"label": "canary", "weight": 10, "config": {"callable": "tests.agents.basic:upper"}, "note": "new prompt"}
    response = admin_client.post(page(writer), posted(admin_client, writer, [stable_form(writer, weight=90), canary]))
    assert response.status_code == 302, response.context and [f.errors for f in response.context["inline_admin_formsets"][1].formset]
    assert dict(writer.versions.values_list("label", "weight")) == {"stable": 90, "canary": 10}
    event = AgentVersionEvent.objects.filter(agent=writer).latest("id")
    assert (event.weights_before, event.weights_after) == ({"stable": 100, "canary": 0}, {"stable": 90, "canary": 10})
    assert (event.actor, event.reason) == (admin_user, "changed in admin")


def test_a_save_that_changes_no_weight_records_no_weight_change(admin_client: Client, writer: Agent) -> None:
    before = AgentVersionEvent.objects.count()
    response = admin_client.post(page(writer), posted(admin_client, writer, [stable_form(writer, note="still the one")]))
    assert response.status_code == 302
    assert writer.versions.get().note == "still the one"
    assert AgentVersionEvent.objects.count() == before


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ({"config": {"callable": "os:system"}}, "config.callable"),
        ({"config": []}, "must be a mapping"),
        ({"weight": 10001}, "from 0 to 10000"),
        ({"label": "two words"}, "slug"),
    ],
)
def test_a_bad_version_is_a_field_error_and_changes_nothing(
    admin_client: Client, writer: Agent, version: dict[str, Any], problem: str
) -> None:
    bad = {"label": "canary", "weight": 1, "config": {}, "note": "", **version}
    data = posted(admin_client, writer, [stable_form(writer), bad])
    if bad["config"] == []:
        data["versions-1-config"] = "[]"
    response = admin_client.post(page(writer), data)
    assert response.status_code == 200
    assert problem in response.content.decode()
    assert list(writer.versions.values_list("label", flat=True)) == ["stable"]


def test_an_http_versions_header_may_not_read_a_variable_an_agent_may_not(admin_client: Client) -> None:
    load_workflow('agents:\n  - {name: caller, kind: http, config: {url: "https://example.com/x"}}\n')
    caller = Agent.objects.get(name="caller")
    leaky = {"label": "leaky", "weight": 1, "config": {"headers": {"Authorization": "${BATON_SECRET_KEY}"}}, "note": ""}
    response = admin_client.post(page(caller), posted(admin_client, caller, [leaky]))
    assert response.status_code == 200 and "may not be read by agents" in response.content.decode()
    assert not caller.versions.exists()


def test_deleting_a_version_that_runs_used_is_refused_with_a_message(admin_client: Client, writer: Agent) -> None:
    drive(transitions.start_run(workflow="wf"))
    assert Attempt.objects.filter(agent_version__label="stable").exists()
    data = posted(admin_client, writer, [stable_form(writer, DELETE="on")])
    response = admin_client.post(page(writer), data)
    assert response.status_code == 200
    assert "would require deleting the following protected related objects" in response.content.decode()
    assert writer.versions.filter(label="stable").exists()
    # Deleting the agent itself shows Django's page of what protects it, not a 500.
    delete = reverse("admin:orchestration_agent_delete", args=[writer.pk])
    assert "Cannot delete agent" in admin_client.get(delete).content.decode()
    response = admin_client.post(delete, {"post": "yes"})
    assert response.status_code == 200 and "Cannot delete agent" in response.content.decode()
    assert Agent.objects.filter(pk=writer.pk).exists()


def test_an_unused_version_is_deleted_from_the_inline(admin_client: Client, writer: Agent) -> None:
    response = admin_client.post(page(writer), posted(admin_client, writer, [stable_form(writer, DELETE="on")]))
    assert response.status_code == 302
    assert not writer.versions.exists()


def test_the_attempt_pages_show_the_version_each_attempt_ran(admin_client: Client, writer: Agent) -> None:
    forget_agents()
    run = drive(transitions.start_run(workflow="wf"))
    attempt = Attempt.objects.get(step_run__run=run)
    assert attempt.agent_version is not None
    listing = admin_client.get(reverse("admin:orchestration_attempt_changelist")).content.decode()
    assert "<td class=\"field-version_label\">stable</td>" in listing
    detail = admin_client.get(reverse("admin:orchestration_attempt_change", args=[attempt.pk])).content.decode()
    assert "writer@stable" in detail
    step = admin_client.get(reverse("admin:orchestration_steprun_change", args=[attempt.step_run_id])).content.decode()
    assert "field-version_label" in step and ">stable<" in step


def test_the_agent_page_names_the_variables_its_versions_read_and_never_their_values(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_SECRET_CANARY_TOKEN", "canary-secret-value")
    load_workflow(
        'agents:\n  - name: caller\n    kind: http\n    config: {url: "https://example.com/x"}\n'
        '    versions: [{label: canary, weight: 1, config: {headers: {X-Key: "${BATON_SECRET_CANARY_TOKEN}"}}}]\n'
    )
    html = admin_client.get(page(Agent.objects.get(name="caller"))).content.decode()
    assert "<code>BATON_SECRET_CANARY_TOKEN</code>: defined on this server" in html
    assert "canary-secret-value" not in html
