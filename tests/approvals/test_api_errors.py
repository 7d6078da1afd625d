"""API errors are JSON, whatever goes wrong: a database that is away, a bug, a wrong path or method."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper
from django.test import Client

from approvals.auth import create_api_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def headers(approver: Any) -> dict[str, str]:
    _, token = create_api_token(user=approver, name="test")
    return {"Authorization": f"Bearer {token}"}


def test_it_answers_503_json_while_the_database_is_unavailable(client: Client, headers: dict[str, str]) -> None:
    gone = OperationalError("server closed the connection unexpectedly")
    with mock.patch.object(CursorWrapper, "execute", side_effect=gone):
        response = client.get("/api/approvals", headers=headers)

    assert response.status_code == 503
    assert response["Content-Type"].startswith("application/json")
    assert "database is unavailable" in response.json()["detail"]
    assert response["Retry-After"]


def test_it_answers_500_json_when_something_unexpected_fails(client: Client, headers: dict[str, str]) -> None:
    with mock.patch("approvals.api.access.decidable_items", side_effect=RuntimeError("a bug")):
        response = client.get("/api/approvals", headers=headers)

    assert response.status_code == 500
    assert response.json() == {"error": "server_error", "detail": "Internal server error.", "fields": {}}


def test_an_unknown_path_under_the_api_is_a_json_404(client: Client, headers: dict[str, str]) -> None:
    response = client.get("/api/no-such-thing", headers=headers)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert "/api/no-such-thing" in response.json()["detail"]


def test_a_method_an_endpoint_does_not_take_is_a_json_405(client: Client, headers: dict[str, str]) -> None:
    response = client.delete("/api/approvals", headers=headers)

    assert response.status_code == 405
    assert response.json()["detail"].startswith("DELETE is not allowed here")
    assert "GET" in response["Allow"]
