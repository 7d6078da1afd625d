"""Every dashboard page asks who you are first; logging in and out work through the forms; and
who sees and operates which workflows and runs (orchestration/access.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestration import access, transitions
from orchestration.models import Agent, AgentHealth, Attempt, Run, StepRun, Workflow, WorkflowVersion
from orchestration.status import RunStatus, StepStatus
from tests.dashboard.conftest import AGENTS
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(digest: WorkflowVersion) -> Run:
    return transitions.start_run(workflow="digest", input={"topic": "tides"})


@pytest.mark.parametrize("page", ["runs", "workflows", "agents", "run"])
def test_every_page_sends_an_anonymous_visitor_to_the_login_page(client: Client, run: Run, page: str) -> None:
    url = reverse(f"dashboard:{page}", args=[run.pk] if page == "run" else [])
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


def test_an_anonymous_visitor_cannot_start_a_run(client: Client, digest: WorkflowVersion) -> None:
    response = client.post(reverse("dashboard:start", args=["digest"]), {"topic": "tides"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert not Run.objects.exists()


def test_an_anonymous_visitor_cannot_cancel_a_run(client: Client, run: Run) -> None:
    response = client.post(reverse("dashboard:cancel", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_an_operations_lead_logs_in_through_the_form_and_lands_on_the_overview(client: Client, ops: Any) -> None:
    page = client.get(reverse("login"))
    assert b'name="username"' in page.content
    response = client.post(reverse("login"), {"username": "ops", "password": "ops-pass-1"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("dashboard:overview") == "/"
    assert b"Log out" in response.content


def test_a_wrong_password_is_refused_with_a_message(client: Client, ops: Any) -> None:
    response = client.post(reverse("login"), {"username": "ops", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_logging_out_is_a_post_with_the_csrf_token(client: Client, ops: Any) -> None:
    client.force_login(ops)
    page = client.get(reverse("dashboard:runs")).content.decode()
    assert f'action="{reverse("logout")}"' in page
    assert "csrfmiddlewaretoken" in page
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("dashboard:runs")).status_code == 302


def test_the_csrf_token_rides_on_the_body_for_htmx(ops_client: Client) -> None:
    page = ops_client.get(reverse("dashboard:runs")).content.decode()
    assert "<body hx-headers='{\"X-CSRFToken\": \"" in page


def test_only_staff_see_the_admin_link(client: Client, ops: Any, admin_user: Any) -> None:
    client.force_login(ops)
    assert b'href="/admin/"' not in client.get(reverse("dashboard:runs")).content
    client.force_login(admin_user)
    assert b'href="/admin/"' in client.get(reverse("dashboard:runs")).content


# --- who sees and operates which runs (orchestration/access.py) ---------------------------------
#
# digest is owned by ops, operated by `operations` (operator) and watched by `auditors` (viewer);
# outsider is in no group. A wrapper workflow, owned by someone else, calls digest.

WRAPPER = """
workflow:
  key: wrapper
  name: Wrapper
  owner: admin
  access: {viewers: [managers]}
  steps:
    - {key: inner, workflow: digest, input: {topic: nested}}
