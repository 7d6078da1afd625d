"""Who sees and who decides what: approvals.access."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext

from approvals import access, transitions
from tests.approvals.conftest import flow, item_for, start

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_items(people: dict[str, Any]) -> tuple[Any, Any]:
    flow(
        "    - {key: legal, approval: {title: Legal, approvers: {groups: [legal]}, deadline: 2h}}\n"
        "    - {key: mine, approval: {title: Mine, approvers: {users: [approver]}, deadline: 1h}}"
    )
    run = start(by=people["ops"])
    return item_for(run, "legal"), item_for(run, "mine")


def test_the_inbox_holds_items_assigned_directly_or_through_a_group(
    people: dict[str, Any], two_items: Any
) -> None:
    legal, mine = two_items
    assert list(access.decidable_items(people["approver"])) == [mine, legal], "soonest deadline first"
    assert list(access.decidable_items(people["carol"])) == [legal]
    assert list(access.decidable_items(people["outsider"])) == []
    assert access.items_waiting_count(people["approver"]) == 2
    assert access.items_waiting_count(AnonymousUser()) == 0


def test_an_admin_sees_every_pending_item(admin_user: Any, two_items: Any) -> None:
    assert set(access.decidable_items(admin_user)) == set(two_items)


def test_decided_items_leave_the_inbox(people: dict[str, Any], two_items: Any) -> None:
    legal, mine = two_items
    transitions.vote(item_id=mine.pk, user=people["approver"], decision="approve")
    assert list(access.decidable_items(people["approver"])) == [legal]
    assert mine in access.visible_items(people["approver"])


def test_the_runs_starter_does_not_see_their_own_approvals_to_decide(people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: Ok, approvers: {users: [approver]}}}")
    run = start(by=people["approver"])
    item = item_for(run, "ok")
    assert access.items_waiting_count(people["approver"]) == 0
    assert not access.can_decide(people["approver"], item)
    assert access.get_item_for_user(people["approver"], item.pk) == item, "but may look at it"


def test_the_inbox_count_is_one_query(people: dict[str, Any], two_items: Any) -> None:
    with CaptureQueriesContext(connection) as queries:
        count = access.items_waiting_count(people["approver"])
    assert len(queries) == 1
    assert count == 2


def test_an_item_is_seen_by_its_people_and_no_one_else(
    people: dict[str, Any], admin_user: Any, two_items: Any
) -> None:
    legal, _ = two_items
    for someone in (people["carol"], people["approver"], people["ops"], admin_user):
        assert access.get_item_for_user(someone, legal.pk) == legal
    with pytest.raises(PermissionDenied):
        access.get_item_for_user(people["outsider"], legal.pk)
    with pytest.raises(PermissionDenied):
        access.get_item_for_user(AnonymousUser(), legal.pk)
    with pytest.raises(Http404):
        access.get_item_for_user(people["carol"], 999999)


def test_an_inactive_approver_decides_nothing(people: dict[str, Any], two_items: Any) -> None:
    legal, _ = two_items
    people["carol"].is_active = False
    people["carol"].save()
    assert not access.can_decide(people["carol"], legal)
    assert list(access.decidable_items(people["carol"])) == []
