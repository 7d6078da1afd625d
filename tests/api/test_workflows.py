"""GET /api/workflows, GET /api/workflows/{key}, and POST /api/workflows/{key}/runs with an
idempotency key."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.utils import timezone

from orchestration.models import Run, StartRequest
from tests.api.conftest import bearer, post
from tests.approvals.conftest import flow

pytestmark = pytest.mark.django_db


def test_the_list_shows_only_the_workflows_the_caller_sees(
    client: Client, people: dict[str, Any], digest: str
) -> None:
    flow("    - {key: a, agent: echo}", key="private", extra="")
    seen = client.get("/api/workflows", headers=bearer(people["approver"])).json()
    assert [w["key"] for w in seen["workflows"]] == ["digest"]
    assert seen["workflows"][0]["version"] == 1 and seen["next_cursor"] is None
    owner = client.get("/api/workflows", headers=bearer(people["ops"])).json()
    assert [w["key"] for w in owner["workflows"]] == ["digest", "private"]
    assert client.get("/api/workflows", headers=bearer(people["outsider"])).json()["workflows"] == []


def test_the_list_is_cut_into_pages_by_its_cursor(client: Client, people: dict[str, Any]) -> None:
    for key in ("a-flow", "b-flow", "c-flow"):
        flow("    - {key: a, agent: echo}", key=key)
    headers = bearer(people["ops"])
    first = client.get("/api/workflows?limit=2", headers=headers).json()
    assert [w["key"] for w in first["workflows"]] == ["a-flow", "b-flow"]
    second = client.get(f"/api/workflows?limit=2&cursor={first['next_cursor']}", headers=headers).json()
    assert [w["key"] for w in second["workflows"]] == ["c-flow"] and second["next_cursor"] is None


def test_a_workflow_shows_its_version_inputs_and_triggers_but_no_secret(
    client: Client, people: dict[str, Any], digest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_WEBHOOK_SECRET", "s3cret-value")
    response = client.get("/api/workflows/digest", headers=bearer(people["approver"]))
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 1 and body["can_operate"] is False
    assert body["inputs"]["topic"] == {"type": "string", "required": True}
    kinds = {t["kind"]: t for t in body["triggers"]}
    assert kinds["cron"]["cron"] == "0 9 * * 1-5"
    assert (
        kinds["webhook"]["secret_env"] == "CRM_WEBHOOK_SECRET" and kinds["webhook"]["url"] == "/hooks/digest"
    )
    assert kinds["event"]["event"] == "order.placed"
    assert "s3cret-value" not in response.content.decode()


def test_a_workflow_the_caller_may_not_see_is_404_like_a_missing_one(
    client: Client, people: dict[str, Any], digest: str
) -> None:
    hidden = client.get("/api/workflows/digest", headers=bearer(people["outsider"]))
    missing = client.get("/api/workflows/nothing-here", headers=bearer(people["outsider"]))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"] == "not_found" and set(hidden.json()) == {"error", "detail", "fields"}


def test_an_operator_starts_a_run_and_gets_201_with_it(
    client: Client, people: dict[str, Any], digest: str
) -> None:
    response = post(
        client, "/api/workflows/digest/runs", {"input": {"topic": "tide pools"}}, bearer(people["ops"])
    )
    assert response.status_code == 201, response.json()
    run = Run.objects.get()
    assert response.json()["id"] == run.pk and response.json()["status"] == "running"
    assert (
        run.input == {"topic": "tide pools", "count": 1}
        and run.started_by == people["ops"]
        and run.trigger == "api"
    )


def test_a_bad_input_is_422_naming_the_field_and_starts_nothing(
    client: Client, people: dict[str, Any], digest: str
) -> None:
    headers = bearer(people["ops"])
    missing = post(client, "/api/workflows/digest/runs", {"input": {}}, headers)
    assert missing.status_code == 422 and missing.json()["fields"] == {"input.topic": "required"}
    wrong = post(client, "/api/workflows/digest/runs", {"input": {"topic": "x", "count": "many"}}, headers)
    assert wrong.status_code == 422 and set(wrong.json()["fields"]) == {"input.count"}
    not_an_object = post(client, "/api/workflows/digest/runs", {"input": [1, 2]}, headers)
    assert not_an_object.status_code == 422 and set(not_an_object.json()["fields"]) == {"input"}
    assert not Run.objects.exists()


def test_a_viewer_may_not_start_a_run(client: Client, people: dict[str, Any], digest: str) -> None:
    response = post(
        client, "/api/workflows/digest/runs", {"input": {"topic": "x"}}, bearer(people["approver"])
    )
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert not Run.objects.exists()


def test_the_same_idempotency_key_returns_the_first_run_and_starts_no_second(
    client: Client, people: dict[str, Any], digest: str
) -> None:
    headers = bearer(people["ops"])
    body = {"input": {"topic": "x"}, "idempotency_key": "order-42"}
    first = post(client, "/api/workflows/digest/runs", body, headers)
    again = post(client, "/api/workflows/digest/runs", body, headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and Run.objects.count() == 1
    # Another key is another run; the key is per user, too.
    assert (
        post(
            client, "/api/workflows/digest/runs", {**body, "idempotency_key": "order-43"}, headers
        ).status_code
        == 201
    )
    assert Run.objects.count() == 2


def test_the_same_key_with_another_input_is_a_conflict_naming_the_first_run(
    client: Client, people: dict[str, Any], digest: str
) -> None:
    headers = bearer(people["ops"])
    first = post(client, "/api/workflows/digest/runs", {"input": {"topic": "x"}, "idempotency_key": "k-1"}, headers)
    for other in ({"topic": "y"}, {"topic": 5}, {}):
        again = post(client, "/api/workflows/digest/runs", {"input": other, "idempotency_key": "k-1"}, headers)
        assert again.status_code == 409, other
        body = again.json()
        assert body["error"] == "idempotency_conflict"
        assert f"already started run {first.json()['id']} with another input" in body["detail"]
    assert Run.objects.count() == 1
    # The first input, written with its defaults filled in or not, is the same request.
    assert post(client, "/api/workflows/digest/runs", {"input": {"topic": "x"}, "idempotency_key": "k-1"}, headers).status_code == 200


def test_a_key_older_than_a_day_starts_a_new_run(client: Client, people: dict[str, Any], digest: str) -> None:
    headers = bearer(people["ops"])
    body = {"input": {"topic": "x"}, "idempotency_key": "daily"}
    with time_machine.travel(timezone.now(), tick=False) as clock:
        first = post(client, "/api/workflows/digest/runs", body, headers).json()["id"]
        clock.shift(timedelta(hours=23))
        assert post(client, "/api/workflows/digest/runs", body, headers).json()["id"] == first
        clock.shift(timedelta(hours=2))
        later = post(client, "/api/workflows/digest/runs", body, headers)
    assert later.status_code == 201 and later.json()["id"] != first
    assert StartRequest.objects.get().run_id == later.json()["id"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_starts_with_one_key_start_one_run(people: dict[str, Any], digest: str) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrent inserts are a PostgreSQL matter: SQLite has one writer at a time")
    headers = bearer(people["ops"])
    body = {"input": {"topic": "x"}, "idempotency_key": "same-key"}
    barrier = threading.Barrier(4)
    answers: list[tuple[int, int]] = []

    def press() -> None:
        try:
            barrier.wait()
            response = post(Client(), "/api/workflows/digest/runs", body, headers)
            answers.append((response.status_code, response.json()["id"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=press) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(status for status, _ in answers) == [200, 200, 200, 201]
    assert len({run for _, run in answers}) == 1
    assert Run.objects.count() == 1
