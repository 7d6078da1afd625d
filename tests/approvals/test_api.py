"""The JSON API: /api/approvals with personal tokens, and its OpenAPI description."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from approvals import transitions
from approvals.auth import create_api_token, hash_token
from approvals.models import ApiToken, ItemStatus
from orchestration.status import RunStatus
from tests.approvals.conftest import flow, item_for, start
from tests.support import drive

pytestmark = pytest.mark.django_db


def bearer(user: Any) -> dict[str, str]:
    _, token = create_api_token(user=user, name="test")
    return {"Authorization": f"Bearer {token}"}


def decide(client: Client, item_id: int, body: Any, headers: dict[str, str]) -> Any:
    return client.post(
        f"/api/approvals/{item_id}/decision", body, content_type="application/json", headers=headers
    )


@pytest.fixture
def waiting(people: dict[str, Any]) -> Any:
    flow(
        "    - key: review\n"
        "      approval: {title: \"Publish '{{ input.topic }}'?\", approvers: {groups: [legal]}, deadline: 2h}\n"
        "    - {key: publish, agent: echo, after: [review], input: '{{ steps.review.output.decision }}'}",
        extra="  inputs: {topic: {type: string, default: tides}}",
    )
    return start(by=people["ops"])


# --- reading -----------------------------------------------------------------------------------


def test_it_lists_the_items_waiting_for_the_caller(
    client: Client, people: dict[str, Any], waiting: Any
) -> None:
    item = item_for(waiting, "review")
    response = client.get("/api/approvals?status=pending", headers=bearer(people["approver"]))
    assert response.status_code == 200
    (row,) = response.json()
    assert row["id"] == item.pk and row["kind"] == "approval" and row["status"] == "pending"
    assert row["title"] == "Publish 'tides'?"
    assert row["workflow"] == "wf" and row["run_id"] == waiting.pk and row["step"] == "review"
    assert row["requested_by"] == "ops" and row["risk"] == "low" and row["votes"] == []
    assert row["deadline"] and row["url"].endswith(f"/approvals/{item.pk}/")


def test_an_outsider_sees_an_empty_inbox(client: Client, people: dict[str, Any], waiting: Any) -> None:
    response = client.get("/api/approvals", headers=bearer(people["outsider"]))
    assert response.status_code == 200 and response.json() == []


def test_decided_items_are_listed_by_status(client: Client, people: dict[str, Any], waiting: Any) -> None:
    headers = bearer(people["approver"])
    item = item_for(waiting, "review")
    decide(client, item.pk, {"decision": "approve"}, headers)
    assert client.get("/api/approvals", headers=headers).json() == []
    (row,) = client.get("/api/approvals?status=approved", headers=headers).json()
    assert row["id"] == item.pk and row["decided_by"] == "approver"
    assert [v["user"] for v in row["votes"]] == ["approver"]
    requester = client.get("/api/approvals?status=all", headers=bearer(people["ops"])).json()
    assert [r["id"] for r in requester] == [item.pk], "the run's starter sees how it went"
    bad = client.get("/api/approvals?status=whatever", headers=headers)
    assert bad.status_code == 422 and "status" in bad.json()["fields"]


# --- deciding ----------------------------------------------------------------------------------


def test_an_approval_by_api_returns_the_item_and_the_run_goes_on(
    client: Client, people: dict[str, Any], waiting: Any
) -> None:
    item = item_for(waiting, "review")
    response = decide(client, item.pk, {"decision": "approve", "comment": "ok"}, bearer(people["approver"]))
    assert response.status_code == 200
    assert response.json()["status"] == ItemStatus.APPROVED and response.json()["comment"] == "ok"
    assert drive(waiting).status == RunStatus.SUCCEEDED


def test_someone_elses_item_is_404_at_every_endpoint_like_one_that_does_not_exist(
    client: Client, people: dict[str, Any], waiting: Any
) -> None:
    item = item_for(waiting, "review")
    headers = bearer(people["outsider"])
    answers = [
        client.get(f"/api/approvals/{item.pk}", headers=headers),
        decide(client, item.pk, {"decision": "approve"}, headers),
        client.post(
            f"/api/approvals/{item.pk}/resolve", {"action": "abort"}, content_type="application/json", headers=headers
        ),
        client.post(
            f"/api/approvals/{item.pk}/reassign",
            {"to_user": "carol"},
            content_type="application/json",
            headers=headers,
        ),
    ]
    missing = client.get("/api/approvals/999999", headers=headers).json()
    for response in answers:
        assert response.status_code == 404, response.content
        assert response.json() == missing  # nothing tells a taken id from a free one
        assert "Publish" not in response.content.decode() and "legal" not in response.content.decode()
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING and not item.events.filter(kind="reassigned").exists()
    assert client.get("/api/approvals?status=all", headers=headers).json() == []


def test_a_former_assignee_who_never_acted_gets_404_not_who_has_it_now(
    client: Client, people: dict[str, Any], waiting: Any
) -> None:
    item = item_for(waiting, "review")
    dave = people["dave"]
    dave.groups.add(*people["carol"].groups.all())  # in legal, as the item was opened for
    transitions.reassign(item_id=item.pk, user=people["approver"], to_user="carol", note="yours")
    response = decide(client, item.pk, {"decision": "approve"}, bearer(dave))
    assert response.status_code == 404 and "carol" not in response.content.decode()


def test_someone_who_sees_the_item_but_may_not_decide_it_gets_403_with_the_reason(
    client: Client, people: dict[str, Any], waiting: Any
) -> None:
    item = item_for(waiting, "review")
    response = decide(client, item.pk, {"decision": "approve"}, bearer(people["ops"]))  # started the run
    assert response.status_code == 403 and "started this run" in response.json()["detail"]
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING


def test_a_missing_item_is_404(client: Client, people: dict[str, Any], waiting: Any) -> None:
    assert decide(client, 999999, {"decision": "approve"}, bearer(people["approver"])).status_code == 404
    assert client.get("/api/approvals/999999", headers=bearer(people["approver"])).status_code == 404


def test_a_second_decision_is_409_naming_who_and_when(
    client: Client, people: dict[str, Any], waiting: Any
) -> None:
    item = item_for(waiting, "review")
    decide(client, item.pk, {"decision": "approve"}, bearer(people["approver"]))
    response = decide(client, item.pk, {"decision": "reject", "comment": "no"}, bearer(people["carol"]))
    assert response.status_code == 409
    body = response.json()
    assert body["status"] == "approved" and body["decided_by"] == "approver" and body["decided_at"]
    assert body["detail"].startswith("already approved by approver at ")


def test_a_rejection_without_a_comment_is_422_naming_the_field(
    client: Client, people: dict[str, Any], waiting: Any
) -> None:
    item = item_for(waiting, "review")
    response = decide(client, item.pk, {"decision": "reject"}, bearer(people["approver"]))
    assert response.status_code == 422
    assert set(response.json()["fields"]) == {"comment"}
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING


@pytest.mark.parametrize(
    ("body", "field"),
    [({"comment": "hi"}, "decision"), ({"decision": "maybe"}, "decision"), ({"decision": 3}, "decision")],
)
def test_a_bad_body_is_422_naming_the_field(
    client: Client, people: dict[str, Any], waiting: Any, body: Any, field: str
) -> None:
    response = decide(client, item_for(waiting, "review").pk, body, bearer(people["approver"]))
    assert response.status_code == 422
    assert field in response.json()["fields"]


def test_a_body_that_is_not_json_is_422(client: Client, people: dict[str, Any], waiting: Any) -> None:
    response = decide(client, item_for(waiting, "review").pk, "not json{", bearer(people["approver"]))
    assert response.status_code == 422


# --- authentication ----------------------------------------------------------------------------


def test_without_a_token_it_is_401(client: Client, waiting: Any) -> None:
    assert client.get("/api/approvals").status_code == 401
    assert decide(client, item_for(waiting, "review").pk, {"decision": "approve"}, {}).status_code == 401


def test_a_wrong_token_is_401(client: Client, people: dict[str, Any], waiting: Any) -> None:
    create_api_token(user=people["approver"])
    assert client.get("/api/approvals", headers={"Authorization": "Bearer baton_wrong"}).status_code == 401
    response = decide(
        client, item_for(waiting, "review").pk, {"decision": "approve"}, {"Authorization": "Bearer nope"}
    )
    assert response.status_code == 401


def test_a_token_of_an_inactive_user_is_401(client: Client, people: dict[str, Any]) -> None:
    headers = bearer(people["approver"])
    people["approver"].is_active = False
    people["approver"].save()
    assert client.get("/api/approvals", headers=headers).status_code == 401


def test_a_token_of_a_deleted_user_is_401(client: Client, people: dict[str, Any], waiting: Any) -> None:
    headers = bearer(people["carol"])
    assert client.get("/api/approvals", headers=headers).status_code == 200
    people["carol"].delete()
    assert client.get("/api/approvals", headers=headers).status_code == 401
    assert decide(client, item_for(waiting, "review").pk, {"decision": "approve"}, headers).status_code == 401


def test_only_the_tokens_hash_and_prefix_are_stored_and_its_use_is_noted(
    client: Client, people: dict[str, Any]
) -> None:
    row, token = create_api_token(user=people["approver"], name="laptop")
    assert row.key_hash == hash_token(token) and token not in (row.key_hash, row.prefix)
    assert token.startswith(row.prefix) and len(row.prefix) == 12
    assert row.last_used_at is None
    client.get("/api/approvals", headers={"Authorization": f"Bearer {token}"})
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_a_browser_session_works_but_writes_need_the_csrf_token(people: dict[str, Any], waiting: Any) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(people["approver"])
    assert browser.get("/api/approvals").status_code == 200
    item = item_for(waiting, "review")
    response = decide(browser, item.pk, {"decision": "approve"}, {})
    assert response.status_code == 403
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING
    browser.get("/login/")  # sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    assert decide(browser, item.pk, {"decision": "approve"}, {"X-CSRFToken": token}).status_code == 200


def test_create_api_token_prints_a_token_that_works(
    client: Client, people: dict[str, Any], waiting: Any
) -> None:
    out, err = StringIO(), StringIO()
    call_command("create_api_token", "approver", "--name", "cli", stdout=out, stderr=err)
    token = out.getvalue().strip()
    assert token.startswith("baton_") and "shown only now" in err.getvalue()
    row = ApiToken.objects.get(name="cli")
    assert row.user == people["approver"] and row.key_hash == hash_token(token)
    response = client.get("/api/approvals", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and len(response.json()) == 1


def test_create_api_token_refuses_an_unknown_user(db: Any) -> None:
    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("create_api_token", "ghost", stdout=StringIO(), stderr=StringIO())


# --- description -------------------------------------------------------------------------------


def test_the_openapi_description_is_served(client: Client) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert "/api/approvals" in spec["paths"]
    decision = spec["paths"]["/api/approvals/{item_id}/decision"]["post"]
    assert {"200", "403", "404", "409", "422"} <= set(decision["responses"])
    assert "BearerToken" in spec["components"]["securitySchemes"]


def test_listing_costs_the_same_queries_for_one_item_or_many(client: Client, people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: 'Ok', approvers: {groups: [legal]}, required: 2}}")
    headers = bearer(people["approver"])
    first = start(by=people["ops"])
    transitions.vote(item_id=item_for(first, "ok").pk, user=people["carol"], decision="approve")
    with CaptureQueriesContext(connection) as one:
        response = client.get("/api/approvals", headers=headers)
    assert response.status_code == 200
    assert len(response.json()) == 1
    for _ in range(3):
        run = start(by=people["ops"])
        transitions.vote(item_id=item_for(run, "ok").pk, user=people["carol"], decision="approve")
    with CaptureQueriesContext(connection) as four:
        response = client.get("/api/approvals", headers=headers)
    assert response.status_code == 200
    assert len(response.json()) == 4
    assert len(four) == len(one)
