"""The admin: every page opens, drafts publish (or explain why not), history stays read-only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from orchestration import transitions
from orchestration.models import (
    Agent,
    AgentEvent,
    AgentHealth,
    Attempt,
    DraftStep,
    Run,
    RunEvent,
    StepRun,
    Workflow,
    WorkflowVersion,
)
from orchestration.status import RunStatus
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

PIPELINE = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: demo-writer, kind: simulated, config: {output: {text: "draft about {{ input.research.topic }}"}}}
workflow:
  key: pipeline
  name: Pipeline
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: research, agent: echo, input: {topic: "{{ input.topic }}"}}
    - {key: write, agent: demo-writer, after: [research]}
"""


@pytest.fixture
def admin_client(admin_user: Any) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def finished_run() -> Run:
    load_workflow(PIPELINE)
    run = drive(transitions.start_run(workflow="pipeline", input={"topic": "tides"}))
    assert run.status == RunStatus.SUCCEEDED
    return run


def changelist(model: type) -> str:
    return reverse(f"admin:orchestration_{model._meta.model_name}_changelist")


def change(obj: Any) -> str:
    return reverse(f"admin:orchestration_{obj._meta.model_name}_change", args=[obj.pk])


def publish(client: Client, workflow: Workflow) -> Any:
    """Press "Save and publish draft" on the workflow's change page, as it is."""
    steps = list(workflow.draft_steps.order_by("position", "id"))
    versions = list(workflow.versions.all())
    data: dict[str, Any] = {
        "key": workflow.key,
        "name": workflow.name,
        "description": workflow.description,
        "owner": workflow.owner_id or "",
        "inputs": json.dumps(workflow.inputs),
        "output": workflow.output,
        "draft_steps-TOTAL_FORMS": len(steps),
        "draft_steps-INITIAL_FORMS": len(steps),
        "draft_steps-MIN_NUM_FORMS": 0,
        "draft_steps-MAX_NUM_FORMS": 1000,
        "versions-TOTAL_FORMS": len(versions),
        "versions-INITIAL_FORMS": len(versions),
        "versions-MIN_NUM_FORMS": 0,
        "versions-MAX_NUM_FORMS": 1000,
        "_publish": "Save and publish draft",
    }
    for i, step in enumerate(steps):
        prefix = f"draft_steps-{i}-"
        data.update(
            {
                prefix + "id": step.pk,
                prefix + "workflow": workflow.pk,
                prefix + "position": step.position,
                prefix + "key": step.key,
                prefix + "kind": step.kind,
                prefix + "agent": step.agent_id or "",
                prefix + "sub_workflow": step.sub_workflow_id or "",
                prefix + "after": step.after,
                prefix + "input": "null" if step.input is None else json.dumps(step.input),
                prefix + "when": step.when,
                prefix + "for_each": step.for_each,
                prefix + "concurrency": step.concurrency or "",
                prefix + "loop": "null" if step.loop is None else json.dumps(step.loop),
                prefix + "options": json.dumps(step.options),
            }
        )
    for i, version in enumerate(versions):
        data[f"versions-{i}-id"] = version.pk
        data[f"versions-{i}-workflow"] = workflow.pk
    return client.post(change(workflow), data, follow=True)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- every page opens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", [Agent, Workflow, DraftStep, WorkflowVersion, Run, StepRun, Attempt, RunEvent]
)
def test_every_changelist_and_change_page_opens_for_a_superuser(
    admin_client: Client, finished_run: Run, model: type
) -> None:
    obj = model.objects.order_by("pk").first()
    assert obj is not None
    assert admin_client.get(changelist(model)).status_code == 200
    assert admin_client.get(change(obj)).status_code == 200


def test_the_workflow_change_page_offers_the_publish_button(admin_client: Client, finished_run: Run) -> None:
    page = admin_client.get(change(finished_run.workflow)).content.decode()
    assert 'name="_publish"' in page


def test_a_version_page_shows_the_spec_as_yaml(admin_client: Client, finished_run: Run) -> None:
    page = admin_client.get(change(finished_run.version)).content.decode()
    assert "key: pipeline" in page
    assert "- key: research" in page


def test_the_workflow_list_does_not_query_once_per_workflow(admin_client: Client) -> None:
    load_workflow(PIPELINE)
    with CaptureQueriesContext(connection) as one:
        admin_client.get(changelist(Workflow))
    for n in range(5):
        load_workflow(PIPELINE.replace("key: pipeline", f"key: pipeline-{n}"))
    with CaptureQueriesContext(connection) as six:
        response = admin_client.get(changelist(Workflow))
    assert len(six) == len(one)
    assert "v1" in response.content.decode()


