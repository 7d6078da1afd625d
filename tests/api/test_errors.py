"""Every failure under /api/ is one JSON body, {"error", "detail", "fields"}, with its status."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper
from django.test import Client

from tests.api.conftest import bearer, post
from tests.approvals.conftest import flow, start

pytestmark = pytest.mark.django_db


def shape(response: Any) -> tuple[int, str]:
    body = response.json()
    assert set(body) >= {"error", "detail", "fields"} and isinstance(body["fields"], dict), body
    assert response["Content-Type"].startswith("application/json")
    return response.status_code, body["error"]


def test_each_failure_has_its_status_and_code(client: Client, people: dict[str, Any], settings: Any) -> None:
    flow("    - {key: a, agent: echo}", key="one")
    run = start("one", by=people["ops"])
    headers = bearer(people["ops"])
    assert shape(client.get("/api/runs")) == (401, "unauthorized")
    assert shape(post(client, "/api/workflows/one/runs", {}, bearer(people["outsider"]))) == (
        404,
        "not_found",
    )
    assert shape(client.get("/api/nowhere", headers=headers)) == (404, "not_found")
    assert shape(client.delete("/api/runs", headers=headers)) == (405, "method_not_allowed")
    assert shape(post(client, f"/api/runs/{run.pk}/retry", {}, headers)) == (409, "conflict")
    assert shape(post(client, "/api/workflows/one/runs", {"idempotency_key": "é" * 3}, headers)) == (
        422,
        "invalid",
    )
    not_json = client.post(
        "/api/workflows/one/runs", "{nope", content_type="application/json", headers=headers
    )
    assert shape(not_json) == (422, "invalid") and not_json.json()["fields"] == {"body": "not valid JSON"}
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    big = post(client, "/api/workflows/one/runs", {"input": {"topic": "x" * 200}}, headers)
    assert shape(big) == (413, "too_large") and "body" in big.json()["fields"]


def test_a_bug_is_500_and_a_database_away_503_in_the_same_body(
    client: Client, people: dict[str, Any]
) -> None:
    headers = bearer(people["ops"])
    with mock.patch("orchestration.runs_api.access.visible_runs", side_effect=RuntimeError("a bug")):
        assert shape(client.get("/api/runs", headers=headers)) == (500, "server_error")
    with mock.patch.object(CursorWrapper, "execute", side_effect=OperationalError("gone")):
        assert shape(client.get("/api/runs", headers=headers)) == (503, "unavailable")


def test_the_lists_take_a_fixed_number_of_queries(
    client: Client, people: dict[str, Any], django_assert_num_queries: Any
) -> None:
    flow("    - {key: a, agent: echo}", key="one")
    flow("    - {key: a, agent: echo}", key="two")
    for key in ("one", "two", "one"):
        start(key, by=people["ops"])
    headers = bearer(people["ops"])
    # token lookup and last-used, then the page (runs with workflow, version, starter joined)
    with django_assert_num_queries(4):
        assert len(client.get("/api/runs", headers=headers).json()["runs"]) == 3
    with django_assert_num_queries(3):
        assert len(client.get("/api/workflows", headers=headers).json()["workflows"]) == 2
