"""The admin: every page opens, drafts publish (or explain why not), history stays read-only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.models import Q
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
        first = admin_client.get(changelist(Workflow))
    assert first.status_code == 200
    for n in range(5):
        load_workflow(PIPELINE.replace("key: pipeline", f"key: pipeline-{n}"))
    with CaptureQueriesContext(connection) as six:
        response = admin_client.get(changelist(Workflow))
    assert response.status_code == 200
    assert len(six) == len(one)
    assert response.content.decode().count('name="_selected_action"') == 6
    assert "v1" in response.content.decode()


def test_the_run_list_does_not_query_once_per_run(admin_client: Client, finished_run: Run) -> None:
    with CaptureQueriesContext(connection) as one:
        first = admin_client.get(changelist(Run))
    assert first.status_code == 200
    assert first.content.decode().count('name="_selected_action"') == 1
    for _ in range(4):
        drive(transitions.start_run(workflow="pipeline", input={"topic": "more"}))
    with CaptureQueriesContext(connection) as five:
        response = admin_client.get(changelist(Run))
    assert response.status_code == 200
    assert response.content.decode().count('name="_selected_action"') == 5
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


# --- staff who are not superusers see what orchestration.access shows them ----------------------

SHARED = PIPELINE.replace("key: pipeline", "key: shared").replace(
    "name: Pipeline", "name: Shared\n  access: {operators: [operations], viewers: [auditors]}"
)


def staff(username: str, group: str, *perms: str) -> Client:
    """A staff member of `group` with view rights on every orchestration model, plus `perms`."""
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pass", is_staff=True)
    user.groups.add(Group.objects.get_or_create(name=group)[0])
    codenames = Q(codename__startswith="view_") | Q(codename__in=perms)
    user.user_permissions.add(*Permission.objects.filter(codenames, content_type__app_label="orchestration"))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def two_workflows(finished_run: Run) -> tuple[Run, Run]:
    """A run of `pipeline` (nobody's but superusers') and a run of `shared`."""
    Group.objects.get_or_create(name="operations")
    Group.objects.get_or_create(name="auditors")
    load_workflow(SHARED)
    return finished_run, drive(transitions.start_run(workflow="shared", input={"topic": "tides"}))


@pytest.mark.parametrize("model", [Workflow, DraftStep, WorkflowVersion, Run, StepRun, Attempt, RunEvent])
def test_a_staff_member_sees_only_the_workflows_and_runs_they_may_see(
    two_workflows: tuple[Run, Run], model: type
) -> None:
    client = staff("auditor", "auditors")
    path = {
        Workflow: "", DraftStep: "workflow", WorkflowVersion: "workflow", Run: "workflow",
        StepRun: "run__workflow", Attempt: "step_run__run__workflow", RunEvent: "run__workflow",
    }[model]
    field = f"{path}__key" if path else "key"
    visible = model.objects.filter(**{field: "shared"}).order_by("pk").first()
    invisible = model.objects.filter(**{field: "pipeline"}).order_by("pk").first()
    assert visible is not None and invisible is not None
    response = client.get(changelist(model))
    assert response.status_code == 200
    listed = {obj.pk for obj in response.context["cl"].result_list}
    assert listed == set(model.objects.filter(**{field: "shared"}).values_list("pk", flat=True))
    assert client.get(change(visible)).status_code == 200
    # Not theirs: the admin says the object does not exist, as for a wrong id.
    response = client.get(change(invisible), follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:index")
    assert "doesn’t exist" in messages_of(response)[0]


def test_the_run_filters_name_only_the_workflows_the_staff_member_sees(two_workflows: tuple[Run, Run]) -> None:
    client = staff("auditor", "auditors")
    for model in (Run, WorkflowVersion):
        page = client.get(changelist(model)).content.decode()
        assert "Shared" in page
        assert "Pipeline" not in page and "pipeline" not in page, model


def test_a_viewer_with_the_change_right_cannot_cancel_a_run_from_the_admin(two_workflows: tuple[Run, Run]) -> None:
    _, shared = two_workflows
    running = transitions.start_run(workflow="shared", input={"topic": "waves"})
    response = staff("auditor", "auditors", "change_run").post(
        changelist(Run), {"action": "cancel_selected", "_selected_action": [running.pk]}, follow=True
    )
    running.refresh_from_db()
    assert running.status == RunStatus.RUNNING
    assert f"Not cancelled: you may not cancel run {running.pk}." in messages_of(response)
    # An operator with the same right may.
    staff("operator", "operations", "change_run").post(
        changelist(Run), {"action": "cancel_selected", "_selected_action": [running.pk]}
    )
    running.refresh_from_db()
    assert running.status == RunStatus.CANCELLED


def test_only_a_superuser_changes_who_has_access_to_a_workflow(two_workflows: tuple[Run, Run]) -> None:
    workflow = Workflow.objects.get(key="shared")
    client = staff("operator", "operations", "change_workflow", "change_draftstep")
    page = client.get(change(workflow)).content.decode()
    assert 'name="operator_groups"' not in page and 'name="owner"' not in page
    response = publish_as(client, workflow, operator_groups=[Group.objects.create(name="everyone").pk], owner="")
    assert response.status_code == 302  # saved, but not the access fields
    assert set(workflow.operator_groups.values_list("name", flat=True)) == {"operations"}
    workflow.refresh_from_db()
    assert workflow.owner is None
    # A viewer with the same rights may not change the workflow at all.
    viewer = staff("auditor", "auditors", "change_workflow", "change_draftstep")
    assert 'name="_publish"' not in viewer.get(change(workflow)).content.decode()
    assert publish_as(viewer, workflow).status_code == 403


def test_a_workflow_added_by_a_staff_member_is_theirs(db: Any) -> None:
    client = staff("maker", "makers", "add_workflow", "change_workflow")
    response = client.post(
        reverse("admin:orchestration_workflow_add"),
        {
            "key": "mine", "name": "Mine", "description": "", "inputs": "{}", "output": "",
            "draft_steps-TOTAL_FORMS": 0, "draft_steps-INITIAL_FORMS": 0,
            "versions-TOTAL_FORMS": 0, "versions-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    workflow = Workflow.objects.get(key="mine")
    assert workflow.owner is not None and workflow.owner.username == "maker"
    assert client.get(change(workflow)).status_code == 200


def test_a_draft_step_offers_only_sub_workflows_one_sees_or_already_calls(two_workflows: tuple[Run, Run]) -> None:
    load_workflow(
        "workflow:\n  key: caller\n  name: Caller\n  access: {operators: [operations]}\n"
        "  steps:\n    - {key: inner, workflow: pipeline}\n"
    )
    load_workflow(PIPELINE.replace("key: pipeline", "key: unrelated").replace("name: Pipeline", "name: Unrelated"))
    page = staff("operator", "operations", "change_workflow", "change_draftstep").get(
        change(Workflow.objects.get(key="caller"))
    ).content.decode()
    choices = page[page.index('name="draft_steps-0-sub_workflow"') :]
    choices = choices[: choices.index("</select>")]
    assert ">Pipeline</option>" in choices and ">Shared</option>" in choices
    assert "Unrelated" not in choices


def publish_as(client: Client, workflow: Workflow, **extra: Any) -> Any:
    data = {
        "key": workflow.key, "name": workflow.name, "description": workflow.description,
        "inputs": json.dumps(workflow.inputs), "output": workflow.output,
        "draft_steps-TOTAL_FORMS": 0, "draft_steps-INITIAL_FORMS": 0,
        "versions-TOTAL_FORMS": 0, "versions-INITIAL_FORMS": 0,
        **extra,
    }
    return client.post(change(workflow), data)


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
    assert '<strong class="baton-status baton-status--open">Open</strong>' in page
    events = reverse("admin:orchestration_agentevent_changelist") + f"?agent__id__exact={tripped.pk}"
    assert f'<a href="{events}">1 events</a>' in page


def test_the_agent_list_shows_each_circuit_in_one_query(admin_client: Client, tripped: Agent) -> None:
    for index in range(10):
        agent = Agent.objects.create(name=f"extra-{index}", kind="python", circuit={"failures": 1, "window": 60.0, "cooldown": 1.0})
        AgentHealth.objects.create(agent=agent, circuit_state="half_open")
    Agent.objects.create(name="unguarded", kind="python")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(changelist(Agent))
    assert response.status_code == 200
    page = response.content.decode()
    assert len(queries) < 12
    assert page.count('<strong class="baton-status baton-status--half_open">Half-open (one trial)</strong>') == 10
    assert '<strong class="baton-status baton-status--open">Open</strong>' in page
    assert "no breaker" in page


def test_the_step_run_page_names_the_agent_a_fallback_replaced(admin_client: Client, finished_run: Run) -> None:
    step = StepRun.objects.filter(run=finished_run, step_key="write").get()
    StepRun.objects.filter(pk=step.pk).update(fallback_from="writer-llm")
    page = admin_client.get(change(step)).content.decode()
    assert "Fallback from" in page and "writer-llm" in page


# ---------------------------------------------------------------------------------------------
# Agents: what an agent may run and read is the deployment's choice, not the editor's


@pytest.fixture
def agent_editor(db: Any) -> Client:
    """Staff with add/change on agents only: the person who ran `cProfile:run` on the workers."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("editor", "editor@example.com", "editor-pass-1", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="orchestration", codename__in=["add_agent", "change_agent", "view_agent"])
    )
    client = Client()
    client.force_login(user)
    return client