def test_the_run_list_does_not_query_once_per_run(admin_client: Client, finished_run: Run) -> None:
    with CaptureQueriesContext(connection) as one:
        admin_client.get(changelist(Run))
    for _ in range(4):
        drive(transitions.start_run(workflow="pipeline", input={"topic": "more"}))
    with CaptureQueriesContext(connection) as five:
        admin_client.get(changelist(Run))
    assert len(five) == len(one)


# --- publishing ------------------------------------------------------------------------------


def test_a_workflow_drafted_in_the_admin_publishes_as_version_1_then_2(admin_client: Client) -> None:
    load_workflow(PIPELINE.partition("workflow:")[0])  # the agents only
    echo = Agent.objects.get(name="echo")
    added = admin_client.post(
        reverse("admin:orchestration_workflow_add"),
        {
            "key": "drafted",
            "name": "Drafted in the admin",
            "description": "",
            "owner": "",
            "inputs": "{}",
            "output": "",
            "draft_steps-TOTAL_FORMS": 2,
            "draft_steps-INITIAL_FORMS": 0,
            "draft_steps-MIN_NUM_FORMS": 0,
            "draft_steps-MAX_NUM_FORMS": 1000,
            "draft_steps-0-position": 0,
            "draft_steps-0-key": "first",
            "draft_steps-0-kind": "agent",
            "draft_steps-0-agent": echo.pk,
            "draft_steps-0-input": '{"n": 1}',
            "draft_steps-0-options": "{}",
            "draft_steps-0-loop": "null",
            "draft_steps-1-position": 1,
            "draft_steps-1-key": "second",
            "draft_steps-1-kind": "agent",
            "draft_steps-1-agent": echo.pk,
            "draft_steps-1-after": "first",
            "draft_steps-1-input": "null",
            "draft_steps-1-options": '{"retry": {"attempts": 2}}',
            "draft_steps-1-loop": "null",
            "versions-TOTAL_FORMS": 0,
            "versions-INITIAL_FORMS": 0,
            "versions-MIN_NUM_FORMS": 0,
            "versions-MAX_NUM_FORMS": 1000,
            "_continue": "Save and continue editing",
        },
    )
    assert added.status_code == 302, added.context and added.context["errors"]
    workflow = Workflow.objects.get(key="drafted")
    assert not workflow.versions.exists()

    first = publish(admin_client, workflow)
    assert "Published version 1 of drafted." in messages_of(first)
    unchanged = publish(admin_client, workflow)
    assert "Nothing to publish: the draft of drafted is the same as version 1." in messages_of(unchanged)
    workflow.draft_steps.filter(key="second").update(options={"retry": {"attempts": 3}})
    second = publish(admin_client, workflow)
    assert "Published version 2 of drafted." in messages_of(second)

    versions = list(workflow.versions.order_by("number"))
    assert [v.number for v in versions] == [1, 2]
    assert [s["key"] for s in versions[1].spec["steps"]] == ["first", "second"]
    assert versions[0].spec["steps"][1]["retry"] == {"attempts": 2}
    assert versions[1].spec["steps"][1]["retry"] == {"attempts": 3}
    assert versions[1].published_by.username == "admin"


def test_the_publish_action_publishes_every_selected_workflow(admin_client: Client) -> None:
    load_workflow(PIPELINE)
    workflow = Workflow.objects.get(key="pipeline")
    workflow.draft_steps.filter(position=0).update(when="true")
    response = admin_client.post(
        changelist(Workflow),
        {"action": "publish_selected", "_selected_action": [workflow.pk]},
        follow=True,
    )
    assert "Published version 2 of pipeline." in messages_of(response)
    assert workflow.versions.count() == 2


def test_publishing_a_draft_with_a_cycle_shows_the_problem_and_saves_no_version(admin_client: Client) -> None:
    load_workflow(PIPELINE)
    workflow = Workflow.objects.get(key="pipeline")
    DraftStep.objects.filter(workflow=workflow, key="research").update(after="write")

    response = publish(admin_client, workflow)

    assert (
        "workflow 'pipeline': steps form a cycle (research -> write -> research); use `loop` to go back"
        in messages_of(response)
    )
    assert "The draft was saved but not published; fix it and publish again." in messages_of(response)
    assert workflow.versions.count() == 1