"""


def login(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def run_page(client: Client, run: Run, **headers: Any) -> Any:
    return client.get(reverse("dashboard:run", args=[run.pk]), **headers)


@pytest.fixture
def wrapped(digest: WorkflowVersion, admin_user: Any) -> tuple[Run, Run]:
    """A finished wrapper run and the digest run it called."""
    Group.objects.get_or_create(name="managers")
    load_workflow(WRAPPER)
    parent = drive(transitions.start_run(workflow="wrapper"))
    return parent, Run.objects.get(parent_step__run=parent)


def test_an_outsider_gets_403_on_a_run_page_and_its_live_partial(client: Client, outsider: Any, run: Run) -> None:
    login(client, outsider)
    assert run_page(client, run).status_code == 403
    assert run_page(client, run, HTTP_HX_REQUEST="true").status_code == 403


def test_an_outsider_cannot_start_a_run_of_a_workflow_they_do_not_operate(
    client: Client, outsider: Any, digest: WorkflowVersion
) -> None:
    login(client, outsider)
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        response = client.post(reverse("dashboard:start", args=["digest"]), {"topic": "refund 99999"}, **headers)
        assert response.status_code == 403
    assert not Run.objects.exists()


def test_an_outsider_cannot_cancel_someone_elses_run(client: Client, outsider: Any, run: Run) -> None:
    login(client, outsider)
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        assert client.post(reverse("dashboard:cancel", args=[run.pk]), **headers).status_code == 403
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert not run.events.filter(kind="run_cancelled").exists()


def test_an_outsider_sees_no_trace_of_the_workflow_or_its_runs_in_lists_and_counts(
    client: Client, outsider: Any, run: Run
) -> None:
    login(client, outsider)
    for url in (
        reverse("dashboard:runs"),
        reverse("dashboard:runs") + "?workflow=digest",
        reverse("dashboard:runs") + "?status=running",
        reverse("dashboard:workflows"),
    ):
        page = client.get(url).content.decode()
        assert "data-run=" not in page, url
        assert "Daily digest" not in page, url
        assert 'value="digest"' not in page and 'id="workflow-digest"' not in page, url  # no filter, no card
        assert f"#{run.pk}" not in page, url
    htmx = client.get(reverse("dashboard:runs"), HTTP_HX_REQUEST="true").content.decode()
    assert "data-run=" not in htmx
    assert "No runs yet." in htmx


def test_the_agents_page_counts_only_the_runs_the_reader_sees(
    client: Client, outsider: Any, ops: Any, run: Run
) -> None:
    """Agents are shared, so the agents show; what they do for a hidden run does not."""
    echo = Agent.objects.get(name="echo")
    echo.circuit = {"failures": 3, "window": 60.0, "cooldown": 30.0}
    echo.save()
    writer = Agent.objects.create(name="writer", kind="llm", config={"model": "m"})
    busy = StepRun.objects.create(run=run, step_key="busy", agent_name="echo", status=StepStatus.RUNNING, claim_token="c0ffee")
    AgentHealth.objects.create(agent=echo, circuit_state="half_open", trial_step=busy)
    Attempt.objects.create(
        step_run=busy, number=1, agent_name=writer.name, usage={"total_tokens": 700, "cost": 0.5}, started_at=timezone.now()
    )
    login(client, ops)
    mine = client.get(reverse("dashboard:agents")).content.decode()
    assert f'href="/runs/{run.pk}/">run #{run.pk}</a>' in mine
    assert '<span class="summary-strip__value">1</span> call in flight' in mine
    assert "700 tokens" in mine
    login(client, outsider)
    theirs = client.get(reverse("dashboard:agents")).content.decode()
    assert 'id="agent-echo"' in theirs and 'id="agent-writer"' in theirs
    assert f"run #{run.pk}" not in theirs
    assert '<span class="summary-strip__value">0</span> calls in flight' in theirs
    assert "0 calls · 0 tokens" in theirs


def test_a_viewer_sees_the_run_and_the_workflow_but_gets_no_cancel_button_or_start_form(
    client: Client, viewer: Any, run: Run
) -> None:
    login(client, viewer)
    page = run_page(client, run)
    assert page.status_code == 200
    assert "Cancel run" not in page.content.decode()
    assert f'data-run="{run.pk}"' in client.get(reverse("dashboard:runs")).content.decode()
    workflows = client.get(reverse("dashboard:workflows")).content.decode()
    assert 'id="workflow-digest"' in workflows
    assert 'id="start-digest"' not in workflows
    assert "starting one is for its owner and operators" in workflows


def test_a_viewer_cannot_start_or_cancel(client: Client, viewer: Any, run: Run) -> None:
    login(client, viewer)
    assert client.post(reverse("dashboard:start", args=["digest"]), {"topic": "x"}).status_code == 403
    assert client.post(reverse("dashboard:cancel", args=[run.pk]), HTTP_HX_REQUEST="true").status_code == 403
    assert Run.objects.count() == 1
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_an_operator_who_does_not_own_the_workflow_starts_and_cancels(
    client: Client, operator: Any, digest: WorkflowVersion
) -> None:
    login(client, operator)
    response = client.post(reverse("dashboard:start", args=["digest"]), {"topic": "tides"})
    assert response.status_code == 302
    run = Run.objects.get()
    assert run.started_by == operator
    page = run_page(client, run).content.decode()
    assert "Cancel run" in page
    client.post(reverse("dashboard:cancel", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_the_owner_operates_a_workflow_that_names_no_groups(client: Client, outsider: Any) -> None:
    load_workflow(AGENTS + "workflow:\n  key: solo\n  name: Solo\n  owner: outsider\n  steps:\n    - {key: a, agent: echo}\n")
    login(client, outsider)
    assert client.post(reverse("dashboard:start", args=["solo"])).status_code == 302
    run = Run.objects.get()
    assert run_page(client, run).status_code == 200
    client.post(reverse("dashboard:cancel", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_a_superuser_sees_starts_and_cancels_a_workflow_nobody_was_given(client: Client, admin_user: Any) -> None:
    load_workflow(AGENTS + "workflow:\n  key: orphan\n  name: Orphan\n  steps:\n    - {key: a, agent: echo}\n")
    login(client, admin_user)
    assert 'id="start-orphan"' in client.get(reverse("dashboard:workflows")).content.decode()
    assert client.post(reverse("dashboard:start", args=["orphan"])).status_code == 302
    run = Run.objects.get()
    assert f'data-run="{run.pk}"' in client.get(reverse("dashboard:runs")).content.decode()
    client.post(reverse("dashboard:cancel", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_an_unknown_workflow_or_run_is_still_404(client: Client, outsider: Any) -> None:
    login(client, outsider)
    assert client.post(reverse("dashboard:start", args=["nope"])).status_code == 404
    assert client.get(reverse("dashboard:run", args=[999])).status_code == 404


def test_a_sub_workflow_run_is_seen_by_whoever_sees_the_run_that_called_it(
    client: Client, wrapped: tuple[Run, Run]
) -> None:
    parent, child = wrapped
    manager = get_user_model().objects.create_user("manager", "m@example.com", "manager-pass-1")
    manager.groups.add(Group.objects.get(name="managers"))
    login(client, manager)
    assert run_page(client, parent).status_code == 200
    assert run_page(client, child).status_code == 200  # digest itself is not theirs
    assert f'data-run="{child.pk}"' in client.get(reverse("dashboard:runs")).content.decode()
    assert 'id="workflow-digest"' not in client.get(reverse("dashboard:workflows")).content.decode()
    # Seeing is not operating: a viewer of the caller cannot cancel the sub-run.
    assert client.post(reverse("dashboard:cancel", args=[child.pk])).status_code == 403


def test_a_sub_workflow_run_seen_through_its_own_workflow_names_no_hidden_caller(
    client: Client, viewer: Any, wrapped: tuple[Run, Run]
) -> None:
    parent, child = wrapped
    login(client, viewer)
    assert run_page(client, parent).status_code == 403
    page = run_page(client, child).content.decode()
    assert f"/runs/{parent.pk}/" not in page
    assert "sub-run of" not in page
    runs = client.get(reverse("dashboard:runs")).content.decode()
    assert f'data-run="{child.pk}"' in runs
    assert f'data-run="{parent.pk}"' not in runs
    assert f"/runs/{parent.pk}/" not in runs


def test_an_inactive_owner_sees_nothing(ops: Any, run: Run) -> None:
    ops.is_active = False
    ops.save()
    assert not access.visible_runs(ops).exists()
    assert not access.can_operate_run(ops, run)
    with pytest.raises(PermissionDenied):
        access.get_run_for_user(ops, run.pk)


def test_a_run_nested_below_the_nesting_bound_is_still_seen_through_its_callers(
    digest: WorkflowVersion, admin_user: Any, viewer: Any
) -> None:
    # A chain of sub-workflow runs built directly: the rule follows callers level by level.
    top = transitions.start_run(workflow="digest", input={"topic": "t"})
    load_workflow(AGENTS + "workflow:\n  key: hidden\n  name: Hidden\n  owner: admin\n  steps:\n    - {key: a, agent: echo}\n")
    hidden = Workflow.objects.get(key="hidden")
    caller = top
    chain = []
    for level in range(access.NESTING_LEVELS):
        step = StepRun.objects.create(run=caller, step_key=f"call-{level}", kind="workflow")
        caller = Run.objects.create(workflow=hidden, version=hidden.latest_version, parent_step=step)
        chain.append(caller)
    assert set(access.visible_runs(viewer).values_list("pk", flat=True)) == {top.pk, *(r.pk for r in chain)}
    assert access.can_view_run(viewer, chain[-1])
    assert not access.can_operate_run(viewer, chain[-1])