def agent_form(client: Client, url: str, **changes: Any) -> dict[str, Any]:
    """The agent form as the page shows it, with `changes` applied: what a browser would post."""
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["adminform"].form
    data: dict[str, Any] = {}
    for name in form.fields:
        value = form[name].value()
        data[name] = "" if value is None else value
    for inline in response.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        for name in management.fields:
            data[f"{inline.formset.prefix}-{name}"] = management[name].value()
    for name, value in changes.items():
        data[name] = json.dumps(value) if isinstance(value, dict) else value
    return data


def add_agent_url() -> str:
    return reverse("admin:orchestration_agent_add")


def test_the_agent_form_offers_the_registered_callables_as_choices(agent_editor: Client) -> None:
    form = agent_editor.get(add_agent_url()).context["adminform"].form
    offered = [value for value, _ in form.fields["callable"].choices]
    assert "tests.agents.basic:echo" in offered
    assert "orchestration.bench_agents:noop" in offered
    # Only functions defined in a listed module: not what it imports, not private helpers.
    assert "tests.agents.basic:AgentResult" not in offered and "tests.agents.basic:PermanentError" not in offered
    assert not [value for value in offered if value.startswith(("cProfile", "os", "subprocess"))]


def test_a_forged_post_with_an_unregistered_callable_is_refused_and_nothing_changes(
    agent_editor: Client, finished_run: Run
) -> None:
    echo = Agent.objects.get(name="echo")
    before = dict(echo.config)
    response = agent_editor.post(change(echo), agent_form(agent_editor, change(echo), callable="cProfile:run"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Select a valid choice. cProfile:run is not one of the available choices." in errors["callable"]
    echo.refresh_from_db()
    assert echo.config == before


def test_a_forged_post_adding_an_agent_with_an_unregistered_callable_saves_nothing(agent_editor: Client) -> None:
    data = agent_form(agent_editor, add_agent_url(), name="runner", kind="python", callable="cProfile:run", config={})
    response = agent_editor.post(add_agent_url(), data)
    assert response.status_code == 200 and response.context["adminform"].form.errors["callable"]
    assert not Agent.objects.filter(name="runner").exists()


def test_a_callable_typed_into_the_config_is_replaced_by_the_chosen_one(agent_editor: Client, finished_run: Run) -> None:
    echo = Agent.objects.get(name="echo")
    data = agent_form(agent_editor, change(echo), callable="tests.agents.basic:upper", config={"callable": "cProfile:run"})
    response = agent_editor.post(change(echo), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    echo.refresh_from_db()
    assert echo.config == {"callable": "tests.agents.basic:upper"}


def test_a_python_agent_without_a_callable_is_refused(agent_editor: Client) -> None:
    data = agent_form(agent_editor, add_agent_url(), name="nothing", kind="python", callable="", config={})
    response = agent_editor.post(add_agent_url(), data)
    assert response.context["adminform"].form.errors["callable"] == ["A python agent needs a callable; choose one."]
    assert not Agent.objects.filter(name="nothing").exists()


@pytest.mark.parametrize("variable", ["BATON_SECRET_KEY", "HOME", "DATABASE_URL"])
def test_an_http_header_reading_a_variable_off_the_allow_list_is_refused(agent_editor: Client, variable: str) -> None:
    config = {"url": "https://echo.example.com/", "headers": {"Authorization": f"Bearer ${{{variable}}}"}}
    data = agent_form(agent_editor, add_agent_url(), name="leaky", kind="http", config=config)
    response = agent_editor.post(add_agent_url(), data)
    assert response.context["adminform"].form.errors["config"] == [
        f"field `config.headers.Authorization`: environment variable {variable} may not be read by agents "
        "(it is not on BATON_AGENT_SECRETS)"
    ]
    assert not Agent.objects.filter(name="leaky").exists()


def test_an_llm_agent_whose_key_variable_is_off_the_allow_list_is_refused(agent_editor: Client) -> None:
    config = {"model": "m", "base_url": "https://llm.example.com/v1", "api_key_env": "BATON_SECRET_KEY"}
    data = agent_form(agent_editor, add_agent_url(), name="keyed", kind="llm", config=config)
    response = agent_editor.post(add_agent_url(), data)
    assert "field `config.api_key_env`: environment variable BATON_SECRET_KEY may not be read by agents" in (
        response.context["adminform"].form.errors["config"][0]
    )


def test_an_http_agent_reading_allowed_variables_saves(agent_editor: Client) -> None:
    config = {"url": "https://echo.example.com/", "headers": {"Authorization": "Bearer ${BATON_SECRET_CRM}"}}
    response = agent_editor.post(add_agent_url(), agent_form(agent_editor, add_agent_url(), name="crm", kind="http", config=config))
    assert response.status_code == 302
    assert Agent.objects.get(name="crm").config == config


def test_the_agent_page_says_which_variables_are_defined_here_and_never_their_values(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_SECRET_CRM", "crm-value-4f1e")
    monkeypatch.delenv("BATON_SECRET_UNSET", raising=False)
    monkeypatch.setenv("NOT_LISTED", "other-value-77aa")
    headers = {"Authorization": "Bearer ${BATON_SECRET_CRM}", "X-Other": "${BATON_SECRET_UNSET}", "X-Sneaky": "${NOT_LISTED}"}
    # Written directly: an agent stored before the allow-list existed, or by a data migration.
    agent = Agent.objects.create(name="crm", kind="http", config={"url": "https://crm.example.com/", "headers": headers})
    page = admin_client.get(change(agent)).content.decode()
    assert "<code>BATON_SECRET_CRM</code>: defined on this server" in page
    assert "<code>BATON_SECRET_UNSET</code>: not defined on this server" in page
    assert "<code>NOT_LISTED</code>: not allowed (not on BATON_AGENT_SECRETS)" in page
    assert "crm-value-4f1e" not in page and "other-value-77aa" not in page


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
    response = admin_client.post(change(agent), agent_form(admin_client, change(agent), **changes))
    assert response.status_code == 200  # the form again, not a 500 or a redirect
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert problem in response.content.decode()
    agent.refresh_from_db()
    assert (agent.circuit, agent.retry, agent.fallback, agent.config) == before


def test_an_agent_edit_in_admin_keeps_an_empty_circuit_empty(admin_client: Client, finished_run: Run) -> None:
    agent = Agent.objects.get(name="echo")
    response = admin_client.post(change(agent), agent_form(admin_client, change(agent), circuit="{}", description="edited"))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    agent.refresh_from_db()
    assert agent.description == "edited" and agent.circuit == {}