def test_publishing_a_draft_that_names_an_unknown_step_in_after_shows_it_and_saves_no_version(
    admin_client: Client,
) -> None:
    load_workflow(PIPELINE)
    workflow = Workflow.objects.get(key="pipeline")
    DraftStep.objects.filter(workflow=workflow, key="write").update(after="research, reserch")

    response = publish(admin_client, workflow)

    assert "workflow 'pipeline', step 'write': field `after` names missing step 'reserch'" in messages_of(
        response
    )
    assert workflow.versions.count() == 1


def test_the_publish_action_reports_every_problem_of_a_bad_draft(admin_client: Client) -> None:
    load_workflow(PIPELINE)
    workflow = Workflow.objects.get(key="pipeline")
    DraftStep.objects.filter(workflow=workflow, key="research").update(after="write")
    DraftStep.objects.filter(workflow=workflow, key="write").update(when="{{ input.topic == }}")

    response = admin_client.post(
        changelist(Workflow), {"action": "publish_selected", "_selected_action": [workflow.pk]}, follow=True
    )

    shown = messages_of(response)
    assert any("step 'write': field `when` does not compile" in m for m in shown)
    assert any("steps form a cycle" in m for m in shown)
    assert workflow.versions.count() == 1


# --- history is read-only ----------------------------------------------------------------------


