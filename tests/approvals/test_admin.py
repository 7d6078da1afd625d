"""The admin: API tokens are created there and shown once; items and their history are read-only."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from approvals import transitions
from approvals.auth import create_api_token, hash_token
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


@pytest.fixture
def staff(people: dict[str, Any]) -> Any:
    """carol as a staff member who may view every approvals model in the admin."""
    from django.contrib.auth.models import Permission

    carol = people["carol"]
    carol.is_staff = True
    carol.save()
    carol.user_permissions.add(*Permission.objects.filter(content_type__app_label="approvals"))
    return carol


def test_staff_see_in_the_admin_only_the_items_they_may_see(
    client: Client, people: dict[str, Any], staff: Any
) -> None:
    flow("    - {key: mine, approval: {title: 'For legal', approvers: {groups: [legal]}}}", key="legal-wf")
    flow("    - {key: theirs, approval: {title: 'Secret merger', approvers: {users: [dave]}}}", key="merger")
    mine = item_for(start("legal-wf", by=people["ops"]), "mine")
    theirs = item_for(start("merger", by=people["ops"]), "theirs")
    client.force_login(staff)
    listing = client.get("/admin/approvals/item/")
    assert listing.status_code == 200
    assert "For legal" in listing.content.decode() and "Secret merger" not in listing.content.decode()
    assert client.get(f"/admin/approvals/item/{mine.pk}/change/").status_code == 200
    # Another's item is "not found" (the admin redirects to its index with a message).
    assert client.get(f"/admin/approvals/item/{theirs.pk}/change/").status_code == 302
    events = client.get("/admin/approvals/itemevent/").content.decode()
    assert f"/admin/approvals/itemevent/{theirs.events.first().pk}/" not in events
    assert f"/admin/approvals/itemevent/{mine.events.first().pk}/" in events
    assert client.get(f"/admin/approvals/itemevent/{theirs.events.first().pk}/change/").status_code == 302


def test_a_superuser_sees_every_item_in_the_admin(
    signed_in_admin: Client, people: dict[str, Any]
) -> None:
    flow("    - {key: theirs, approval: {title: 'Secret merger', approvers: {users: [dave]}}}", key="merger")
    item_for(start("merger", by=people["ops"]), "theirs")
    assert "Secret merger" in signed_in_admin.get("/admin/approvals/item/").content.decode()


def test_staff_neither_see_nor_create_api_tokens_whatever_their_permissions(
    client: Client, people: dict[str, Any], staff: Any
) -> None:
    row, _ = create_api_token(user=people["approver"], name="approver-laptop")
    client.force_login(staff)
    assert client.get("/admin/approvals/apitoken/").status_code == 403
    assert client.get(f"/admin/approvals/apitoken/{row.pk}/change/").status_code == 403
    # A token for another user would let staff act as them through the API.
    response = client.post("/admin/approvals/apitoken/add/", {"user": people["ops"].pk, "name": "mine now"})
    assert response.status_code == 403
    assert not ApiToken.objects.filter(name="mine now").exists()
    assert "apitoken" not in client.get("/admin/").content.decode()
