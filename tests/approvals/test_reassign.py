"""Reassignment hands an item only to someone eligible for it, and the one who handed it on still
sees it (issue 7, point 4). Through the transition, the item page and the JSON API."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse

from approvals import access, transitions
from approvals.auth import create_api_token
from approvals.models import Item, ItemStatus
from orchestration.status import RunStatus
from tests.approvals.conftest import flow, item_for, start
from tests.support import drive

pytestmark = pytest.mark.django_db

# A legal approval: approver and carol are in legal; dave is where it escalates to; outsider
# and a new user "nobody" have no part in it.
LEGAL = (
    "    - key: review\n"
    "      approval: {title: 'Publish?', approvers: {groups: [legal]}, deadline: 2h, on_timeout: escalate,"
    " escalate_to: {users: [dave]}}\n"
    "    - {key: publish, agent: echo, after: [review], input: '{{ steps.review.output.decision }}'}"
)


def legal_item(people: dict[str, Any]) -> Item:
    flow(LEGAL)
    return item_for(start(by=people["ops"]), "review")


def assignees(item: Item) -> tuple[list[str], list[str]]:
    return (
        sorted(item.users.values_list("username", flat=True)),
        sorted(item.groups.values_list("name", flat=True)),
    )


def test_it_refuses_to_hand_an_item_to_someone_with_no_part_in_it(people: dict[str, Any]) -> None:
    item = legal_item(people)
    mail.outbox.clear()

    with pytest.raises(transitions.InvalidInput) as refused:
        transitions.reassign(item_id=item.pk, user=people["approver"], to_user="outsider", note="over to you")

    assert set(refused.value.errors) == {"to_user"}
    assert "outsider is not among the people this item may go to" in refused.value.errors["to_user"]
    assert assignees(item) == ([], ["legal"]), "nothing changed"
    assert not item.events.filter(kind="reassigned").exists() and not mail.outbox
    with pytest.raises(transitions.NotAllowed):
        transitions.vote(item_id=item.pk, user=people["outsider"], decision="approve")


def test_it_hands_an_item_to_a_member_of_its_groups_an_escalation_target_or_an_admin(
    people: dict[str, Any], admin_user: Any
) -> None:
    item = legal_item(people)
    transitions.reassign(item_id=item.pk, user=people["approver"], to_user="carol", note="carol knows it")
    assert assignees(item) == (["carol"], [])
    # Once handed on, the item's first assignees (its groups) and its escalation target are
    # still eligible: carol may pass it back or on.
    transitions.reassign(item_id=item.pk, user=people["carol"], to_user="approver", note="back to you")
    transitions.reassign(item_id=item.pk, user=people["approver"], to_user="dave", note="dave decides")
    transitions.reassign(item_id=item.pk, user=people["dave"], to_user=admin_user.username, note="admin")
    assert assignees(item) == (["admin"], [])
    with pytest.raises(transitions.InvalidInput):
        transitions.reassign(item_id=item.pk, user=admin_user, to_user="outsider", note="no")
    transitions.vote(item_id=item.pk, user=admin_user, decision="approve")
    assert drive(item.run).status == RunStatus.SUCCEEDED


def test_the_one_who_handed_it_on_still_sees_it_and_its_history(people: dict[str, Any]) -> None:
    item = legal_item(people)
    transitions.reassign(item_id=item.pk, user=people["approver"], to_user="carol", note="carol knows it")

    assert access.can_view(people["approver"], item) and not access.can_decide(people["approver"], item)
    assert item in access.visible_items(people["approver"])
    assert item not in access.decidable_items(people["approver"])


def test_the_page_refuses_an_ineligible_person_and_changes_nothing(
    client: Client, people: dict[str, Any]
) -> None:
    item = legal_item(people)
    client.force_login(people["approver"])

    response = client.post(
        reverse("approvals:reassign", args=[item.pk]),
        {"place": "page", "to_user": "outsider", "note": "over to you"},
        HTTP_HX_REQUEST="true",
    )

    assert response.status_code == 422
    assert "Outsider is not among the people this item may go to" in response.content.decode()
    assert assignees(item) == ([], ["legal"])
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING


def test_the_page_hands_it_on_and_the_reassigner_can_still_open_it(
    client: Client, people: dict[str, Any]
) -> None:
    item = legal_item(people)
    client.force_login(people["approver"])

    response = client.post(
        reverse("approvals:reassign", args=[item.pk]),
        {"place": "page", "to_user": "carol", "note": "carol knows it"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200 and "Reassigned to carol." in response.content.decode()

    page = client.get(reverse("approvals:item", args=[item.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert "reassigned to carol by approver: carol knows it" in body  # the history
    assert 'name="decision"' not in body
    decided = client.get(reverse("approvals:decided")).content.decode()
    assert "Publish?" not in decided, "the Decided list shows what is no longer pending"


def test_the_datalist_suggests_only_eligible_people(client: Client, people: dict[str, Any]) -> None:
    item = legal_item(people)
    client.force_login(people["approver"])
    body = client.get(reverse("approvals:item", args=[item.pk])).content.decode()
    suggestions = body.split('<datalist id="reassign-people">', 1)[1].split("</datalist>", 1)[0]
    assert 'value="carol"' in suggestions and 'value="dave"' in suggestions
    assert "outsider" not in suggestions and 'value="approver"' not in suggestions


def bearer(user: Any) -> dict[str, str]:
    _, token = create_api_token(user=user, name="test")
    return {"Authorization": f"Bearer {token}"}


def reassign_by_api(client: Client, item: Item, body: Any, user: Any) -> Any:
    return client.post(
        f"/api/approvals/{item.pk}/reassign", body, content_type="application/json", headers=bearer(user)
    )


def test_the_api_refuses_an_ineligible_person_with_422_naming_the_field(
    client: Client, people: dict[str, Any]
) -> None:
    item = legal_item(people)
    nobody = get_user_model().objects.create_user("nobody", "nobody@example.com", "nobody-pass-1")

    response = reassign_by_api(
        client, item, {"to_user": nobody.username, "note": "yours"}, people["approver"]
    )

    assert response.status_code == 422
    body = response.json()
    assert set(body["fields"]) == {"to_user"} and "nobody is not among" in body["detail"]
    assert assignees(item) == ([], ["legal"])


def test_the_api_hands_it_on_and_the_reassigner_still_reads_it(
    client: Client, people: dict[str, Any]
) -> None:
    item = legal_item(people)

    response = reassign_by_api(
        client, item, {"to_user": "carol", "note": "carol knows it"}, people["approver"]
    )

    assert response.status_code == 200 and response.json()["id"] == item.pk
    assert assignees(item) == (["carol"], [])
    read = client.get(f"/api/approvals/{item.pk}", headers=bearer(people["approver"]))
    assert read.status_code == 200
    outsider = reassign_by_api(client, item, {"to_user": "carol", "note": "x"}, people["outsider"])
    assert outsider.status_code == 404  # not theirs to see: as if there were no such item
