"""The run page's operator actions (_run_actions.html): retry from failure, rerun, cancel with a
reason; only for operators, each a POST answered with the run's live partial over htmx."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from orchestration import transitions
from orchestration.models import Run, RunEvent
from orchestration.status import EventKind, RunStatus
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

PICKY = """
agents:
  - {name: picky, kind: python, config: {callable: "tests.approvals.conftest:picky"}, retry: {attempts: 1}}
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: orders
  name: Orders
  owner: ops
  access: {operators: [operations], viewers: [auditors]}
  inputs: {ok: {type: boolean, default: false}}
  steps:
    - {key: check, agent: picky, input: {ok: "{{ input.ok }}"}}
    - {key: ship, agent: echo, after: [check]}
"""


@pytest.fixture
def failed(ops: Any, auditors: Any) -> Run:
    load_workflow(PICKY)
    run = drive(transitions.start_run(workflow="orders"))
    assert run.status == RunStatus.FAILED
    return run


def page_of(client: Client, run: Run) -> str:
    return client.get(reverse("dashboard:run", args=[run.pk])).content.decode()


def test_an_operator_sees_retry_and_rerun_on_a_failed_run_and_a_viewer_sees_neither(
    client: Client, failed: Run, operator: Any, viewer: Any
) -> None:
    client.force_login(operator)
    page = page_of(client, failed)
    assert "Retry run" in page and "Rerun" in page and '<option value="check">check</option>' in page
    client.force_login(viewer)
    page = page_of(client, failed)
    assert "Retry run" not in page and "Rerun" not in page


def test_retry_with_edited_input_over_htmx_returns_the_live_part_and_the_run_succeeds(
    ops_client: Client, ops: Any, failed: Run
) -> None:
    url = reverse("dashboard:retry", args=[failed.pk])
    response = ops_client.post(url, {"reason": "fixed", "step": "check", "input": '{"ok": true}'}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response.content.decode().count('<div id="run-live"') == 1
    assert f"Run {failed.pk} retried from its failure." in response.content.decode()
    assert drive(failed).status == RunStatus.SUCCEEDED
    assert RunEvent.objects.get(run=failed, kind=EventKind.RUN_RETRIED).message == "retried by ops: fixed"


def test_a_retry_refused_says_why_and_changes_nothing(ops_client: Client, failed: Run) -> None:
    url = reverse("dashboard:retry", args=[failed.pk])
    bad = ops_client.post(url, {"step": "check", "input": "{not json"}, HTTP_HX_REQUEST="true")
    assert bad.status_code == 422 and "Not retried: input: not valid JSON" in bad.content.decode()
    long = ops_client.post(url, {"step": "check", "input": "1" * 300_000}, HTTP_HX_REQUEST="true")
    assert long.status_code == 422 and "at most 262,144 are allowed" in long.content.decode()
    failed.refresh_from_db()
    assert failed.status == RunStatus.FAILED
    assert ops_client.post(url, {}, HTTP_HX_REQUEST="true").status_code == 200
    again = ops_client.post(url, {}, HTTP_HX_REQUEST="true")
    assert again.status_code == 409
    assert f"Not retried: run {failed.pk} is running: only a failed or cancelled run can be retried." in again.content.decode()


def test_a_viewer_may_not_retry_rerun_or_cancel(client: Client, failed: Run, viewer: Any) -> None:
    client.force_login(viewer)
    for name in ("retry", "rerun", "cancel"):
        assert client.post(reverse(f"dashboard:{name}", args=[failed.pk])).status_code == 403
    failed.refresh_from_db()
    assert failed.status == RunStatus.FAILED and not failed.reruns.exists()


def test_rerun_with_edited_input_opens_the_new_run_linked_both_ways(ops_client: Client, failed: Run) -> None:
    response = ops_client.post(reverse("dashboard:rerun", args=[failed.pk]), {"input": '{"ok": true}'})
    again = Run.objects.get(rerun_of=failed)
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:run", args=[again.pk])
    assert again.input == {"ok": True}
    assert f'Rerun of <a href="/runs/{failed.pk}/">run #{failed.pk}</a>' in page_of(ops_client, again)
    assert f'Rerun as <a href="/runs/{again.pk}/">run #{again.pk}</a>' in page_of(ops_client, failed)


def test_cancel_records_the_reason_given(ops_client: Client, ops: Any, auditors: Any) -> None:
    load_workflow("workflow: {key: waits, name: Waits, owner: ops, steps: [{key: w, wait: {event: go}}]}")
    run = transitions.start_run(workflow="waits")
    page = page_of(ops_client, run)
    assert '<input type="text" name="reason" maxlength="5000" placeholder="why it is cancelled">' in page
    ops_client.post(reverse("dashboard:cancel", args=[run.pk]), {"reason": "customer withdrew"})
    run.refresh_from_db()
    assert (run.status, run.error) == (RunStatus.CANCELLED, "customer withdrew")