def test_run_events_cannot_be_changed_or_deleted_even_by_a_superuser(
    admin_client: Client, finished_run: Run
) -> None:
    event = RunEvent.objects.filter(run=finished_run).first()
    assert event is not None
    page = admin_client.get(change(event)).content.decode()
    assert 'name="_save"' not in page
    delete_url = reverse("admin:orchestration_runevent_delete", args=[event.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    before = event.message
    admin_client.post(change(event), {"message": "rewritten", "kind": event.kind, "run": event.run_id})
    event.refresh_from_db()
    assert event.message == before
    assert admin_client.get(reverse("admin:orchestration_runevent_add")).status_code == 403


def test_the_run_event_list_offers_no_delete_action(admin_client: Client, finished_run: Run) -> None:
    page = admin_client.get(changelist(RunEvent)).content.decode()
    assert "delete_selected" not in page


@pytest.mark.parametrize("model", [WorkflowVersion, Run, StepRun, Attempt])
def test_run_history_and_versions_cannot_be_added_or_deleted(
    admin_client: Client, finished_run: Run, model: type
) -> None:
    obj = model.objects.order_by("pk").first()
    name = model._meta.model_name
    assert admin_client.get(reverse(f"admin:orchestration_{name}_add")).status_code == 403
    assert (
        admin_client.post(
            reverse(f"admin:orchestration_{name}_delete", args=[obj.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert model.objects.filter(pk=obj.pk).exists()


# --- cancelling runs ---------------------------------------------------------------------------


def test_cancelling_selected_runs_cancels_the_running_ones_and_explains_the_finished_ones(
    admin_client: Client, finished_run: Run
) -> None:
    running = transitions.start_run(workflow="pipeline", input={"topic": "waves"})

    response = admin_client.post(
        changelist(Run),
        {"action": "cancel_selected", "_selected_action": [running.pk, finished_run.pk]},
        follow=True,
    )

    running.refresh_from_db()
    assert running.status == RunStatus.CANCELLED
    shown = messages_of(response)
    assert "Cancelled 1 run(s)." in shown
    assert f"Not cancelled: run {finished_run.pk} already succeeded." in shown


# --- agents: fallback, circuit breaker, concurrency ---------------------------------------------


@pytest.fixture
def tripped(finished_run: Run) -> Agent:
    """The echo agent with a circuit breaker that has just opened."""
    agent = Agent.objects.get(name="echo")
    agent.fallback = "demo-writer"
    agent.circuit = {"failures": 3, "window": 60.0, "cooldown": 30.0}
    agent.max_concurrency = 4
    agent.save()
    AgentHealth.objects.create(agent=agent, circuit_state="open")
    AgentEvent.objects.create(agent=agent, from_state="closed", to_state="open", message="3 failures within 60s")
    return agent


@pytest.mark.parametrize("model", [AgentHealth, AgentEvent])
def test_agent_health_and_events_open_for_a_superuser(admin_client: Client, tripped: Agent, model: type) -> None:
    obj = model.objects.get()
    assert admin_client.get(changelist(model)).status_code == 200
    page = admin_client.get(change(obj)).content.decode()
    assert "echo" in page
    assert 'name="_save"' not in page


@pytest.mark.parametrize("model", [AgentHealth, AgentEvent])
def test_agent_health_and_events_cannot_be_added_changed_or_deleted(
    admin_client: Client, tripped: Agent, model: type
) -> None:
    obj = model.objects.get()
    name = model._meta.model_name
    assert admin_client.get(reverse(f"admin:orchestration_{name}_add")).status_code == 403
    delete = reverse(f"admin:orchestration_{name}_delete", args=[obj.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert "delete_selected" not in admin_client.get(changelist(model)).content.decode()
    admin_client.post(change(obj), {"circuit_state": "closed", "to_state": "closed", "agent": tripped.pk})
    assert AgentHealth.objects.get().circuit_state == "open"
    assert AgentEvent.objects.get().to_state == "open"


def test_the_agent_page_edits_fallback_circuit_and_concurrency_and_shows_its_health(
    admin_client: Client, tripped: Agent
) -> None:
    page = admin_client.get(change(tripped)).content.decode()
    for field in ("fallback", "circuit", "max_concurrency"):
        assert f'name="{field}"' in page, field
    assert 'value="demo-writer"' in page
    assert "health (circuit breaker)" in page.lower()
    assert '<strong style="color: #c62828">Open</strong>' in page
    events = reverse("admin:orchestration_agentevent_changelist") + f"?agent__id__exact={tripped.pk}"
    assert f'<a href="{events}">1 events</a>' in page


def test_the_agent_list_shows_each_circuit_in_one_query(admin_client: Client, tripped: Agent) -> None:
    for index in range(10):
        agent = Agent.objects.create(name=f"extra-{index}", kind="python", circuit={"failures": 1, "window": 60.0, "cooldown": 1.0})
        AgentHealth.objects.create(agent=agent, circuit_state="half_open")
    Agent.objects.create(name="unguarded", kind="python")
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(changelist(Agent)).content.decode()
    assert len(queries) < 12
    assert page.count('<strong style="color: #b54708">Half-open (one trial)</strong>') == 10
    assert '<strong style="color: #c62828">Open</strong>' in page
    assert "no breaker" in page


def test_the_step_run_page_names_the_agent_a_fallback_replaced(admin_client: Client, finished_run: Run) -> None:
    step = StepRun.objects.filter(run=finished_run, step_key="write").get()
    StepRun.objects.filter(pk=step.pk).update(fallback_from="writer-llm")
    page = admin_client.get(change(step)).content.decode()
    assert "Fallback from" in page and "writer-llm" in page


def _agent_form(agent: Agent, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": agent.name,
        "kind": agent.kind,
        "description": agent.description,
        "config": json.dumps(agent.config),
        "timeout_seconds": "",
        "retry": json.dumps(agent.retry),
        "fallback": agent.fallback,
        "circuit": json.dumps(agent.circuit),
        "max_concurrency": "",
        "health-TOTAL_FORMS": 0,
        "health-INITIAL_FORMS": 0,
        "health-MIN_NUM_FORMS": 0,
        "health-MAX_NUM_FORMS": 1,
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"circuit": "null"}, "circuit", "must be a mapping (failures, window, cooldown); {} for none"),
        ({"circuit": '{"failures": 0}'}, "circuit", "field `circuit.failures` must be a whole number of at least 1"),
        ({"circuit": '{"window": "400d"}'}, "circuit", "longer than the maximum of 366 days"),
        ({"retry": "null"}, "retry", "must be a mapping (attempts, backoff, max_backoff, jitter)"),
        ({"config": "[]"}, "config", "must be a mapping"),
        ({"fallback": "echo"}, "fallback", "must name another agent, not this one"),
        ({"fallback": "ghost"}, "fallback", "unknown agent &#x27;ghost&#x27;"),
    ],
)
def test_a_bad_agent_edit_in_admin_is_a_field_error_and_changes_nothing(
    admin_client: Client, finished_run: Run, changes: dict[str, Any], field: str, problem: str
) -> None:
    agent = Agent.objects.get(name="echo")
    before = (agent.circuit, agent.retry, agent.fallback, agent.config)
    response = admin_client.post(change(agent), _agent_form(agent, **changes))
    assert response.status_code == 200  # the form again, not a 500 or a redirect
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert problem in response.content.decode()
    agent.refresh_from_db()
    assert (agent.circuit, agent.retry, agent.fallback, agent.config) == before


def test_an_agent_edit_in_admin_keeps_an_empty_circuit_empty(admin_client: Client, finished_run: Run) -> None:
    agent = Agent.objects.get(name="echo")
    response = admin_client.post(change(agent), _agent_form(agent, circuit="{}", description="edited"))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    agent.refresh_from_db()
    assert agent.description == "edited" and agent.circuit == {}
