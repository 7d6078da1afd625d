"""/api/rollouts: read rollouts and their snapshots, and promote, pause, resume or roll back
with the owner's token. Refusals: 403 for someone who sees but may not decide, 409 with the
failing verdicts, 422 naming the field, 404 for what one may not see."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from approvals.auth import create_api_token
from orchestration.models import Workflow
from orchestration.rollouts import history, metrics
from orchestration.rollouts import transitions as rollouts
from orchestration.rollouts.models import Metric, Rollout, RolloutEventKind, Stage
from orchestration.status import RunStatus

pytestmark = pytest.mark.django_db


def bearer(user: Any) -> dict[str, str]:
    _, token = create_api_token(user=user, name="test")
    return {"Authorization": f"Bearer {token}"}


def post(client: Client, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.post(path, body, content_type="application/json", headers=headers)


@pytest.fixture
def rollout(workflow: Workflow, ops: Any) -> Rollout:
    return rollouts.start_rollout(workflow=workflow, owner=ops, actor=ops)


def quick(day: date, index: int, rng: random.Random) -> history.RunPlan:
    return history.RunPlan(status=RunStatus.SUCCEEDED, start=60.0 * index, duration=30.0, approval="approved", approval_wait=60)


def test_the_list_has_the_rollouts_the_caller_sees(client: Client, ops: Any, outsider: Any, rollout: Rollout) -> None:
    response = client.get("/api/rollouts", headers=bearer(ops))
    assert response.status_code == 200
    assert [(r["workflow"], r["stage"], r["owner"]) for r in response.json()] == [("review", "pilot", "ops")]
    assert client.get("/api/rollouts", headers=bearer(outsider)).json() == []


def test_one_rollout_has_its_gate_windows_checklist_drift_and_versions(client: Client, ops: Any, rollout: Rollout) -> None:
    body = client.get("/api/rollouts/review", headers=bearer(ops)).json()
    assert body["stage"] == "pilot" and body["url"] == "/rollouts/review/"
    assert body["gate"]["passed"] is False
    assert {v["metric"] for v in body["gate"]["verdicts"]} == set(Metric.values)
    assert len(body["windows"]) == 4 and len(body["checklist"]) == 5
    assert body["open_drift"] == [] and body["versions"] == []


def test_someone_who_may_not_see_the_workflow_gets_404_like_a_missing_one(
    client: Client, outsider: Any, rollout: Rollout
) -> None:
    headers = bearer(outsider)
    assert client.get("/api/rollouts/review", headers=headers).status_code == 404
    assert client.get("/api/rollouts/nope", headers=headers).status_code == 404
    assert post(client, "/api/rollouts/review/pause", {}, headers).status_code == 404
    assert Rollout.objects.get().stage == Stage.PILOT


def test_an_operator_sees_but_may_not_decide(client: Client, approver: Any, rollout: Rollout) -> None:
    headers = bearer(approver)
    assert client.get("/api/rollouts/review", headers=headers).status_code == 200
    response = post(client, "/api/rollouts/review/pause", {"reason": "mine"}, headers)
    assert response.status_code == 403 and "owner" in response.json()["detail"]


def test_a_promotion_while_a_criterion_fails_is_409_with_the_failing_verdicts(
    client: Client, ops: Any, rollout: Rollout
) -> None:
    response = post(client, "/api/rollouts/review/promote", {}, bearer(ops))
    assert response.status_code == 409
    body = response.json()
    assert "success_rate" in body["fields"] and {v["metric"] for v in body["verdicts"]} >= {"success_rate", "runs"}
    assert all(v["passed"] is False for v in body["verdicts"])
    assert Rollout.objects.get().stage == Stage.PILOT
    assert rollout.events.filter(kind=RolloutEventKind.PROMOTION_REFUSED).exists()


def test_an_override_reason_promotes_and_is_recorded(client: Client, ops: Any, rollout: Rollout) -> None:
    response = post(client, "/api/rollouts/review/promote", {"override_reason": "The board asked"}, bearer(ops))
    assert response.status_code == 200 and response.json()["stage"] == "standardize"
    event = rollout.events.get(kind=RolloutEventKind.OVERRIDDEN)
    assert event.reason == "The board asked" and event.actor == ops


def test_a_promotion_with_every_criterion_passing_moves_the_stage(client: Client, ops: Any, rollout: Rollout) -> None:
    history.make_history(workflow=rollout.workflow, days=8, runs_per_day=5, outcomes=quick)
    response = post(client, "/api/rollouts/review/promote", {}, bearer(ops))
    assert response.status_code == 200, response.json()
    assert response.json()["stage"] == "standardize" and response.json()["gate"]["passed"] is True


def test_pause_resume_and_roll_back_with_a_reason(client: Client, ops: Any, rollout: Rollout) -> None:
    headers = bearer(ops)
    assert post(client, "/api/rollouts/review/pause", {"reason": "holidays"}, headers).json()["stage"] == "paused"
    paused = client.get("/api/rollouts/review", headers=headers).json()
    assert paused["paused_from"] == "pilot"
    assert post(client, "/api/rollouts/review/resume", {}, headers).json()["stage"] == "pilot"
    again = post(client, "/api/rollouts/review/resume", {}, headers)
    assert again.status_code in (409, 422) and again.json()["detail"]
    missing = post(client, "/api/rollouts/review/roll-back", {"reason": ""}, headers)
    assert missing.status_code == 422 and "reason" in missing.json()["fields"]
    assert post(client, "/api/rollouts/review/roll-back", {"reason": "wrong output"}, headers).json()["stage"] == "rolled_back"


def test_a_bad_body_is_422(client: Client, ops: Any, rollout: Rollout) -> None:
    response = post(client, "/api/rollouts/review/promote", {"override_reason": ["x"]}, bearer(ops))
    assert response.status_code == 422


def test_snapshots_are_a_row_per_day_and_scope_within_the_range(client: Client, ops: Any, rollout: Rollout) -> None:
    history.make_history(workflow=rollout.workflow, days=3, runs_per_day=2, outcomes=quick)
    today = timezone.localdate()
    metrics.rollup(today - timedelta(days=3))
    headers = bearer(ops)
    rows = client.get("/api/rollouts/review/snapshots", headers=headers).json()
    assert [(r["scope"]) for r in rows[:2]] == ["workflow", "v1"]
    assert sum(r["runs_started"] for r in rows if r["scope"] == "workflow") == 6
    one = client.get(f"/api/rollouts/review/snapshots?since={today}&until={today}", headers=headers).json()
    assert {r["day"] for r in one} <= {today.isoformat()}
    bad = client.get("/api/rollouts/review/snapshots?since=monday", headers=headers)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("since")
    long = client.get("/api/rollouts/review/snapshots?since=2020-01-01&until=2026-01-01", headers=headers)
    assert long.status_code == 422


def test_the_openapi_document_lists_the_rollout_endpoints_with_their_stages(client: Client, ops: Any) -> None:
    schema = client.get("/api/openapi.json", headers=bearer(ops)).json()
    assert "/api/rollouts/{key}/promote" in schema["paths"]
    stages = schema["components"]["schemas"]["RolloutSummaryOut"]["properties"]["stage"]
    assert "scaled" in str(stages)


def test_a_promotion_from_a_stage_the_rollout_has_left_is_409(client: Client, ops: Any, rollout: Rollout) -> None:
    body = {"override_reason": "go", "from_stage": "pilot"}
    assert post(client, "/api/rollouts/review/promote", body, bearer(ops)).status_code == 200
    again = post(client, "/api/rollouts/review/promote", body, bearer(ops))
    assert again.status_code == 409 and "nothing was changed" in again.json()["detail"]
