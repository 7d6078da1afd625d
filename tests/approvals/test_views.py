"""The inbox pages: who gets in, what waits for me and in which order, the count in the navigation,
the decided history, and what each page costs in queries."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals import transitions as decisions
from approvals.models import Item
from orchestration import transitions
from orchestration.models import Run
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: payments, kind: python, risk: high, config: {callable: "tests.agents.basic:echo"}}
  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}}
"""

ARTICLE = (
    AGENTS
    + """
workflow:
  key: article
  name: Article
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: draft, agent: echo, input: {summary: "A piece about {{ input.topic }}"}}
    - key: review
      after: [draft]
      approval:
        title: "Publish '{{ input.topic }}'?"
        details: "{{ steps.draft.output.summary }}"
        approvers: {users: [approver]}
        deadline: 48h
    - {key: publish, agent: echo, after: [review]}
"""
)

REFUND = (
    AGENTS
    + """
workflow:
  key: refund
  name: Refunds
  owner: ops
  steps:
    - {key: pay, agent: payments, input: {amount: 120}, gate: {approvers: {users: [approver]}, deadline: 2h}}
"""
)

QUICK = (
    AGENTS
    + """
workflow:
  key: quick
  name: Quick check
  owner: ops
  steps:
    - key: ok
      approval: {title: Quick check, approvers: {users: [approver]}}
"""
)

FRAGILE = (
    AGENTS
    + """
workflow:
  key: fragile
  name: Fragile
  owner: ops
  on_failure: escalate
  steps:
    - {key: call, agent: refuse, input: {n: 1}}
"""
)


@pytest.fixture
def approver_client(client: Client, approver: Any) -> Client:
    client.force_login(approver)
    return client


def start(key: str, by: Any, **input: Any) -> Run:
    return drive(transitions.start_run(workflow=key, input=input, started_by=by))


def article(ops: Any, topic: str = "tides") -> Item:
    load_workflow(ARTICLE)
    return Item.objects.get(run=start("article", ops, topic=topic))


def row_for(page: str, item: Item) -> str:
    match = re.search(rf'<tr id="item-row-{item.pk}".*?</tr>', page, re.DOTALL)
    assert match, f"no row for item {item.pk}"
    return match.group(0)


