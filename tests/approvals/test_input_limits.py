"""What people type into the inbox is checked like run input: comments have a maximum length,
and nothing that cannot be stored (NUL, lone surrogates, deep nesting) gets in; 422 with the
field named, in pages and in the API (always JSON)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from approvals import transitions
from approvals.auth import create_api_token
from approvals.models import Item, ItemStatus, Vote
from orchestration.status import RunStatus
from tests.approvals.conftest import flow, item_for, start

pytestmark = pytest.mark.django_db

REVIEW = "    - key: review\n      approval: {title: 'Publish?', approvers: {groups: [legal]}}"
PICKY = "    - {key: check, agent: picky, input: {ok: false}}"
MANUAL = (
    "    - key: fix\n"
    "      manual: {title: Fix it, assignees: {users: [approver]}, form: {street: {type: string}, extra: {type: object}}}"
)


def bearer(user: Any) -> dict[str, str]:
    _, token = create_api_token(user=user, name="test")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def review(people: dict[str, Any]) -> Item:
    flow(REVIEW)
    return item_for(start(by=people["ops"]), "review")


def unchanged(item: Item) -> None:
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING and item.comment == ""
    assert not Vote.objects.filter(item=item).exists()


def test_a_comment_longer_than_the_limit_is_refused_by_the_page_and_the_api(
    client: Client, people: dict[str, Any], review: Item
) -> None:
    client.force_login(people["approver"])
    page = client.post(
        reverse("approvals:decide", args=[review.pk]),
        {"place": "page", "decision": "reject", "comment": "x" * 1_000_000},
        HTTP_HX_REQUEST="true",
    )
    assert page.status_code == 422
    assert "1,000,000 characters; at most 5,000 are allowed" in page.content.decode()
    api = client.post(
        f"/api/approvals/{review.pk}/decision",
        {"decision": "reject", "comment": "x" * 5_001},
        content_type="application/json",
        headers=bearer(people["approver"]),
    )
    assert api.status_code == 422
    assert api.json()["fields"] == {"comment": "5,001 characters; at most 5,000 are allowed"}
    unchanged(review)


@pytest.mark.parametrize(("comment", "problem"), [("no\x00", "NUL character"), ("bad \ud800", "lone surrogate")])
def test_a_comment_that_cannot_be_stored_is_a_json_422_from_the_api(
    client: Client, people: dict[str, Any], review: Item, comment: str, problem: str
) -> None:
    body = json.dumps({"decision": "reject", "comment": comment})  # "\u0000", "\ud800" escapes
    response = client.post(
        f"/api/approvals/{review.pk}/decision", body, content_type="application/json", headers=bearer(people["approver"])
    )
    assert response.status_code == 422 and response["Content-Type"].startswith("application/json")
    assert problem in response.json()["fields"]["comment"]
    unchanged(review)


def test_an_edited_input_or_output_that_cannot_be_stored_is_refused(people: dict[str, Any]) -> None:
    flow(PICKY, extra="  on_failure: escalate")
    run = start(by=people["approver"])
    item = item_for(run, "check", kind="exception")
    with pytest.raises(transitions.InvalidInput) as caught:
        transitions.resolve_exception(item_id=item.pk, user=people["ops"], action="retry", input={"ok": "\ud800"})
    assert "lone surrogate" in caught.value.errors["input"]
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(transitions.InvalidInput) as caught:
        transitions.resolve_exception(item_id=item.pk, user=people["ops"], action="skip", output=deep)
    assert caught.value.errors == {"output": "nested more than 32 levels deep"}
    item.refresh_from_db()
    run.refresh_from_db()
    assert item.status == ItemStatus.PENDING and run.status == RunStatus.RUNNING


def test_the_exception_page_refuses_json_nested_too_deeply_with_422(client: Client, people: dict[str, Any]) -> None:
    flow(PICKY, extra="  on_failure: escalate")
    item = item_for(start(by=people["approver"]), "check", kind="exception")
    client.force_login(people["ops"])
    response = client.post(
        reverse("approvals:resolve", args=[item.pk]),
        {"place": "page", "action": "skip", "output": "[" * 100_000 + "]" * 100_000},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 422 and "Nested too deeply." in response.content.decode()
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING


def test_a_manual_task_field_that_cannot_be_stored_is_refused_naming_the_field(
    client: Client, people: dict[str, Any]
) -> None:
    flow(MANUAL)
    item = item_for(start(by=people["ops"]), "fix")
    client.force_login(people["approver"])
    response = client.post(
        reverse("approvals:submit", args=[item.pk]),
        {"place": "page", "street": "Main St\x00", "extra": "{}"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 422 and "NUL character" in response.content.decode()
    with pytest.raises(transitions.InvalidInput) as caught:
        transitions.submit_manual(item_id=item.pk, user=people["approver"], data={"extra": {"k": "\ud800"}})
    assert "lone surrogate" in caught.value.errors["extra"]
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING


def test_a_reassignment_note_longer_than_the_limit_is_refused(people: dict[str, Any], review: Item) -> None:
    with pytest.raises(transitions.InvalidInput) as caught:
        transitions.reassign(item_id=review.pk, user=people["approver"], to_user="carol", note="n" * 5_001)
    assert caught.value.errors == {"note": "5,001 characters; at most 5,000 are allowed"}
    assert list(review.users.values_list("username", flat=True)) == list(
        Item.objects.get(pk=review.pk).users.values_list("username", flat=True)
    )
