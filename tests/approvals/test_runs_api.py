"""/api/runs/{id}/retry, /rerun and /cancel: an operator's actions with a token. Refusals: 409
with the reason for a run in the wrong state, 422 naming the field, 403 for a viewer who may
not operate, 404 for someone who may not see the run."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from approvals.auth import create_api_token
from orchestration.models import Run, RunEvent
from orchestration.status import EventKind, RunStatus
from tests.approvals.conftest import flow, start
from tests.support import drive

pytestmark = pytest.mark.django_db

PICKY = "    - {key: a, agent: picky, input: {ok: '{{ input.ok }}'}}\n    - {key: b, agent: echo, after: [a]}"
ACCESS = "  inputs: {ok: {type: boolean, default: false}}\n  access: {viewers: [legal]}"


def bearer(user: Any) -> dict[str, str]:
    _, token = create_api_token(user=user, name="test")
    return {"Authorization": f"Bearer {token}"}


def post(client: Client, path: str, body: Any, user: Any) -> Any:
    return client.post(path, body, content_type="application/json", headers=bearer(user))


@pytest.fixture
def failed(people: dict[str, Any]) -> Run:
    flow(PICKY, extra=ACCESS)
    run = start(by=people["ops"])
    assert run.status == RunStatus.FAILED
    return run


def test_the_owner_retries_a_failed_run_with_edited_input_and_it_succeeds(client: Client, people: dict[str, Any], failed: Run) -> None:
    response = post(client, f"/api/runs/{failed.pk}/retry", {"reason": "fixed upstream", "inputs": {"a": {"ok": True}}}, people["ops"])
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "running" and response.json()["url"] == f"/runs/{failed.pk}/"
    assert drive(failed).status == RunStatus.SUCCEEDED
    event = RunEvent.objects.get(run=failed, kind=EventKind.RUN_RETRIED)
    assert (event.actor, event.message) == (people["ops"], "retried by ops: fixed upstream")


def test_a_run_that_is_not_failed_is_409_with_the_reason(client: Client, people: dict[str, Any], failed: Run) -> None:
    assert post(client, f"/api/runs/{failed.pk}/retry", {"inputs": {"a": {"ok": True}}}, people["ops"]).status_code == 200
    drive(failed)
    response = post(client, f"/api/runs/{failed.pk}/retry", {}, people["ops"])
    assert response.status_code == 409
    assert response.json()["detail"] == f"run {failed.pk} is succeeded: only a failed or cancelled run can be retried"


def test_a_bad_input_or_reason_is_422_naming_the_field(client: Client, people: dict[str, Any], failed: Run, settings: Any) -> None:
    settings.BATON_MAX_INPUT_BYTES = 50
    response = post(client, f"/api/runs/{failed.pk}/retry", {"inputs": {"a": "x" * 100}}, people["ops"])
    assert response.status_code == 422 and "inputs" in response.json()["fields"]
    response = post(client, f"/api/runs/{failed.pk}/retry", {"reason": "x" * 6000}, people["ops"])
    assert response.status_code == 422 and "reason" in response.json()["fields"]
    response = post(client, f"/api/runs/{failed.pk}/rerun", {"input": {"ok": "maybe"}}, people["ops"])
    assert response.status_code == 422 and response.json()["fields"] == {"input.ok": "expected boolean, got str"}
    failed.refresh_from_db()
    assert failed.status == RunStatus.FAILED and not failed.reruns.exists()


def test_a_viewer_is_403_and_an_outsider_404_like_a_missing_run(client: Client, people: dict[str, Any], failed: Run) -> None:
    viewer = people["carol"]  # in legal, the workflow's viewers
    assert viewer.groups.filter(name="legal").exists()
    for action in ("retry", "rerun", "cancel"):
        assert post(client, f"/api/runs/{failed.pk}/{action}", {}, viewer).status_code == 403
        refused = post(client, f"/api/runs/{failed.pk}/{action}", {}, people["outsider"])
        missing = post(client, f"/api/runs/999999/{action}", {}, people["outsider"])
        assert (refused.status_code, refused.json()["detail"]) == (404, f"No run {failed.pk} you can see.")
        assert (missing.status_code, missing.json()["detail"]) == (404, "No run 999999 you can see.")
    failed.refresh_from_db()
    assert failed.status == RunStatus.FAILED


def test_a_rerun_is_a_new_run_linked_to_the_original(client: Client, people: dict[str, Any], failed: Run) -> None:
    response = post(client, f"/api/runs/{failed.pk}/rerun", {"input": {"ok": True}}, people["ops"])
    assert response.status_code == 200
    again = Run.objects.get(pk=response.json()["id"])
    assert again.rerun_of == failed and response.json()["rerun_of"] == failed.pk
    assert drive(again).status == RunStatus.SUCCEEDED


def test_a_cancel_takes_a_reason_and_a_second_cancel_is_409(client: Client, people: dict[str, Any]) -> None:
    flow("    - {key: w, wait: {event: go}}")
    run = start(by=people["ops"])
    response = post(client, f"/api/runs/{run.pk}/cancel", {"reason": "duplicate order"}, people["ops"])
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert response.json()["error"] == "duplicate order"
    again = post(client, f"/api/runs/{run.pk}/cancel", {}, people["ops"])
    assert again.status_code == 409 and again.json()["detail"] == f"run {run.pk} already cancelled"