def rows_in_order(page: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<tr id="item-row-(\d+)"', page)]


# ---------------------------------------------------------------------------------------------
# Signing in


def test_every_page_sends_a_stranger_to_the_login_form_and_back(
    client: Client, ops: Any, approver: Any
) -> None:
    item = article(ops)
    for name, args in [
        ("inbox", []),
        ("exceptions", []),
        ("decided", []),
        ("count", []),
        ("item", [item.pk]),
    ]:
        url = reverse(f"approvals:{name}", args=args)
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"{reverse('login')}?next={url}"


def test_every_action_sends_a_stranger_to_the_login_form_and_changes_nothing(
    client: Client, ops: Any, approver: Any
) -> None:
    item = article(ops)
    for name in ("decide", "submit", "resolve", "reassign"):
        url = reverse(f"approvals:{name}", args=[item.pk])
        response = client.post(url, {"decision": "approve"})
        assert response.status_code == 302, url
        assert response["Location"].startswith(f"{reverse('login')}?next=")
    item.refresh_from_db()
    assert item.status == "pending"


def test_a_link_from_an_email_lands_on_the_item_after_signing_in(
    client: Client, ops: Any, approver: Any
) -> None:
    item = article(ops)
    url = reverse("approvals:item", args=[item.pk])
    login = client.get(url, follow=True)
    assert f'name="next" value="{url}"' in login.content.decode()

    response = client.post(
        reverse("login"), {"username": "approver", "password": "approver-pass-1", "next": url}, follow=True
    )

    assert response.redirect_chain[-1][0] == url
    assert "Publish &#x27;tides&#x27;?" in response.content.decode()


def test_actions_only_answer_posts(approver_client: Client, ops: Any) -> None:
    item = article(ops)
    for name in ("decide", "submit", "resolve", "reassign"):
        assert approver_client.get(reverse(f"approvals:{name}", args=[item.pk])).status_code == 405


def test_actions_need_the_csrf_token_the_page_gives_htmx(ops: Any, approver: Any) -> None:
    item = article(ops)
    client = Client(enforce_csrf_checks=True)
    client.force_login(approver)
    url = reverse("approvals:decide", args=[item.pk])

    refused = client.post(url, {"decision": "approve", "place": "page"}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 403
    item.refresh_from_db()
    assert item.status == "pending"

    page = client.get(reverse("approvals:item", args=[item.pk])).content.decode()
    token = re.search(r"hx-headers='\{\"X-CSRFToken\": \"([^\"]+)\"\}'", page)
    assert token, "the page hands htmx its CSRF token"
    accepted = client.post(
        url, {"decision": "approve", "place": "page"}, HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token.group(1)
    )
    assert accepted.status_code == 200
    item.refresh_from_db()
    assert item.status == "approved"


def test_the_item_page_and_every_action_refuse_an_outsider(
    client: Client, ops: Any, approver: Any, outsider: Any
) -> None:
    item = article(ops)
    client.force_login(outsider)

    assert client.get(reverse("approvals:item", args=[item.pk])).status_code == 403
    for name, data in [
        ("decide", {"decision": "approve"}),
        ("submit", {}),
        ("resolve", {"action": "abort"}),
        ("reassign", {"to_user": "outsider", "note": "mine now"}),
    ]:
        response = client.post(reverse(f"approvals:{name}", args=[item.pk]), data, HTTP_HX_REQUEST="true")
        assert response.status_code == 403, name
    item.refresh_from_db()
    assert item.status == "pending"
    assert list(item.users.values_list("username", flat=True)) == ["approver"]
    assert not item.votes.exists()


def test_an_outsiders_inbox_is_empty(client: Client, ops: Any, approver: Any, outsider: Any) -> None:
    article(ops)
    client.force_login(outsider)
    page = client.get(reverse("approvals:inbox")).content.decode()
    assert "Nothing is waiting for you." in page
    assert rows_in_order(page) == []


# ---------------------------------------------------------------------------------------------
# Waiting for me


def test_the_inbox_lists_what_waits_for_me_with_the_nearest_deadline_first(
    approver_client: Client, ops: Any, approver: Any
) -> None:
    later = article(ops, "tides")  # 48 hours
    load_workflow(REFUND)
    sooner = Item.objects.get(run=start("refund", ops))  # 2 hours
    load_workflow(QUICK)
    whenever = Item.objects.get(run=start("quick", ops))  # no deadline

    page = approver_client.get(reverse("approvals:inbox")).content.decode()

    assert rows_in_order(page) == [sooner.pk, later.pk, whenever.pk]
    row = row_for(page, later)
    assert "Publish &#x27;tides&#x27;?" in row
    assert "Article" in row
    # The approver is no viewer of the workflow: the run is named, not linked to a 403.
    assert f"run #{later.run_id}" in row and f'href="/runs/{later.run_id}/"' not in row
    assert "from ops" in row
    assert "in 2 d" in row
    assert 'class="kind kind--approval"' in row
    assert "0/1" in row
    assert "high risk" in row_for(page, sooner)
    assert 'class="kind kind--gate"' in row_for(page, sooner)
    assert "no deadline" in row_for(page, whenever)
    assert 'tabs__count tabs__count--on">3<' in page


def test_an_approval_is_decided_from_its_row_but_a_gate_only_from_its_page(
    approver_client: Client, ops: Any, approver: Any
) -> None:
    approval = article(ops)
    load_workflow(REFUND)
    gate = Item.objects.get(run=start("refund", ops))

    page = approver_client.get(reverse("approvals:inbox")).content.decode()

    assert f'hx-post="/approvals/{approval.pk}/decide/"' in row_for(page, approval)
    assert "decide/" not in row_for(page, gate)
    assert "Review action" in row_for(page, gate)


def test_time_left_reads_as_people_say_it_and_turns_red_when_overdue(
    approver_client: Client, ops: Any, approver: Any
) -> None:
    load_workflow(REFUND)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        item = Item.objects.get(run=start("refund", ops))  # a 2-hour deadline
        clock.shift(timedelta(minutes=40))
        row = row_for(approver_client.get(reverse("approvals:inbox")).content.decode(), item)
        assert "in 1 h 20 min" in row
        assert "clock--ok" in row
        assert 'aria-valuenow="33"' in row

        clock.shift(timedelta(minutes=50))
        row = row_for(approver_client.get(reverse("approvals:inbox")).content.decode(), item)
        assert "in 30 min" in row
        assert "clock--soon" in row

        # The deadline job has not run yet: the item still waits, visibly late.
        clock.shift(timedelta(minutes=50))
        page = approver_client.get(reverse("approvals:inbox")).content.decode()
        row = row_for(page, item)
        assert "overdue by 20 min" in row
        assert "clock--overdue" in row
        assert 'aria-valuenow="100"' in row
        assert "past its deadline" in page


def test_a_second_vote_needed_shows_how_many_approvals_there_are(
    client: Client, ops: Any, approver: Any
) -> None:
    load_workflow(
        AGENTS
        + """
workflow:
  key: budget
  name: Budget
  owner: ops
  steps:
    - key: sign_off
      approval: {title: Budget, approvers: {users: [approver, ops]}, required: 2}
"""
    )
    carol = type(approver).objects.create_user("carol", "carol@example.com", "carol-pass-1")
    run = start("budget", carol)
    item = Item.objects.get(run=run)
    decisions.vote(item_id=item.pk, user=ops, decision="approve")
    client.force_login(approver)

    row = row_for(client.get(reverse("approvals:inbox")).content.decode(), item)

    assert "1/2" in row
    assert row.count('<i class="on">') == 1
    assert row.count("<i></i>") == 1


def test_the_navigation_counts_what_waits_for_me(
    client: Client, ops: Any, approver: Any, outsider: Any
) -> None:
    article(ops, "tides")
    article(ops, "owls")
    client.force_login(approver)

    page = client.get(reverse("approvals:inbox")).content.decode()
    # The page itself carries only a placeholder: the count arrives by htmx, so no page pays for it.
    assert 'data-live="nav" hx-get="/approvals/count/" hx-trigger="load, baton:refresh"' in page
    count = client.get(reverse("approvals:count")).content.decode()
    assert 'data-count="2" aria-live="polite">2</span>' in count
    assert "approvals:decided from:body" in count and 'data-live="nav"' in count

    client.force_login(outsider)
    count = client.get(reverse("approvals:count")).content.decode()
    assert 'data-count="0"' in count
    assert "nav__count--zero" in count


def test_a_live_refresh_of_the_inbox_brings_its_tab_counts_and_follows_each_row(
    approver_client: Client, ops: Any
) -> None:
    first, second = article(ops, "tides"), article(ops, "owls")
    page = approver_client.get(reverse("approvals:inbox")).content.decode()
    assert "hx-swap-oob" not in page
    part = approver_client.get(reverse("approvals:inbox"), HTTP_HX_REQUEST="true").content.decode()
    # The tabs sit outside the list: an htmx answer carries them out of band, so counts follow.
    assert re.search(r'<nav class="tabs" id="inbox-tabs"[^>]*hx-swap-oob="morph"', part)
    assert re.search(r'Waiting for me <span class="tabs__count tabs__count--on">2</span>', part)
    live = re.search(r'<section id="inbox-list"[^>]*data-live="([^"]*)"', part)
    assert live and set(live.group(1).split()) == {"inbox", f"item:{first.pk}", f"item:{second.pk}"}


def test_thirty_waiting_items_take_as_few_queries_as_three(
    approver_client: Client, ops: Any, approver: Any, django_assert_max_num_queries: Any
) -> None:
    load_workflow(ARTICLE)
    for index in range(3):
        start("article", ops, topic=f"topic {index}")
    # Session, user, the tab counts, the page's count and rows, their votes, "owns a workflow?".
    with django_assert_max_num_queries(8) as few:
        response = approver_client.get(reverse("approvals:inbox"))
    assert response.status_code == 200
    assert len(rows_in_order(response.content.decode())) == 3
    for index in range(27):
        start("article", ops, topic=f"more {index}")
    Item.objects.filter(pk__in=Item.objects.values("pk")[:5]).update(required=2)

    with django_assert_max_num_queries(len(few.captured_queries)):
        response = approver_client.get(reverse("approvals:inbox"))
    assert response.status_code == 200
    assert len(rows_in_order(response.content.decode())) == 30


def test_fifty_items_fill_a_page_and_the_rest_follow(
    approver_client: Client, ops: Any, approver: Any
) -> None:
    load_workflow(QUICK)
    for _ in range(52):
        start("quick", ops)
    first = approver_client.get(reverse("approvals:inbox")).content.decode()
    second = approver_client.get(reverse("approvals:inbox") + "?page=2").content.decode()
    assert len(rows_in_order(first)) == 50
    assert len(rows_in_order(second)) == 2
    assert "1–50 of 52 items" in first


# ---------------------------------------------------------------------------------------------
# Exceptions


def test_exceptions_wait_for_the_workflow_owner_in_their_own_tab(
    client: Client, ops: Any, approver: Any
) -> None:
    load_workflow(FRAGILE)
    item = Item.objects.get(run=start("fragile", approver))
    client.force_login(ops)

    waiting = client.get(reverse("approvals:inbox")).content.decode()
    exceptions = client.get(reverse("approvals:exceptions")).content.decode()

    assert rows_in_order(waiting) == []
    assert 'tabs__count tabs__count--alert">1<' in waiting
    assert rows_in_order(exceptions) == [item.pk]
    row = row_for(exceptions, item)
    assert "the input is not acceptable" in row
    assert "Resolve" in row


def test_approvers_who_own_no_workflow_see_no_exceptions_tab(approver_client: Client, ops: Any) -> None:
    article(ops)
    page = approver_client.get(reverse("approvals:inbox")).content.decode()
    assert reverse("approvals:exceptions") not in page


# ---------------------------------------------------------------------------------------------
# Decided


def decided_rows(client: Client, query: str = "") -> list[int]:
    return rows_in_order(client.get(reverse("approvals:decided") + query).content.decode())


def test_the_decided_tab_lists_outcomes_newest_first_with_filters(
    client: Client, ops: Any, approver: Any
) -> None:
    approved = article(ops, "tides")
    rejected = article(ops, "owls")
    load_workflow(QUICK)
    still_waiting = Item.objects.get(run=start("quick", ops))
    decisions.vote(item_id=approved.pk, user=approver, decision="approve")
    decisions.vote(item_id=rejected.pk, user=approver, decision="reject", comment="not now")
    client.force_login(approver)

    page = client.get(reverse("approvals:decided")).content.decode()
    assert rows_in_order(page) == [rejected.pk, approved.pk]
    assert "not now" in row_for(page, rejected)
    assert 'data-status="rejected"' in row_for(page, rejected)
    assert still_waiting.pk not in rows_in_order(page)

    assert decided_rows(client, "?status=approved") == [approved.pk]
    assert decided_rows(client, "?kind=gate") == []
    assert decided_rows(client, "?workflow=refund") == []
    assert decided_rows(client, "?workflow=article&mine=1") == [rejected.pk, approved.pk]
    filtered = client.get(reverse("approvals:decided") + "?kind=manual").content.decode()
    assert "Nothing decided matches these filters." in filtered


def test_decided_by_me_leaves_out_what_others_decided(
    client: Client, ops: Any, approver: Any, admin_user: Any
) -> None:
    mine = article(ops, "tides")
    theirs = article(ops, "owls")
    decisions.vote(item_id=mine.pk, user=approver, decision="approve")
    decisions.vote(item_id=theirs.pk, user=admin_user, decision="approve")
    client.force_login(approver)

    assert decided_rows(client) == [theirs.pk, mine.pk]
    assert decided_rows(client, "?mine=1") == [mine.pk]


def test_the_decided_tab_refreshes_only_its_table_for_htmx(
    approver_client: Client, ops: Any, approver: Any
) -> None:
    item = article(ops)
    decisions.vote(item_id=item.pk, user=approver, decision="approve")
    response = approver_client.get(reverse("approvals:decided") + "?status=approved", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert '<section id="decided-table"' in body
    assert "<html" not in body
    assert "HX-Request" in response["Vary"]


def test_fifty_decided_items_take_a_fixed_number_of_queries(
    approver_client: Client, ops: Any, approver: Any, django_assert_max_num_queries: Any
) -> None:
    load_workflow(QUICK)
    for _ in range(3):
        decisions.vote(
            item_id=Item.objects.get(run=start("quick", ops)).pk, user=approver, decision="approve"
        )
    with django_assert_max_num_queries(12) as few:
        response = approver_client.get(reverse("approvals:decided") + "?mine=1")
    assert response.status_code == 200
    assert len(rows_in_order(response.content.decode())) == 3
    for _ in range(27):
        decisions.vote(
            item_id=Item.objects.get(run=start("quick", ops)).pk, user=approver, decision="approve"
        )

    with django_assert_max_num_queries(len(few.captured_queries)):
        response = approver_client.get(reverse("approvals:decided") + "?mine=1")
    assert response.status_code == 200
    assert len(rows_in_order(response.content.decode())) == 30


def test_the_groups_of_an_approver_bring_their_items(client: Client, ops: Any, approver: Any) -> None:
    approver.groups.add(Group.objects.get_or_create(name="support")[0])
    load_workflow(
        AGENTS
        + """
workflow:
  key: support
  name: Support
  owner: ops
  steps:
    - key: task
      manual: {title: Call the customer, assignees: {groups: [support]}, form: {done: {type: boolean}}}
"""
    )
    item = Item.objects.get(run=start("support", ops))
    client.force_login(approver)
    row = row_for(client.get(reverse("approvals:inbox")).content.decode(), item)
    assert "Open task" in row
    assert 'class="kind kind--manual"' in row
