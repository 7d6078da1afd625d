"""GET /api/runs (filters, cursor), GET /api/runs/{id} (steps, attempts, usage) and
GET /api/runs/{id}/events?after= (the event log for clients that follow a run)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from django.test import Client

from orchestration import runs_api
from orchestration.models import RunEvent
from orchestration.status import AttemptStatus, ErrorClass, RunStatus, StepStatus, WaitingFor
from orchestration.triggers.models import TriggerKind
from orchestration.workflows_api import TriggerKindName
from tests.api.conftest import bearer
from tests.approvals.conftest import flow, start

pytestmark = pytest.mark.django_db


def test_the_literals_the_openapi_lists_are_the_status_vocabulary() -> None:
    assert set(get_args(runs_api.RunStatusName)) == set(RunStatus.values)
    assert set(get_args(runs_api.StepStatusName)) == set(StepStatus.values)
    assert set(get_args(runs_api.AttemptStatusName)) == set(AttemptStatus.values)
    assert set(get_args(runs_api.ErrorClassName)) == {"", *ErrorClass.values}
    assert set(get_args(runs_api.WaitingForName)) == {"", *WaitingFor.values}
    assert set(get_args(TriggerKindName)) == set(TriggerKind.values)


def test_the_list_filters_by_workflow_and_status_and_pages_by_cursor(
    client: Client, people: dict[str, Any]
) -> None:
    flow("    - {key: a, agent: echo}", key="one")
    flow("    - {key: a, agent: flaky}", key="two")
    ones = [start("one", by=people["ops"]) for _ in range(3)]
    failed = start("two", by=people["ops"])
    headers = bearer(people["ops"])
    assert failed.status == RunStatus.FAILED
    page = client.get("/api/runs?workflow=one&limit=2", headers=headers).json()
    assert [r["id"] for r in page["runs"]] == [ones[2].pk, ones[1].pk]
    rest = client.get(f"/api/runs?workflow=one&limit=2&cursor={page['next_cursor']}", headers=headers).json()
    assert [r["id"] for r in rest["runs"]] == [ones[0].pk] and rest["next_cursor"] is None
    only_failed = client.get("/api/runs?status=failed", headers=headers).json()["runs"]
    assert [(r["id"], r["workflow"], r["status"]) for r in only_failed] == [(failed.pk, "two", "failed")]
    bad = client.get("/api/runs?cursor=not-a-cursor", headers=headers)
    assert bad.status_code == 422 and set(bad.json()["fields"]) == {"cursor"}
    assert client.get("/api/runs?status=exploded", headers=headers).status_code == 422


def test_nobody_lists_runs_they_may_not_see(client: Client, people: dict[str, Any]) -> None:
    flow("    - {key: a, agent: echo}", key="one")
    run = start("one", by=people["ops"])
    assert client.get("/api/runs", headers=bearer(people["outsider"])).json()["runs"] == []
    hidden = client.get(f"/api/runs/{run.pk}", headers=bearer(people["outsider"]))
    assert hidden.status_code == 404 and hidden.json()["error"] == "not_found"
    assert client.get(f"/api/runs/{run.pk}/events", headers=bearer(people["outsider"])).status_code == 404


def test_a_run_shows_its_steps_attempts_output_and_usage(client: Client, people: dict[str, Any]) -> None:
    flow("    - {key: a, agent: echo, input: {n: 1}}\n    - {key: b, agent: flaky, after: [a]}", key="one")
    run = start("one", by=people["ops"])
    body = client.get(f"/api/runs/{run.pk}", headers=bearer(people["ops"])).json()
    assert body["status"] == "failed" and body["workflow"] == "one" and body["version"] == 1
    steps = {s["key"]: s for s in body["steps"]}
    assert steps["a"]["status"] == "succeeded" and steps["a"]["output"] == {"n": 1}
    assert [a["status"] for a in steps["a"]["attempts"]] == ["succeeded"]
    assert steps["b"]["status"] == "failed"
    failed = steps["b"]["attempts"][-1]
    assert (
        failed["status"] == "failed"
        and failed["error_class"]
        and failed["error"]
        and failed["agent"] == "flaky"
    )
    assert {"total_tokens", "cost", "duration_seconds", "input", "output"} <= set(body)
    assert body["steps_truncated"] is False


def test_a_client_follows_the_event_log_with_after(client: Client, people: dict[str, Any]) -> None:
    flow("    - {key: a, agent: echo}\n    - {key: b, agent: echo, after: [a]}", key="one")
    run = start("one", by=people["ops"])
    headers = bearer(people["ops"])
    ids = list(RunEvent.objects.filter(run=run).order_by("id").values_list("id", flat=True))
    first = client.get(f"/api/runs/{run.pk}/events?limit=2", headers=headers).json()
    assert [e["id"] for e in first["events"]] == ids[:2] and first["more"] is True
    assert first["events"][0]["kind"] == "run.started"
    rest = client.get(
        f"/api/runs/{run.pk}/events?after={first['next_after']}&limit=500", headers=headers
    ).json()
    assert [e["id"] for e in rest["events"]] == ids[2:] and rest["more"] is False
    assert rest["events"][-1]["kind"] == "run.succeeded"
    later = client.get(f"/api/runs/{run.pk}/events?after={rest['next_after']}", headers=headers).json()
    assert later == {"events": [], "next_after": ids[-1], "more": False}


def test_an_id_past_the_database_range_is_422_not_a_server_error(
    client: Client, people: dict[str, Any]
) -> None:
    response = client.get(f"/api/runs/{2**70}", headers=bearer(people["ops"]))
    assert response.status_code == 422 and set(response.json()["fields"]) == {"run_id"}
