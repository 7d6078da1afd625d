"""Refusals say why: htmx actions get the reason as text, page loads get 403/404/500 pages in the
product's style (issue 7, point 24)."""

from __future__ import annotations

from typing import Any

import pytest
from django.template import loader
from django.test import Client
from django.urls import reverse

from approvals import transitions
from approvals.models import Item, ItemStatus, Vote
from tests.approvals.conftest import flow, item_for, start

pytestmark = pytest.mark.django_db

LEGAL = (
    "    - key: review\n"
    "      approval: {title: 'Publish?', approvers: {groups: [legal]}, deadline: 2h, on_timeout: escalate,"
    " escalate_to: {users: [dave]}}\n"
    "    - {key: publish, agent: echo, after: [review], input: '{{ steps.review.output.decision }}'}"
)
REASON = "This item was reassigned to dave by carol; it is no longer yours to decide."


def reassigned_away_from_approver(people: dict[str, Any]) -> Item:
    """approver sat in legal, which had the item; carol (also legal) handed it to dave."""
    flow(LEGAL)
    item = item_for(start(by=people["ops"]), "review")
    transitions.reassign(item_id=item.pk, user=people["carol"], to_user="dave", note="dave decides these")
    return item


def test_an_htmx_approve_after_reassignment_answers_403_with_the_reason_as_text(
    client: Client, people: dict[str, Any]
) -> None:
    item = reassigned_away_from_approver(people)
    client.force_login(people["approver"])

    response = client.post(
        reverse("approvals:decide", args=[item.pk]),
        {"place": "page", "decision": "approve"},
        HTTP_HX_REQUEST="true",
    )

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == REASON
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING and not Vote.objects.filter(item=item).exists()


def test_a_reload_after_reassignment_shows_the_styled_403_saying_why(
    client: Client, people: dict[str, Any]
) -> None:
    item = reassigned_away_from_approver(people)
    client.force_login(people["approver"])

    response = client.get(reverse("approvals:item", args=[item.pk]))

    assert response.status_code == 403
    page = response.content.decode()
    assert '<header class="topbar">' in page and 'class="card error-page"' in page, "the product's look"
    assert f'<p class="error-page__reason" data-refusal-reason>{REASON}</p>' in page
    assert "Your approvals" in page


def test_a_plain_403_without_a_reason_still_says_something(client: Client, people: dict[str, Any]) -> None:
    flow(LEGAL)
    item = item_for(start(by=people["ops"]), "review")
    client.force_login(people["outsider"])
    page = client.get(reverse("approvals:item", args=[item.pk])).content.decode()
    assert "This item is not assigned to you." in page and 'class="card error-page"' in page


def test_a_missing_item_is_a_styled_404_and_plain_text_for_htmx(
    client: Client, people: dict[str, Any]
) -> None:
    client.force_login(people["approver"])

    response = client.get("/approvals/999999/")
    assert response.status_code == 404
    page = response.content.decode()
    assert '<header class="topbar">' in page and "Nothing here" in page
    assert "<code>/approvals/999999/</code>" in page

    htmx = client.post("/approvals/999999/decide/", {"decision": "approve"}, HTTP_HX_REQUEST="true")
    assert htmx.status_code == 404 and htmx["Content-Type"].startswith("text/plain")
    assert htmx.content.decode() == "This item does not exist (any more)."


def test_an_unknown_address_is_a_styled_404(client: Client, people: dict[str, Any]) -> None:
    client.force_login(people["approver"])
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and "Nothing here" in response.content.decode()


def test_a_server_error_is_a_styled_500_that_needs_no_context(
    client: Client, people: dict[str, Any], monkeypatch: pytest.MonkeyPatch, django_assert_num_queries: Any
) -> None:
    flow(LEGAL)
    item = item_for(start(by=people["ops"]), "review")

    def broken(item_id: int) -> Item:
        raise RuntimeError("the database went away")

    monkeypatch.setattr("approvals.read_models.load_item", broken)
    client.force_login(people["approver"])
    client.raise_request_exception = False

    response = client.get(reverse("approvals:item", args=[item.pk]))

    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong on our side" in page
    assert 'href="/static/css/baton.css"' in page and '<header class="topbar">' in page
    # Django renders 500.html with an empty context, often when the database is the problem:
    # the template must render from nothing, and ask nothing of the database.
    with django_assert_num_queries(0):
        alone = loader.get_template("500.html").render()
    assert "Something went wrong on our side" in alone
