"""Try this draft: the owner of a workflow runs its draft with a sample input, unpublished.

The draft is frozen as a trial version that is never the latest: new runs, roll backs and the
page's figures keep to the published versions, and the trial run says what it is.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from orchestration import definitions, transitions
from orchestration.models import Agent, DraftStep, Run, RunEvent, Workflow, WorkflowVersion
from orchestration.status import EventKind, RunStatus
from tests.approvals.test_race import at_once
from tests.orchestration.test_load_demo_keeps_edits import management_forms
from tests.support import drive

pytestmark = pytest.mark.django_db

TRY = reverse("dashboard:workflow_try_draft", args=["digest"])


def page(client: Client) -> str:
    response = client.get(reverse("dashboard:workflow", args=["digest"]))
    assert response.status_code == 200
    return response.content.decode()


def edit_draft() -> None:
    """The owner's work in progress: publish hands its input to `upper` instead of `echo`."""
    DraftStep.objects.filter(workflow__key="digest", key="publish").update(agent_id=_agent_id("upper"))


def _agent_id(name: str) -> int:
    return Agent.objects.get(name=name).pk


def counts() -> tuple[int, int]:
    return WorkflowVersion.objects.count(), Run.objects.count()


def test_the_owner_sees_the_form_for_the_drafts_inputs(ops_client: Client, digest: WorkflowVersion) -> None:
    html = page(ops_client)
    form = re.search(r'<form id="try-digest".*?</form>', html, re.DOTALL)
    assert form, "the owner is offered the form"
    assert 'action="/workflows/digest/try/"' in form.group(0)
    assert 'name="topic"' in form.group(0) and 'name="sections"' in form.group(0)
    assert "Try this draft" in form.group(0)


