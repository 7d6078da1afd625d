"""Tokens: an expired or revoked one is 401 in the API's error body; `create_api_token --days`;
"last used" and the expiry in the admin's list."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from approvals.auth import create_api_token
from approvals.models import ApiToken

pytestmark = pytest.mark.django_db


def test_no_token_is_401_in_the_error_body(client: Client) -> None:
    response = client.get("/api/workflows")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized" and "Bearer" in response.json()["detail"]
    assert response["WWW-Authenticate"] == "Bearer"


def test_a_revoked_token_is_401(client: Client, ops: Any) -> None:
    row, token = create_api_token(user=ops)
    assert client.get("/api/workflows", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    row.delete()
    assert client.get("/api/workflows", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_token_works_until_it_expires(client: Client, ops: Any) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        row, token = create_api_token(user=ops, days=1)
        headers = {"Authorization": f"Bearer {token}"}
        clock.shift(timedelta(hours=23))
        assert client.get("/api/workflows", headers=headers).status_code == 200
        row.refresh_from_db()
        assert row.last_used_at == timezone.now()
        clock.shift(timedelta(hours=2))
        expired = client.get("/api/workflows", headers=headers)
    assert expired.status_code == 401 and expired.json()["error"] == "unauthorized"


def test_the_command_gives_a_token_an_expiry(ops: Any) -> None:
    out, err = StringIO(), StringIO()
    call_command("create_api_token", "ops", "--days", "30", stdout=out, stderr=err)
    row = ApiToken.objects.get()
    assert row.expires_at is not None
    assert timedelta(days=29, hours=23) < row.expires_at - timezone.now() <= timedelta(days=30)
    assert "expires on" in err.getvalue() and out.getvalue().strip().startswith("baton_")
    with pytest.raises(CommandError, match="--days"):
        call_command("create_api_token", "ops", "--days", "0", stdout=StringIO(), stderr=StringIO())


def test_the_admin_lists_when_each_token_was_last_used_and_expires(client: Client, admin_user: Any) -> None:
    row, token = create_api_token(user=admin_user, name="ci", days=7)
    client.get("/api/workflows", headers={"Authorization": f"Bearer {token}"})
    client.force_login(admin_user)
    page = client.get("/admin/approvals/apitoken/").content.decode()
    assert "Last used at" in page and "Expires at" in page
    assert "column-last_used_at" in page and "column-expires_at" in page
