"""The inbox's read models and refusals: an item's page is built from (item, user) without a
request, a boosted link gets the whole page, and a refusal has one status on a page and in the API."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from approvals import transitions as decisions
from approvals.auth import create_api_token
from approvals.errors import REFUSALS, status_for
from approvals.models import Item
from approvals.read_models import item_page, load_item, rows
from orchestration import transitions
from orchestration.transitions import InvalidTransition
from tests.approvals.test_views import ARTICLE
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db


def article(ops: Any) -> Item:
    load_workflow(ARTICLE)
    return Item.objects.get(run=drive(transitions.start_run(workflow="article", input={"topic": "tides"}, started_by=ops)))


def test_an_item_page_is_built_from_the_item_and_a_person(ops: Any, approver: Any) -> None:
    item = load_item(article(ops).pk)
    context = item_page(item, approver)
    assert context["can_decide"] is True and context["acts"] is True
    assert [row.step_key for row in context["leading"]] == ["draft"]
    # The requester sees it too, and may not decide it.
    assert item_page(item, ops)["can_decide"] is False


def test_a_row_counts_the_votes_it_shows(ops: Any, approver: Any) -> None:
    item = article(ops)
    decisions.vote(item_id=item.pk, user=approver, decision="approve")
    (row,) = rows([Item.objects.get(pk=item.pk)], approver)
    assert (row.approvals, row.my_vote, row.can_vote) == (1, "approve", False)


@pytest.mark.parametrize("boosted", [False, True])
def test_htmx_gets_the_item_s_body_and_a_boosted_link_the_whole_page(
    client: Client, ops: Any, approver: Any, boosted: bool
) -> None:
    item = article(ops)
    client.force_login(approver)
    headers = {"HTTP_HX_REQUEST": "true", **({"HTTP_HX_BOOSTED": "true"} if boosted else {})}
    page = client.get(reverse("approvals:item", args=[item.pk]), **headers).content.decode()
    assert ("<html" in page) is boosted


def test_each_refusal_has_one_status() -> None:
    assert [status_for(cls.__new__(cls)) for cls in REFUSALS] == [403, 409, 409, 422]
    assert status_for(InvalidTransition("moved on")) == 409
    assert status_for(RuntimeError("a bug")) == 500


def test_a_second_decision_is_a_conflict_on_the_page_and_in_the_api_alike(
    client: Client, ops: Any, approver: Any
) -> None:
    item = article(ops)
    decisions.vote(item_id=item.pk, user=approver, decision="approve")
    client.force_login(approver)

    page = client.post(reverse("approvals:decide", args=[item.pk]), {"decision": "reject", "comment": "no"}, HTTP_HX_REQUEST="true")
    _, token = create_api_token(user=approver, name="test")
    api = client.post(
        f"/api/approvals/{item.pk}/decision",
        {"decision": "reject", "comment": "no"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )

    assert page.status_code == api.status_code == 409
    assert "Nothing changed" in page.content.decode()
    assert api.json()["decided_by"] == "approver"
