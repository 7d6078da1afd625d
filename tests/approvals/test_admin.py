"""The admin: API tokens are created there and shown once; items and their history are read-only."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from approvals import transitions
from approvals.auth import hash_token
from approvals.models import ApiToken
from tests.approvals.conftest import flow, item_for, start

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed_in_admin(client: Client, admin_user: Any) -> Client:
    client.force_login(admin_user)
    return client


def test_adding_a_token_shows_it_once_and_stores_only_its_hash(
    signed_in_admin: Client, people: dict[str, Any]
) -> None:
    response = signed_in_admin.post(
        "/admin/approvals/apitoken/add/", {"user": people["approver"].pk, "name": "phone"}, follow=True
    )
    assert response.status_code == 200
    match = re.search(r"baton_[A-Za-z0-9_-]+", response.content.decode())
    assert match, "the new token is shown"
    row = ApiToken.objects.get(name="phone")
    assert row.key_hash == hash_token(match.group(0))
    page = signed_in_admin.get(f"/admin/approvals/apitoken/{row.pk}/change/").content.decode()
    assert match.group(0) not in page and row.key_hash not in page
    assert row.prefix in page


def test_an_item_and_its_history_are_shown_read_only(signed_in_admin: Client, people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: 'Ship it', approvers: {users: [approver]}}}")
    run = start(by=people["ops"])
    item = item_for(run, "ok")
    transitions.vote(item_id=item.pk, user=people["approver"], decision="approve", comment="looks right")
    assert signed_in_admin.get("/admin/approvals/item/").status_code == 200
    page = signed_in_admin.get(f"/admin/approvals/item/{item.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "looks right" in body and "approved by approver" in body
    assert 'name="_save"' not in body
    assert signed_in_admin.get("/admin/approvals/itemevent/").status_code == 200
    assert signed_in_admin.get("/admin/approvals/item/add/").status_code == 403