def test_it_starts_a_run_of_the_draft_without_publishing_it(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    edit_draft()
    response = ops_client.post(TRY, {"topic": "tides", "count": "2", "sections": '["a"]', "tone": "plain"})
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:run", args=[run.pk])
    assert run.version.trial and run.version.number == 1 and run.trigger == "trial" and run.started_by == ops
    # The trial runs the draft as it stands; the published version is left as it was.
    assert [s["agent"] for s in run.version.spec["steps"]] == ["echo", "upper", "upper"]
    workflow = Workflow.objects.get(key="digest")
    assert workflow.latest_version == digest
    assert [s["agent"] for s in digest.spec["steps"]] == ["echo", "upper", "echo"]
    # Audited: who started which trial, on the run's own history.
    started = RunEvent.objects.get(run=run, kind=EventKind.RUN_STARTED)
    assert started.actor == ops and "trigger trial" in started.message
    assert drive(run).status == RunStatus.SUCCEEDED
    # `upper` reads a `text` the publish step does not send: the draft's change shows.
    assert Run.objects.get(pk=run.pk).output == {"publish": ""}


def test_the_run_page_and_the_lists_mark_it_a_trial(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    run = definitions.try_draft(workflow=digest.workflow, input={"topic": "tides"}, actor=ops)
    run_page = ops_client.get(reverse("dashboard:run", args=[run.pk])).content.decode()
    assert "trial 1 of the draft" in run_page
    runs_list = ops_client.get(reverse("dashboard:runs")).content.decode()
    assert "trial of the draft" in runs_list
    assert "trial 1 of the draft" in page(ops_client)


def test_an_htmx_trial_is_sent_to_its_run_page(ops_client: Client, digest: WorkflowVersion) -> None:
    response = ops_client.post(TRY, {"topic": "tides"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("dashboard:run", args=[Run.objects.get().pk])


def test_the_same_draft_tried_again_reuses_its_trial_and_a_changed_one_gets_the_next(
    ops: Any, digest: WorkflowVersion
) -> None:
    first = definitions.try_draft(workflow=digest.workflow, input={"topic": "a"}, actor=ops)
    again = definitions.try_draft(workflow=digest.workflow, input={"topic": "b"}, actor=ops)
    assert again.version_id == first.version_id
    edit_draft()
    changed = definitions.try_draft(workflow=digest.workflow, input={"topic": "c"}, actor=ops)
    assert changed.version.number == 2 and changed.version.trial


def test_trials_are_never_the_latest_version_nor_counted_nor_offered_for_roll_back(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    edit_draft()
    drive(definitions.try_draft(workflow=digest.workflow, input={"topic": "a"}, actor=ops))
    # Publishing numbers on from the published versions: trials leave no gap.
    published = definitions.publish_draft(digest.workflow, user=ops)
    assert (published.number, published.trial) == (2, False)
    edit_draft()
    DraftStep.objects.filter(workflow__key="digest", key="research").update(agent_id=_agent_id("upper"))
    definitions.try_draft(workflow=digest.workflow, input={"topic": "b"}, actor=ops)
    assert Workflow.objects.get(key="digest").latest_version == published
    # A plain start takes the published version.
    assert transitions.start_run(workflow="digest", input={"topic": "c"}).version == published
    html = page(ops_client)
    assert 'data-version="2"' in html and 'data-version="1"' in html and html.count("<tr data-version=") == 2
    stats = re.search(r"<dl[^>]*data-stats>(.*?)</dl>", html, re.DOTALL)
    assert stats and "Runs started</dt><dd>1<" in stats.group(1).replace("\n", "")


def test_a_draft_with_problems_cannot_be_tried_and_they_are_shown(ops_client: Client, digest: WorkflowVersion) -> None:
    DraftStep.objects.filter(workflow__key="digest", key="research").update(input={"topic": "{{ input.topik }}"})
    before = counts()
    response = ops_client.post(TRY, {"topic": "tides"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    html = response.content.decode()
    assert "The draft cannot be tried until 1 problem is fixed" in html
    assert "step &#x27;research&#x27;: field `input`: `input.topik` is not an input" in html
    assert counts() == before


def test_a_bad_sample_input_names_its_field_and_starts_nothing(ops_client: Client, digest: WorkflowVersion) -> None:
    before = counts()
    response = ops_client.post(TRY, {"topic": "", "count": "many"})
    assert response.status_code == 422
    html = response.content.decode()
    assert "count: enter a whole number" in html
    assert counts() == before
    response = ops_client.post(TRY, {"topic": ""}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and "topic: required" in response.content.decode()
    assert counts() == before


def test_a_sample_input_over_the_size_limit_is_refused(ops_client: Client, digest: WorkflowVersion, settings: Any) -> None:
    settings.BATON_MAX_INPUT_BYTES = 1_000
    before = counts()
    response = ops_client.post(TRY, {"topic": "x" * 5_000}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert "topic" in response.content.decode()
    assert counts() == before


@pytest.mark.parametrize("persona", ["operator", "viewer", "outsider"])
def test_only_the_owner_or_a_superuser_may_try_the_draft(
    client: Client, persona: str, request: pytest.FixtureRequest, digest: WorkflowVersion
) -> None:
    client.force_login(request.getfixturevalue(persona))
    before = counts()
    assert client.post(TRY, {"topic": "tides"}).status_code == 403
    assert counts() == before
    if persona != "outsider":
        assert 'id="try-digest"' not in page(client)


def test_a_superuser_may_try_it(client: Client, digest: WorkflowVersion, django_user_model: Any) -> None:
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-1"))
    assert client.post(TRY, {"topic": "tides"}).status_code == 302
    assert Run.objects.get().version.trial


def test_it_needs_a_login_a_post_and_the_csrf_token(client: Client, ops: Any, digest: WorkflowVersion) -> None:
    response = client.post(TRY, {"topic": "tides"})
    assert response.status_code == 302 and "/login/" in response["Location"]
    client.force_login(ops)
    assert client.get(TRY).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(ops)
    assert strict.post(TRY, {"topic": "tides"}).status_code == 403
    assert Run.objects.count() == 0


def test_a_trial_run_is_rerun_only_on_the_latest_published_version(ops: Any, digest: WorkflowVersion) -> None:
    trial = definitions.try_draft(workflow=digest.workflow, input={"topic": "a"}, actor=ops)
    with pytest.raises(transitions.InvalidTransition, match="is a trial of the draft"):
        transitions.rerun(run_id=trial.pk, actor=ops)
    assert transitions.rerun(run_id=trial.pk, actor=ops, latest=True).version == digest


@pytest.mark.django_db(transaction=True)
def test_two_owners_trying_one_changed_draft_at_once_share_one_trial(ops: Any, digest: WorkflowVersion) -> None:
    """Real concurrent transactions (meant for PostgreSQL, where the workflow's row lock
    decides): the second waits for the first, then finds its trial of the same draft."""
    edit_draft()
    runs = at_once(
        partial(definitions.try_draft, workflow=digest.workflow, input={"topic": "a"}, actor=ops),
        partial(definitions.try_draft, workflow=digest.workflow, input={"topic": "b"}, actor=ops),
    )
    assert all(isinstance(r, Run) for r in runs), runs
    assert WorkflowVersion.objects.filter(trial=True).count() == 1
    assert {r.version_id for r in runs} == {WorkflowVersion.objects.get(trial=True).pk}


def test_the_admin_saves_the_draft_and_sends_its_owner_to_the_try_form(client: Client, ops: Any, digest: WorkflowVersion) -> None:
    ops.is_staff = True
    ops.save(update_fields=["is_staff"])
    ops.user_permissions.add(*Permission.objects.filter(codename__in=["change_workflow", "view_workflow"]))
    client.force_login(ops)
    change = reverse("admin:orchestration_workflow_change", args=[digest.workflow.pk])
    page_ = client.get(change)
    assert 'name="_try"' in page_.content.decode()
    form = page_.context["adminform"].form
    data = {name: form[name].value() for name in ("key", "name", "description", "output")}
    data.update(inputs=json.dumps(digest.workflow.inputs), _try="Save and try the draft")
    data["description"] = "Tried from the admin."
    response = client.post(change, {**data, **management_forms(page_)})
    assert response.status_code == 302 and response["Location"] == "/workflows/digest/#try-title"
    assert Workflow.objects.get(key="digest").description == "Tried from the admin."
    assert "try it with a sample input below" in page(client)
    assert Run.objects.count() == 0 and not WorkflowVersion.objects.filter(trial=True).exists()
