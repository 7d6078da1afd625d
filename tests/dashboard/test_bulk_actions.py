"""Bulk cancel and retry from the runs list: ticked runs, a confirmation that says how many runs
it will change and why the others will not, then a message with how many were done."""

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

FLOWS = """
agents:
  - {name: fails-first, kind: python, config: {callable: "tests.agents.basic:fails_first"}, retry: {attempts: 1}}
workflow:
  key: %s
  name: %s
  owner: %s
  steps:
    - {key: a, agent: fails-first}
"""


@pytest.fixture
def runs(ops: Any, outsider: Any) -> dict[str, list[Run]]:
    load_workflow(FLOWS % ("mine", "Mine", "ops"))
    load_workflow(FLOWS % ("theirs", "Theirs", "outsider"))
    load_workflow("workflow: {key: waits, name: Waits, owner: ops, steps: [{key: w, wait: {event: go}}]}")
    return {
        "failed": [drive(transitions.start_run(workflow="mine")) for _ in range(3)],
        "running": [transitions.start_run(workflow="waits")],
        "unseen": [drive(transitions.start_run(workflow="theirs"))],
    }


def bulk(client: Client, action: str, runs: list[Run], **extra: Any) -> Any:
    return client.post(reverse("dashboard:runs_bulk"), {"action": action, "run": [r.pk for r in runs], **extra}, follow=True)


def test_the_runs_list_offers_a_box_per_run_to_an_operator(ops_client: Client, runs: dict[str, list[Run]]) -> None:
    page = ops_client.get(reverse("dashboard:runs")).content.decode()
    assert page.count('type="checkbox" name="run"') == 4
    assert 'form id="runs-bulk" method="post"' in page


def test_retry_asks_first_saying_how_many_runs_and_why_the_others_will_not_change(
    ops_client: Client, runs: dict[str, list[Run]]
) -> None:
    ticked = runs["failed"] + runs["running"] + runs["unseen"]
    page = bulk(ops_client, "retry", ticked).content.decode()
    assert "Retry 3 failed or cancelled runs?" in page
    assert "Not retried: 1 you may not see; 1 not in a state for it." in page
    assert not RunEvent.objects.filter(kind=EventKind.RUN_RETRIED).exists(), "nothing happens before the confirmation"


def test_confirmed_it_retries_each_allowed_run_and_says_how_many(ops_client: Client, ops: Any, runs: dict[str, list[Run]]) -> None:
    ticked = runs["failed"] + runs["running"] + runs["unseen"]
    response = bulk(ops_client, "retry", ticked, confirmed="yes", reason="processor back", back="status=failed")
    assert response.redirect_chain[-1][0] == reverse("dashboard:runs") + "?status=failed"
    page = response.content.decode()
    assert "3 runs retried. Not retried: 1 you may not see; 1 not in a state for it." in page
    for run in runs["failed"]:
        assert drive(run).status == RunStatus.SUCCEEDED
    assert Run.objects.get(pk=runs["unseen"][0].pk).status == RunStatus.FAILED
    assert RunEvent.objects.filter(kind=EventKind.RUN_RETRIED, actor=ops, message="retried by ops: processor back").count() == 3


def test_bulk_cancel_cancels_only_running_runs(ops_client: Client, runs: dict[str, list[Run]]) -> None:
    page = bulk(ops_client, "cancel", runs["failed"] + runs["running"], confirmed="yes").content.decode()
    assert "1 run cancelled. Not cancelled: 3 not in a state for it." in page
    assert Run.objects.get(pk=runs["running"][0].pk).status == RunStatus.CANCELLED


def test_a_viewer_who_may_not_operate_changes_nothing(client: Client, runs: dict[str, list[Run]], outsider: Any) -> None:
    client.force_login(outsider)  # owns `theirs`; sees nothing of ops's runs
    page = bulk(client, "retry", runs["failed"] + runs["unseen"], confirmed="yes").content.decode()
    assert "1 run retried. Not retried: 3 you may not see." in page


def test_more_than_500_runs_or_none_or_an_unknown_action_is_refused(ops_client: Client, runs: dict[str, list[Run]]) -> None:
    url = reverse("dashboard:runs_bulk")
    too_many = ops_client.post(url, {"action": "retry", "run": [str(i) for i in range(1, 502)]})
    assert too_many.status_code == 422 and "501 runs ticked; at most 500 at a time." in too_many.content.decode()
    assert ops_client.post(url, {"action": "retry"}).status_code == 422
    assert ops_client.post(url, {"action": "delete", "run": [runs["failed"][0].pk]}).status_code == 422
    assert ops_client.get(url).status_code == 405
